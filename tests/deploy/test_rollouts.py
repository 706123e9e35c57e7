"""Rollouts that neither stop the consumer groups nor cut a batch short, read from the rendered
manifests and checked against the settings the code reads.

- Static group membership: every service is a StatefulSet (stable pod names) and hands its
  pod name to the app as CRM_KAFKA_INSTANCE_ID, with a session timeout that covers a restart.
- Shutdown: Kubernetes' terminationGracePeriodSeconds is above the preStop pause plus the
  app's grace (CRM_SHUTDOWN_GRACE_S; the notifier's due poller stops first), and the app's
  grace is at least the worst-case batch computed from the settings the pod runs with.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import pytest

from services.notifier.app import POLLER_STOP_TIMEOUT_S
from services.notifier.settings import NotifierSettings, worst_case_batch_s
from shared.kafka import BatchGuard
from shared.settings import KafkaSettings
from tests.deploy.test_deploy_files import (
    KUSTOMIZATIONS,
    OVERLAYS,
    SERVICE_KIND,
    SERVICES,
    by_name,
    config_map,
    of_kind,
    rendered,
)

Resource = dict[str, Any]

SESSION_TIMEOUT_MIN_MS = 30_000
"""A rolled pod stops, is scheduled again and starts its consumer: half a minute at least."""
BROKER_MAX_SESSION_TIMEOUT_MS = 300_000
"""Kafka's default `group.max.session.timeout.ms`: a longer session is refused at join."""


def container(workload: Resource) -> Resource:
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    result: Resource = only
    return result


def env_of(resources: list[Resource], workload: Resource) -> dict[str, str]:
    """The CRM_ variables a pod runs with that have a value in the manifests: the ConfigMap,
    then the container's own literal values."""
    values = dict(config_map(resources))
    values.update(
        {e["name"]: e["value"] for e in container(workload).get("env", []) if "value" in e}
    )
    return values


def settings_in(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> tuple[KafkaSettings, NotifierSettings]:
    """The settings classes as the pod reads them (nothing of this machine's environment)."""
    for name in list(os.environ):
        if name.startswith("CRM_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return KafkaSettings(), NotifierSettings()


def workloads(name: str) -> list[Resource]:
    resources = rendered(name)
    found = of_kind(resources, SERVICE_KIND)
    assert sorted(w["metadata"]["name"] for w in found) == sorted(f"crm-{s}" for s in SERVICES)
    return found


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_service_is_a_statefulset_whose_pod_name_is_its_group_instance_id(
    name: str,
) -> None:
    resources = rendered(name)
    assert not [
        d
        for d in of_kind(resources, "Deployment")
        if d["metadata"]["labels"].get("app.kubernetes.io/component") in SERVICES
    ], "a Deployment's pods get new names on every rollout: no stable instance id"
    for workload in workloads(name):
        where = workload["metadata"]["name"]
        spec = workload["spec"]
        env = {e["name"]: e for e in container(workload).get("env", [])}
        assert env["CRM_KAFKA_INSTANCE_ID"]["valueFrom"] == {
            "fieldRef": {"fieldPath": "metadata.name"}
        }, where
        assert spec["updateStrategy"]["type"] == "RollingUpdate", where
        assert spec["podManagementPolicy"] == "Parallel", where
        by_name(resources, "Service", spec["serviceName"])


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_a_static_members_session_outlasts_a_restart_within_what_brokers_allow(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    resources = rendered(name)
    for workload in workloads(name):
        kafka, _ = settings_in(monkeypatch, env_of(resources, workload))
        timeout = kafka.kafka_session_timeout_ms
        assert SESSION_TIMEOUT_MIN_MS <= timeout <= BROKER_MAX_SESSION_TIMEOUT_MS, workload_name(
            workload
        )


def workload_name(workload: Resource) -> str:
    name: str = workload["metadata"]["name"]
    return name


def worst_case_batch(workload: Resource, kafka: KafkaSettings, notifier: NotifierSettings) -> float:
    """Longest a batch of this service runs while its infrastructure answers.

    Every service's batch guard may sleep its longest backoff inside the handler before a
    failed batch is re-read; the notifier's batch also sends e-mails at the sending rate."""
    guard_backoff: float = inspect.signature(BatchGuard).parameters["backoff_max_s"].default
    if workload_name(workload) == "crm-notifier":
        sending = worst_case_batch_s(notifier, batch_max_records=kafka.batch_max_records)
        return max(guard_backoff, sending)
    return guard_backoff


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_termination_grace_covers_the_pre_stop_pause_and_an_app_grace_above_the_worst_batch(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    resources = rendered(name)
    for workload in workloads(name):
        where = workload_name(workload)
        pod = workload["spec"]["template"]["spec"]
        pre_stop = container(workload)["lifecycle"]["preStop"]["sleep"]["seconds"]
        kafka, notifier = settings_in(monkeypatch, env_of(resources, workload))
        app_stop = kafka.shutdown_grace_s
        if where == "crm-notifier":
            app_stop += POLLER_STOP_TIMEOUT_S  # the due poller stops before the consumer
        assert pre_stop >= 5, f"{where}: endpoints need a moment to drop the pod"
        assert pod["terminationGracePeriodSeconds"] > pre_stop + app_stop, where
        assert kafka.shutdown_grace_s >= worst_case_batch(workload, kafka, notifier), where


def test_the_apps_grace_default_is_above_the_worst_case_batch_of_the_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kafka, notifier = settings_in(monkeypatch, {})
    worst = worst_case_batch_s(notifier, batch_max_records=kafka.batch_max_records)
    assert worst > 30, "the former 30 s grace was shorter than a full batch of e-mails"
    assert kafka.shutdown_grace_s >= worst


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlays_keep_the_rollout_timing_of_the_base(name: str) -> None:
    base = {workload_name(w): w for w in workloads("base")}
    for workload in workloads(name):
        original = base[workload_name(workload)]
        for part in ("terminationGracePeriodSeconds",):
            assert (
                workload["spec"]["template"]["spec"][part]
                == (original["spec"]["template"]["spec"][part])
            )
        assert container(workload)["lifecycle"] == container(original)["lifecycle"]
        timing = ("CRM_SHUTDOWN_GRACE_S", "CRM_KAFKA_SESSION_TIMEOUT_MS", "CRM_KAFKA_INSTANCE_ID")
        env = {e["name"]: e for e in container(workload)["env"] if e["name"] in timing}
        base_env = {e["name"]: e for e in container(original)["env"] if e["name"] in timing}
        assert env == base_env
