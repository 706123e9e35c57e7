"""Least privilege, checked against the code so the deployment cannot drift from it.

- Kafka: each workload's principal (Strimzi `KafkaUser`s of the prod overlay) may read exactly
  the topics its service consumes (its decoders, the tables it reads whole, what `crm replay`
  reads back), write exactly those it publishes to, and use its own consumer group only; KEDA's
  may only describe the groups and their topics; no principal may create or reconfigure a
  topic (Strimzi's Topic Operator makes them from the KafkaTopics).
- Secrets: each service's Secret holds its store URL, its Kafka login, the keys its
  declaration names (`ServiceSpec.secrets`), API token hashes only when it has token-checked
  routes, SMTP credentials only when it sends e-mail.
- MongoDB: deploy/mongodb/create-users.js gives each service's user its own collections (those
  its MongoDB adapters name, and the shared stores it opens) and nothing else; the roles and
  users it creates are accepted by the MongoDB-wire test server.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from pymongo import AsyncMongoClient

from crm.registry import SERVICES
from shared import topics
from shared.auth import MongoAuditLog
from shared.edge import Foreign
from shared.skeleton import ServiceSpec
from shared.storage import MongoStore
from shared.storage.mongo import Indexes
from shared.vault_mongo import MongoVault

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
SCRIPT = REPO / "deploy" / "mongodb" / "create-users.js"

Acl = tuple[str, str, str, str]
"""(resource type, name, pattern type, operation)."""

TOPIC_NAMES = {
    value: name
    for name, value in vars(topics).items()
    if name.isupper() and isinstance(value, str) and value.startswith("crm.")
}
"""Topic -> the constant naming it in shared.topics."""

SHARED_STORES: dict[type[MongoStore], tuple[str, ...]] = {
    MongoAuditLog: ("open_audit_log(",),
    MongoVault: ("vault_for(", "with_vault(", "open_vault("),
}
"""Stores of `shared` and the calls by which a service opens them."""
VAULT_WRITER = "ingest"
"""The one service that creates and destroys customers' data keys; the others only read them."""


def kafka_users() -> dict[str, dict[str, Any]]:
    text = (K8S / "overlays" / "prod" / "kafka-users.yaml").read_text(encoding="utf-8")
    return {
        doc["metadata"]["name"]: doc
        for doc in yaml.safe_load_all(text)
        if doc is not None and doc["kind"] == "KafkaUser"
    }


def acls(user: dict[str, Any]) -> set[Acl]:
    return {
        (
            rule["resource"]["type"],
            rule["resource"].get("name", ""),
            rule["resource"].get("patternType", "literal"),
            operation,
        )
        for rule in user["spec"]["authorization"]["acls"]
        for operation in rule["operations"]
        if rule.get("type", "allow") == "allow"
    }


def topics_read(spec: ServiceSpec[Any, Any]) -> set[str]:
    replay = {spec.after_replay.topic} if spec.after_replay is not None else set()
    return {*spec.topics, *spec.tables, *replay}


def expected_acls(spec: ServiceSpec[Any, Any]) -> set[Acl]:
    return (
        {("topic", topic, "literal", "Read") for topic in topics_read(spec)}
        | {("topic", topic, "literal", "Write") for topic in spec.writes}
        | {("group", spec.group, "literal", "Read")}
    )


def package_source(spec: ServiceSpec[Any, Any]) -> str:
    folder = REPO / "services" / spec.name
    return "\n".join(path.read_text(encoding="utf-8") for path in sorted(folder.rglob("*.py")))


def secret_templates() -> dict[str, dict[str, str]]:
    text = (K8S / "base" / "secret.example.yaml").read_text(encoding="utf-8")
    return {
        doc["metadata"]["name"]: doc["stringData"]
        for doc in yaml.safe_load_all(text)
        if doc is not None
    }


# -- Kafka


@pytest.mark.parametrize("spec", SERVICES, ids=lambda spec: spec.name)
def test_each_service_principal_reads_and_writes_exactly_its_topics_and_group(
    spec: ServiceSpec[Any, Any],
) -> None:
    user = kafka_users()[f"crm-{spec.name}"]
    assert acls(user) == expected_acls(spec)
    assert user["spec"]["authentication"]["type"] == "scram-sha-512"


@pytest.mark.parametrize("spec", SERVICES, ids=lambda spec: spec.name)
def test_service_declarations_name_every_topic_the_service_uses(
    spec: ServiceSpec[Any, Any],
) -> None:
    """The ACLs come from the declarations: a topic the code uses must be declared."""
    source = package_source(spec)
    used = {
        topic
        for topic, constant in TOPIC_NAMES.items()
        if re.search(rf"\b{constant}\b", source) and constant != "RAW_TOPICS"
    }
    if "RAW_TOPICS" in source:
        used |= set(topics.RAW_TOPICS)
    declared = topics_read(spec) | set(spec.writes)
    assert used <= declared, f"{spec.name} uses {sorted(used - declared)} undeclared"
    owned = [decoder for decoder in spec.decoders.values() if not isinstance(decoder, Foreign)]
    if owned:
        assert topics.DEADLETTER in spec.writes, "the edge dead-letters what it cannot decode"


