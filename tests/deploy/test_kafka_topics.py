"""The prod overlay's Strimzi `KafkaTopic`s are the code's topic specs, offline.

Each topic of `shared.topics.TOPIC_SPECS` is a KafkaTopic with the partitions, replication and
configs that `crm create-topics` would create and check with the prod ConfigMap's settings
(3 replicas, `min.insync.replicas` 2), and no other KafkaTopic exists; the resources match
Strimzi's KafkaTopic schema (kafkatopic-v1beta2.schema.json, written from its CRD). Every
topic whose records a dead letter points back to keeps them at least as long as the dead
letters, so that `crm redrive` finds the original.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from shared.kafka import desired_state
from shared.settings import KafkaSettings
from shared.topics import DAY_MS, DEADLETTER, DEADLETTER_RETENTION_DAYS, TOPIC_SPECS, TopicSpec
from tests.deploy.test_deploy_files import rendered as render_overlay

PROD = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "overlays" / "prod"
SCHEMA = Path(__file__).with_name("kafkatopic-v1beta2.schema.json")

Resource = dict[str, Any]


def rendered() -> tuple[Resource, ...]:
    """The prod overlay, as the other deploy tests render it (offline)."""
    return render_overlay("prod")


def kafka_topics() -> dict[str, Resource]:
    return {r["metadata"]["name"]: r for r in rendered() if r["kind"] == "KafkaTopic"}


def prod_settings() -> KafkaSettings:
    """The topic settings of the prod ConfigMap, as `crm create-topics` would read them."""
    (config_map,) = [r for r in rendered() if r["kind"] == "ConfigMap"]
    data = config_map["data"]
    return KafkaSettings(
        topic_partitions=int(data["CRM_TOPIC_PARTITIONS"]),
        topic_replication=int(data["CRM_TOPIC_REPLICATION"]),
        topic_min_insync_replicas=int(data["CRM_TOPIC_MIN_INSYNC_REPLICAS"]),
    )


def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_every_topic_of_the_code_is_a_kafka_topic_and_nothing_else() -> None:
    assert set(kafka_topics()) == {spec.name for spec in TOPIC_SPECS}


@pytest.mark.parametrize("spec", TOPIC_SPECS, ids=lambda spec: spec.name)
def test_kafka_topic_has_the_partitions_replicas_and_configs_the_code_creates(
    spec: TopicSpec,
) -> None:
    topic = kafka_topics()[spec.name]["spec"]
    desired = desired_state(spec, prod_settings())
    assert topic["partitions"] == desired.partitions == spec.partitions
    assert topic["replicas"] == desired.replication == 3
    assert {name: str(value) for name, value in topic["config"].items()} == dict(desired.configs)
    assert topic["config"]["min.insync.replicas"] == 2
    assert "topicName" not in topic, "the resource's name is the topic's"


def test_the_services_never_create_topics_in_prod() -> None:
    (config_map,) = [r for r in rendered() if r["kind"] == "ConfigMap"]
    assert config_map["data"]["CRM_CREATE_TOPICS"] == "false"


def test_kafka_topics_match_the_strimzi_schema() -> None:
    check = validator()
    errors = [
        f"{name}: {'.'.join(map(str, e.path))}: {e.message}"
        for name, topic in kafka_topics().items()
        for e in check.iter_errors(topic)
    ]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "partitions"), 0),
        (("spec", "replicas"), "3"),
        (("spec", "partition"), 6),
        (("spec", "config", "retention.ms"), {"days": 30}),
        (("metadata", "labels"), {"app.kubernetes.io/name": "crm-stream"}),
        (("metadata", "name"), "crm_checkouts_raw"),
    ],
)
def test_the_kafka_topic_schema_refuses_what_strimzi_would(
    path: tuple[str, ...], value: Any
) -> None:
    broken = copy.deepcopy(kafka_topics()[TOPIC_SPECS[0].name])
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert list(validator().iter_errors(broken)), path


def test_every_topic_a_dead_letter_points_to_outlives_the_dead_letter() -> None:
    topics = kafka_topics()
    dead_letters = int(topics[DEADLETTER]["spec"]["config"]["retention.ms"])
    assert dead_letters == DEADLETTER_RETENTION_DAYS * DAY_MS
    for name, topic in topics.items():
        config = topic["spec"]["config"]
        if config.get("cleanup.policy") == "compact":
            continue  # the latest record per key is kept for ever
        retention = int(config["retention.ms"])
        assert retention == -1 or retention >= dead_letters, name
