"""Topics are created with the configs their spec states: `crm.contacts`' compaction bounds
(how soon an erasure's tombstone wins) and every topic's retention, as the broker reports them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from shared.kafka import ensure_topics
from shared.settings import KafkaSettings
from shared.topics import CONTACTS, TOPIC_SPECS

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


async def described(bootstrap: str, names: list[str]) -> dict[str, dict[str, str]]:
    """The broker's DescribeConfigs answer: topic -> config -> value."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses: list[Any] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
    finally:
        await admin.close()
    configs: dict[str, dict[str, str]] = {}
    for response in responses:
        for _code, _message, _type, name, entries in response.resources:
            configs[name] = {entry[0]: entry[1] for entry in entries}
    return configs


async def test_every_topic_is_created_with_the_configs_of_its_spec(
    kafka_settings: KafkaSettings, unique: str
) -> None:
    specs = [dataclasses.replace(spec, name=f"{spec.name}-{unique}") for spec in TOPIC_SPECS]
    await ensure_topics(kafka_settings, specs)
    configs = await described(kafka_settings.kafka_bootstrap or "", [s.name for s in specs])
    for spec in specs:
        for name, value in spec.topic_configs().items():
            assert configs[spec.name].get(name) == value, (spec.name, name)
    contacts = configs[f"{CONTACTS}-{unique}"]
    assert contacts["cleanup.policy"] == "compact"
    assert contacts["max.compaction.lag.ms"] == str(24 * 3600 * 1000)
    assert contacts["segment.ms"] == str(3600 * 1000)
    assert contacts["min.compaction.lag.ms"] == "60000"
    assert contacts["delete.retention.ms"] == str(24 * 3600 * 1000)
    raw = configs[f"crm.customers.raw-{unique}"]
    assert raw["retention.ms"] == str(7 * 24 * 3600 * 1000)


def test_compose_creates_the_topics_with_the_same_configs() -> None:
    script = " ".join(yaml.safe_load(COMPOSE.read_text())["services"]["topics"]["command"])
    created: dict[str, dict[str, str]] = {}
    for line in script.replace("\\\n", " ").splitlines():  # a line may go on after a \
        words = line.split()
        if words and words[0] == "topic":
            created[words[1]] = dict(
                words[i + 1].split("=", 1) for i, word in enumerate(words) if word == "--config"
            )
    assert created == {spec.name: spec.topic_configs() for spec in TOPIC_SPECS}