def scaled_groups() -> set[str]:
    """The consumer groups KEDA scales on (keda-scaledobjects.yaml)."""
    scaled = [
        doc
        for doc in yaml.safe_load_all(
            (K8S / "overlays" / "prod" / "keda-scaledobjects.yaml").read_text(encoding="utf-8")
        )
        if doc is not None
    ]
    return {t["metadata"]["consumerGroup"] for s in scaled for t in s["spec"]["triggers"]}


def test_jobs_and_keda_have_principals_of_their_own_with_no_more_than_they_need() -> None:
    users = kafka_users()
    assert acls(users["crm-tick"]) == {("topic", topics.CLOCK, "literal", "Write")}
    # KEDA reads lag only: Describe on every service's group and the topics it consumes.
    assert acls(users["crm-keda"]) == {
        ("group", spec.group, "literal", "Describe") for spec in SERVICES
    } | {("topic", topic, "literal", "Describe") for spec in SERVICES for topic in spec.topics}
    assert scaled_groups() <= {spec.group for spec in SERVICES}


def test_the_ops_principal_reads_and_writes_the_crm_topics_and_moves_the_groups_only() -> None:
    """`crm redrive` writes a record back to its source topic, `crm restore --point-in-time`
    reads the topics, publishes settled deliveries and moves every service's group."""
    assert acls(kafka_users()["crm-ops"]) == {
        ("topic", "crm.", "prefix", "Read"),
        ("topic", "crm.", "prefix", "Write"),
        ("topic", "crm.", "prefix", "Describe"),
        ("group", "crm-", "prefix", "Read"),
        ("group", "crm-", "prefix", "Describe"),
    }
    assert all(spec.group.startswith("crm-") for spec in SERVICES)
    assert all(spec.name.startswith("crm.") for spec in topics.TOPIC_SPECS)


def test_no_principal_may_create_delete_or_reconfigure_a_topic_under_strimzi() -> None:
    """The topics are KafkaTopic resources; no Job and no service creates them in prod."""
    granted = {acl for user in kafka_users().values() for acl in acls(user)}
    operations = {operation for _type, _name, _pattern, operation in granted}
    assert operations <= {"Read", "Write", "Describe"}, operations
    assert {resource for resource, *_ in granted} <= {"topic", "group"}


def test_keda_logs_in_with_its_own_secret() -> None:
    text = (K8S / "overlays" / "prod" / "keda-triggerauthentication.yaml").read_text(
        encoding="utf-8"
    )
    (auth,) = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    refs = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
    assert {name: ref["name"] for name, ref in refs.items()} == {
        "username": "crm-keda-secrets",
        "password": "crm-keda-secrets",
    }
    assert refs["username"]["key"] == "CRM_KAFKA_SASL_USERNAME"
    assert refs["password"]["key"] == "CRM_KAFKA_SASL_PASSWORD"


