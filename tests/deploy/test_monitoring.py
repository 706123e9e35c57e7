"""The monitoring manifests, validated offline: the PrometheusRule against a schema subset of
the Prometheus Operator's CRD, every PromQL expression of the rules and of the Grafana
dashboard parsed (promql-parser, the Rust parser Prometheus-compatible tools use: promtool is
not a Python package) and every metric it reads registered by the running code, a recording
rule, or one of the Kafka exporter's; the kustomizations that deliver them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import promql_parser
import pytest
import yaml
from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
PROD = ROOT / "deploy" / "k8s" / "overlays" / "prod"
MONITORING = PROD / "monitoring"
RULE_FILE = MONITORING / "prometheusrule.yaml"
DASHBOARD = PROD / "dashboards" / "crm-stream.json"
SCHEMA = Path(__file__).resolve().parent / "prometheusrule-v1.schema.json"

KAFKA_EXPORTER_METRICS = frozenset(
    {"kafka_consumergroup_lag", "kafka_consumergroup_lag_sum", "kafka_topic_partitions"}
)
"""What danielqsj/kafka-exporter (and Strimzi's Kafka Exporter, the same program) exposes
that the rules and the dashboard read."""


def rule() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(RULE_FILE.read_text())
    return document


def rules() -> Iterator[dict[str, Any]]:
    for group in rule()["spec"]["groups"]:
        yield from group["rules"]


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (parsing it: a syntax error raises)."""
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr!r}"
            names.add(node.name)
            return
        for attribute in ("lhs", "rhs", "expr", "param", "vector_selector", "args"):
            child = getattr(node, attribute, None)
            if isinstance(child, list | tuple):
                for item in child:
                    walk(item)
            elif child is not None and not isinstance(child, str | int | float):
                walk(child)

    walk(promql_parser.parse(expr))
    return names


@pytest.fixture(scope="module")
def registered() -> set[str]:
    """Every exposition name (`_total`, `_bucket`, ...) the five services register in one
    process, as `crm run all` builds them: broker middlewares, HTTP endpoints, service
    counters, freshness."""
    from crm.registry import SERVICES
    from shared.http import HttpEndpoints
    from shared.settings import Settings
    from shared.skeleton import ServiceApp

    settings = Settings()
    HttpEndpoints([ServiceApp(spec, settings) for spec in SERVICES], settings)
    return set(REGISTRY._names_to_collectors)


def recorded() -> set[str]:
    return {r["record"] for r in rules() if "record" in r}


def test_the_rule_file_is_a_valid_prometheus_rule() -> None:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    assert not [e.message for e in validator.iter_errors(rule())]
    # The schema refuses what the operator would: a rule both recording and alerting.
    broken = rule()
    broken["spec"]["groups"][0]["rules"][0]["alert"] = "Both"
    assert list(validator.iter_errors(broken))


def test_every_expression_parses_and_reads_only_metrics_that_exist(registered: set[str]) -> None:
    known = registered | recorded() | KAFKA_EXPORTER_METRICS
    exprs = [r["expr"] for r in rules()] + dashboard_exprs()
    unknown = {name for expr in exprs for name in metric_names(expr)} - known
    assert not unknown
    # The check can fail: a misspelt metric is caught, and so is broken syntax.
    assert metric_names("rate(crm_freshness_second_count[5m])") - known
    with pytest.raises(ValueError, match=r"."):
        metric_names("sum(rate(crm_freshness_seconds_count[5m])")


def test_the_freshness_buckets_the_slos_count_on_exist() -> None:
    from shared.metrics import FRESHNESS_BUCKETS

    exposed = {f"{bucket}" for bucket in FRESHNESS_BUCKETS}
    text = RULE_FILE.read_text()
    # offers within 5 minutes, e-mails within 12 hours
    for bound in ("300.0", "43200.0"):
        assert f'le="{bound}"' in text
        assert bound in exposed


def test_every_slo_pages_on_a_fast_burn_and_tickets_a_slow_one() -> None:
    alerts = {r["alert"]: r for r in rules() if "alert" in r}
    for slo, alert in (
        ("offer_freshness", "CrmOffersStale"),
        ("email_freshness", "CrmEmailsLate"),
        ("unsubscribe", "CrmUnsubscribeUnavailable"),
    ):
        fast, slow = alerts[alert], alerts[f"{alert}Slow"]
        assert fast["labels"] == {"severity": "critical", "slo": slo}
        assert slow["labels"] == {"severity": "warning", "slo": slo}
        for window in ("1h", "5m", "6h", "30m"):
            assert f"crm:{slo}:error_ratio_rate{window}" in fast["expr"]
        for window in ("1d", "2h", "3d", "6h"):
            assert f"crm:{slo}:error_ratio_rate{window}" in slow["expr"]
    assert 'reason="processing_failed"' in alerts["CrmDeadLettersProcessingFailed"]["expr"]
    for rule_ in alerts.values():
        assert rule_["annotations"]["summary"]
        assert rule_["annotations"]["runbook_url"]


def test_the_dashboard_reads_only_existing_metrics_and_recording_rules(
    registered: set[str],
) -> None:
    exprs = dashboard_exprs()
    assert exprs
    used = {name for expr in exprs for name in metric_names(expr)}
    assert used <= registered | recorded() | KAFKA_EXPORTER_METRICS
    assert used & recorded()  # the SLO panels read the recording rules


def test_the_monitoring_kustomization_delivers_rule_exporter_and_dashboard() -> None:
    monitoring = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    assert monitoring["namespace"] == "monitoring"
    for resource in monitoring["resources"]:
        assert (MONITORING / resource).exists(), resource
    documents = list(yaml.safe_load_all((MONITORING / "kafka-exporter.yaml").read_text()))
    kinds = {d["kind"] for d in documents}
    assert {"Deployment", "Service", "ServiceMonitor"} <= kinds
    dashboards = yaml.safe_load((PROD / "dashboards" / "kustomization.yaml").read_text())
    assert dashboards["generatorOptions"]["labels"]["grafana_dashboard"] == "1"
    [generator] = dashboards["configMapGenerator"]
    assert generator["files"] == ["crm-stream.json"]
    # The pods no longer read their own lag in production: the exporter does.
    prod = (PROD / "kustomization.yaml").read_text()
    assert 'CRM_CONSUMER_LAG_INTERVAL_S: "0"' in prod
