"""KEDA in production: every consumer scales on its lag, never past the partitions it reads, and
no CPU autoscaler fights it. The partition counts come from the code (`shared.topics`)."""

from __future__ import annotations

from typing import Any

import pytest

from crm.registry import SERVICES
from shared.skeleton import ServiceSpec
from shared.topics import TOPIC_SPECS
from tests.deploy.test_deploy_files import SERVICE_KIND, by_name, config_map, of_kind, rendered

PARTITIONS = {spec.name: spec.partitions for spec in TOPIC_SPECS}


def useful_consumers(spec: ServiceSpec[Any, Any], default_partitions: int) -> int:
    """Most members of the service's group that can each hold a partition: partitions are
    assigned topic by topic, so the topic with the most partitions bounds it."""
    return max(1 if PARTITIONS[topic] == 1 else default_partitions for topic in spec.topics)


def scaled_objects() -> dict[str, dict[str, Any]]:
    return {s["metadata"]["name"]: s for s in of_kind(rendered("prod"), "ScaledObject")}


def test_every_consumer_group_has_a_scaled_object_on_its_own_lag() -> None:
    scaled = scaled_objects()
    assert sorted(scaled) == sorted(f"crm-{spec.name}" for spec in SERVICES)
    for spec in SERVICES:
        scaled_object = scaled[f"crm-{spec.name}"]
        target = scaled_object["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == (SERVICE_KIND, f"crm-{spec.name}")
        (trigger,) = scaled_object["spec"]["triggers"]
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["consumerGroup"] == spec.group
        # No single topic named: the lag of every topic the group reads counts.
        assert "topic" not in trigger["metadata"]
        assert trigger["authenticationRef"]["name"] == "crm-kafka"


@pytest.mark.parametrize("spec", SERVICES, ids=lambda spec: spec.name)
def test_max_replicas_are_capped_at_the_partitions_the_group_reads(
    spec: ServiceSpec[Any, Any],
) -> None:
    resources = rendered("prod")
    default_partitions = int(config_map(resources)["CRM_TOPIC_PARTITIONS"])
    assert default_partitions == max(PARTITIONS.values())
    cap = useful_consumers(spec, default_partitions)
    scaled = scaled_objects()[f"crm-{spec.name}"]["spec"]
    assert 3 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"] == cap


def test_prod_deletes_every_cpu_autoscaler_that_would_fight_keda() -> None:
    resources = rendered("prod")
    assert not of_kind(resources, "HorizontalPodAutoscaler")
    for name in scaled_objects():
        workload = by_name(resources, SERVICE_KIND, name)
        assert "replicas" not in workload["spec"], f"{name}: apply would reset KEDA's count"


def test_base_autoscalers_target_the_statefulsets_and_stay_under_the_cap() -> None:
    resources = rendered("base")
    default_partitions = int(config_map(resources)["CRM_TOPIC_PARTITIONS"])
    by_service = {f"crm-{spec.name}": spec for spec in SERVICES}
    for hpa in of_kind(resources, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == SERVICE_KIND
        by_name(resources, SERVICE_KIND, target["name"])
        cap = useful_consumers(by_service[target["name"]], default_partitions)
        assert hpa["spec"]["maxReplicas"] <= cap