def test_every_principal_logs_in_with_the_password_of_its_own_secret() -> None:
    templates = secret_templates()
    users = kafka_users()
    workloads = {f"crm-{spec.name}" for spec in SERVICES} | {"crm-tick", "crm-keda", "crm-ops"}
    assert set(users) == workloads
    for name, user in users.items():
        ref = user["spec"]["authentication"]["password"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": f"{name}-secrets", "key": "CRM_KAFKA_SASL_PASSWORD"}
        assert templates[ref["name"]]["CRM_KAFKA_SASL_USERNAME"] == name


# -- Secrets


@pytest.mark.parametrize("spec", SERVICES, ids=lambda spec: spec.name)
def test_each_service_secret_holds_only_what_the_service_uses(
    spec: ServiceSpec[Any, Any],
) -> None:
    source = package_source(spec)
    expected = {"CRM_STORE_URL", "CRM_KAFKA_SASL_USERNAME", "CRM_KAFKA_SASL_PASSWORD"}
    expected |= set(spec.secrets)
    if re.search(r"\brequire\(", source):  # token-checked routes (shared.auth.require)
        expected.add("CRM_API_TOKENS")
    if "smtp_password" in source:
        expected |= {"CRM_SMTP_USERNAME", "CRM_SMTP_PASSWORD"}
    assert set(secret_templates()[f"crm-{spec.name}-secrets"]) == expected


def test_jobs_secrets_hold_a_kafka_login_only() -> None:
    templates = secret_templates()
    for name in (
        "crm-create-topics-secrets",
        "crm-tick-secrets",
        "crm-keda-secrets",
        "crm-ops-secrets",
    ):
        assert set(templates[name]) == {"CRM_KAFKA_SASL_USERNAME", "CRM_KAFKA_SASL_PASSWORD"}


def test_production_store_urls_use_tls_their_own_user_and_majority_writes() -> None:
    for name, data in secret_templates().items():
        if "CRM_STORE_URL" not in data:
            continue
        url = data["CRM_STORE_URL"]
        user = name.removesuffix("-secrets")
        assert url.startswith(f"mongodb://{user}:CHANGE-ME@"), name
        query = dict(part.split("=", 1) for part in url.split("?", 1)[1].split("&"))
        assert query["tls"] == "true", name
        assert query["authSource"] == "crm", name
        assert query["w"] == "majority", name
        assert query.get("replicaSet"), name


# -- MongoDB


def script_access() -> dict[str, Any]:
    text = SCRIPT.read_text(encoding="utf-8")
    match = re.search(r"const ACCESS = (\{.*?\});\n// END ACCESS", text, re.DOTALL)
    assert match, "the ACCESS block of create-users.js"
    access: dict[str, Any] = json.loads(match.group(1))
    return access


def collections_of(store: type[MongoStore]) -> set[str]:
    """What an adapter names: its indexed collections and its module's collection constants
    (`SERVICE` or `SERVICE_...`, the storage kit's naming rule)."""
    module = importlib.import_module(store.__module__)
    indexes: Indexes = store.INDEXES
    names = set(indexes)
    for value in vars(module).values():
        if isinstance(value, str) and (
            value == store.SERVICE or value.startswith(f"{store.SERVICE}_")
        ):
            names.add(value)
    return names


def own_stores(spec: ServiceSpec[Any, Any]) -> list[type[MongoStore]]:
    module = importlib.import_module(f"services.{spec.name}.store_mongo")
    return [
        member
        for member in vars(module).values()
        if inspect.isclass(member)
        and issubclass(member, MongoStore)
        and member.__module__ == module.__name__
    ]


def expected_access(spec: ServiceSpec[Any, Any]) -> dict[str, set[str]]:
    read_write = {name for store in own_stores(spec) for name in collections_of(store)}
    read: set[str] = set()
    source = package_source(spec)
    for store, calls in SHARED_STORES.items():
        if any(call in source for call in calls):
            if store is MongoVault and spec.name != VAULT_WRITER:
                read |= collections_of(store)
            else:
                read_write |= collections_of(store)
    return {"readWrite": read_write, "read": read}


@pytest.mark.parametrize("spec", SERVICES, ids=lambda spec: spec.name)
def test_each_service_mongodb_user_reaches_exactly_its_own_collections(
    spec: ServiceSpec[Any, Any],
) -> None:
    assert own_stores(spec), f"{spec.name} has no MongoDB adapter"
    access = script_access()["users"][spec.name]
    assert {mode: set(names) for mode, names in access.items()} == expected_access(spec)


def test_the_ops_user_reads_every_collection_and_writes_none() -> None:
    users = script_access()["users"]
    everything = {
        name for spec in SERVICES for names in expected_access(spec).values() for name in names
    }
    assert set(users) == {spec.name for spec in SERVICES} | {"ops"}
    assert users["ops"] == {"readWrite": [], "read": sorted(everything)}


def role_documents(database: str) -> dict[str, dict[str, Any]]:
    """The roles create-users.js creates, built from its ACCESS block the way it does."""
    access = script_access()
    actions = access["actions"]

    def on(collection: str, names: list[str]) -> dict[str, Any]:
        return {"resource": {"db": database, "collection": collection}, "actions": names}

    return {
        f"crm-{service}": {
            "privileges": [
                *(on(name, actions["readWrite"]) for name in modes["readWrite"]),
                *(on(name, actions["read"]) for name in modes["read"]),
                on("", actions["database"]),
            ],
            "roles": [],
        }
        for service, modes in access["users"].items()
    }


@pytest.mark.mongo
async def test_the_roles_and_users_are_accepted_by_a_mongodb_server(mongo_url: str) -> None:
    database = f"crm_roles_{uuid.uuid4().hex[:12]}"
    roles = role_documents(database)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    try:
        db = client[database]
        for name, role in roles.items():
            await db.command({"createRole": name, **role})
            await db.command({"createUser": name, "pwd": "a-test-password", "roles": [name]})
        found = await db.command({"rolesInfo": 1, "showPrivileges": True})
        by_name = {role["role"]: role for role in found["roles"]}
        for name, role in roles.items():
            granted = {
                (p["resource"]["collection"], tuple(sorted(p["actions"])))
                for p in by_name[name]["privileges"]
            }
            assert granted == {
                (p["resource"]["collection"], tuple(sorted(p["actions"])))
                for p in role["privileges"]
            }
        users = await db.command({"usersInfo": 1})
        assert {u["user"]: [r["role"] for r in u["roles"]] for u in users["users"]} == {
            name: [name] for name in roles
        }
    finally:
        await client.drop_database(database)
        await client.close()
