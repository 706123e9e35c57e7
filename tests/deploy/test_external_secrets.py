"""Key custody in the prod overlay, offline: every Secret a prod workload reads comes from
Vault through an External Secrets Operator `ExternalSecret`.

- Each Secret referenced in the prod rendering (pods' `secretKeyRef`s, the KafkaUsers'
  passwords, KEDA's TriggerAuthentication) has exactly one ExternalSecret making it, with
  exactly the keys of its template in deploy/k8s/base/secret.example.yaml, and no
  ExternalSecret makes a Secret nobody reads.
- The keys (`CRM_*_KEY`) come from one Vault entry, so the services sharing the card key
  cannot hold different values; the rest from the workload's own entry.
- The ExternalSecrets read through the namespaced SecretStore of the overlay, whose Vault
  login is a ServiceAccount no pod runs as; ExternalSecret and SecretStore match schemas
  written from the operator's CRDs (externalsecret-v1beta1.schema.json,
  secretstore-v1beta1.schema.json).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.test_deploy_files import rendered as render_overlay

REPO = Path(__file__).resolve().parents[2]
PROD = REPO / "deploy" / "k8s" / "overlays" / "prod"
TEMPLATES = REPO / "deploy" / "k8s" / "base" / "secret.example.yaml"
KEYS_ENTRY = "crm/keys"

Resource = dict[str, Any]


def rendered() -> tuple[Resource, ...]:
    """The prod overlay, as the other deploy tests render it (offline)."""
    return render_overlay("prod")


def of_kind(kind: str) -> list[Resource]:
    return [r for r in rendered() if r["kind"] == kind]


def templates() -> dict[str, set[str]]:
    """Secret name -> its keys, from secret.example.yaml."""
    return {
        doc["metadata"]["name"]: set(doc["stringData"])
        for doc in yaml.safe_load_all(TEMPLATES.read_text(encoding="utf-8"))
        if doc is not None
    }


def external_secrets() -> dict[str, Resource]:
    """Target Secret name -> the ExternalSecret making it."""
    made: dict[str, Resource] = {}
    for resource in of_kind("ExternalSecret"):
        target = resource["spec"]["target"].get("name", resource["metadata"]["name"])
        assert target not in made, f"two ExternalSecrets make {target}"
        made[target] = resource
    return made


def secret_refs(node: Any) -> Iterator[str]:
    """Names of the Secrets a resource refers to (secretKeyRef, secretRef, secretTargetRef)."""
    if isinstance(node, list):
        for item in node:
            yield from secret_refs(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key in ("secretKeyRef", "secretRef") and isinstance(value, dict):
                yield value["name"]
            elif key == "secretTargetRef":
                yield from (ref["name"] for ref in value)
            elif key == "secret" and isinstance(value, dict) and "secretName" in value:
                yield value["secretName"]
            else:
                yield from secret_refs(value)


def referenced_secrets() -> set[str]:
    return {
        name
        for resource in rendered()
        if resource["kind"] not in ("ExternalSecret", "SecretStore")
        for name in secret_refs(resource)
    }


def validator(name: str) -> jsonschema.Draft7Validator:
    schema = json.loads(Path(__file__).with_name(name).read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_every_secret_read_in_prod_comes_from_an_external_secret_and_no_other() -> None:
    referenced = referenced_secrets()
    assert {"crm-ingest-secrets", "crm-tick-secrets", "crm-keda-secrets"} <= referenced
    assert set(external_secrets()) == referenced


def test_each_external_secret_has_exactly_the_keys_of_its_template() -> None:
    known = templates()
    for name, resource in external_secrets().items():
        keys = [entry["secretKey"] for entry in resource["spec"]["data"]]
        assert len(keys) == len(set(keys)), name
        assert set(keys) == known[name], name
        assert "dataFrom" not in resource["spec"], f"{name}: every key named, none more"


def test_keys_come_from_one_vault_entry_and_everything_else_from_the_workloads_own() -> None:
    sources: dict[str, set[tuple[str, str]]] = {}
    for name, resource in external_secrets().items():
        workload = name.removeprefix("crm-").removesuffix("-secrets")
        for entry in resource["spec"]["data"]:
            key, ref = entry["secretKey"], entry["remoteRef"]
            assert ref["property"] == key, f"{name}: Vault fields are named like the variables"
            if key.endswith("_KEY"):
                sources.setdefault(key, set()).add((ref["key"], ref["property"]))
                assert ref["key"] == KEYS_ENTRY, f"{name}: {key}"
            else:
                assert ref["key"] == f"crm/{workload}", f"{name}: {key}"
    assert set(sources) >= {"CRM_CARD_KEY", "CRM_COUPON_KEY", "CRM_UNSUBSCRIBE_KEY"}
    assert all(len(where) == 1 for where in sources.values()), sources


def test_external_secrets_read_through_the_overlays_vault_store() -> None:
    (store,) = of_kind("SecretStore")
    vault = store["spec"]["provider"]["vault"]
    assert vault["server"].startswith("https://")
    account = vault["auth"]["kubernetes"]["serviceAccountRef"]["name"]
    (service_account,) = [r for r in of_kind("ServiceAccount") if r["metadata"]["name"] == account]
    assert service_account["automountServiceAccountToken"] is False
    for pod_spec in pod_specs():
        assert pod_spec.get("serviceAccountName") != account, "no pod runs as the Vault login"
    for name, resource in external_secrets().items():
        assert resource["spec"]["secretStoreRef"] == {
            "kind": "SecretStore",
            "name": store["metadata"]["name"],
        }, name
        # A Vault entry gone missing leaves the cluster's copy as it was.
        assert resource["spec"]["target"]["deletionPolicy"] == "Retain", name


def pod_specs() -> Iterator[Resource]:
    for resource in rendered():
        spec = resource.get("spec", {})
        if resource["kind"] == "CronJob":
            yield spec["jobTemplate"]["spec"]["template"]["spec"]
        elif "template" in spec and "spec" in spec["template"]:
            yield spec["template"]["spec"]


@pytest.mark.parametrize(
    ("kind", "schema"),
    [
        ("ExternalSecret", "externalsecret-v1beta1.schema.json"),
        ("SecretStore", "secretstore-v1beta1.schema.json"),
    ],
)
def test_external_secrets_resources_match_the_operators_schemas(kind: str, schema: str) -> None:
    check = validator(schema)
    resources = of_kind(kind)
    assert resources
    errors = [
        f"{r['metadata']['name']}: {'.'.join(map(str, e.path))}: {e.message}"
        for r in resources
        for e in check.iter_errors(r)
    ]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "target", "creationPolicy"), "Own"),
        (("spec", "secretStoreRef", "kind"), "VaultStore"),
        (("spec", "data", 0, "remoteRef"), {"property": "CRM_CARD_KEY"}),
        (("spec", "data", 0, "secretKey"), "CRM CARD KEY"),
        (("spec", "refreshIntervall"), "1h"),
    ],
)
def test_the_external_secret_schema_refuses_what_the_operator_would(
    path: tuple[Any, ...], value: Any
) -> None:
    broken = copy.deepcopy(external_secrets()["crm-ingest-secrets"])
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert list(validator("externalsecret-v1beta1.schema.json").iter_errors(broken)), path


def test_the_secret_store_schema_refuses_an_unknown_auth_field_and_plain_http() -> None:
    (store,) = of_kind("SecretStore")
    check = validator("secretstore-v1beta1.schema.json")
    broken = copy.deepcopy(store)
    broken["spec"]["provider"]["vault"]["auth"]["kubernetes"]["rol"] = "crm-stream"
    assert list(check.iter_errors(broken))
    broken = copy.deepcopy(store)
    broken["spec"]["provider"]["vault"]["server"] = "http://vault.example.internal:8200"
    assert list(check.iter_errors(broken))
