"""Topics are created with the configs their spec states: `crm.contacts`' compaction bounds
(how soon an erasure's tombstone wins) and every topic's retention, as the broker reports them.
An existing topic is checked against its spec: `crm create-topics` lists every difference and
exits non-zero, `--fix` sets the configs (never the partitions), `crm run` only warns.

The embedded broker (Tansu) serves DescribeConfigs (only the configs a topic sets) and
IncrementalAlterConfigs, but not the older AlterConfigs: these tests use the former two.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from typer.testing import CliRunner

from crm.cli import cli
from crm.embedded import EmbeddedKafka
from shared.kafka import TopicDifference, ensure_topics, reconcile_topics
from shared.settings import KafkaSettings
from shared.topics import CONTACTS, CUSTOMERS_RAW, DAY_MS, EVENTS, TOPIC_SPECS, TopicSpec

pytestmark = pytest.mark.integration

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
    assert raw["retention.ms"] == str(30 * 24 * 3600 * 1000), "as long as the dead letters"
    assert "min.insync.replicas" not in raw, "the single embedded broker keeps its default"


async def partition_counts(bootstrap: str, names: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names)}
    finally:
        await admin.close()


async def create_as(bootstrap: str, name: str, partitions: int, configs: dict[str, str]) -> None:
    """A topic made by hand, the way an operator or an older release might have made it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs)])
    finally:
        await admin.close()


def renamed(spec: TopicSpec, unique: str) -> TopicSpec:
    return dataclasses.replace(spec, name=f"{spec.name}-{unique}")


async def test_min_insync_replicas_is_set_on_created_topics_when_configured(
    kafka_settings: KafkaSettings, unique: str
) -> None:
    settings = kafka_settings.model_copy(update={"topic_min_insync_replicas": 1})
    specs = [renamed(spec, unique) for spec in TOPIC_SPECS[:2]]
    await ensure_topics(settings, specs)
    configs = await described(settings.kafka_bootstrap or "", [s.name for s in specs])
    assert all(configs[s.name]["min.insync.replicas"] == "1" for s in specs)


async def test_an_existing_topic_that_differs_is_reported_and_fixed_except_its_partitions(
    kafka_settings: KafkaSettings, unique: str
) -> None:
    bootstrap = kafka_settings.kafka_bootstrap or ""
    by_name = {spec.name: renamed(spec, unique) for spec in TOPIC_SPECS}
    raw, contacts, events = by_name[CUSTOMERS_RAW], by_name[CONTACTS], by_name[EVENTS]
    # An older release's raw topic (7 days, 3 partitions) and a contacts topic made without
    # compaction; crm.events as the spec says.
    await create_as(bootstrap, raw.name, 3, {"retention.ms": str(7 * DAY_MS)})
    await create_as(bootstrap, contacts.name, 6, {"retention.ms": "-1"})
    await ensure_topics(kafka_settings, [events])

    report = await reconcile_topics(kafka_settings, [raw, contacts, events])
    assert report.created == []
    found = {(d.topic, d.setting): (d.actual, d.expected) for d in report.differences}
    assert found[(raw.name, "partitions")] == ("3", "6")
    assert found[(raw.name, "retention.ms")] == (str(7 * DAY_MS), str(30 * DAY_MS))
    assert found[(contacts.name, "cleanup.policy")] == (None, "compact")
    assert found[(contacts.name, "max.compaction.lag.ms")] == (None, str(DAY_MS))
    assert not [d for d in report.differences if d.topic == events.name]

    fixed = await reconcile_topics(kafka_settings, [raw, contacts, events], fix=True)
    assert fixed.differences == [TopicDifference(raw.name, "partitions", "6", "3")]
    assert {(d.topic, d.setting) for d in fixed.fixed} == set(found) - {(raw.name, "partitions")}
    configs = await described(bootstrap, [raw.name, contacts.name])
    assert configs[raw.name]["retention.ms"] == str(30 * DAY_MS)
    for name, value in contacts.topic_configs().items():
        assert configs[contacts.name][name] == value, name
    assert (await partition_counts(bootstrap, [raw.name]))[raw.name] == 3, "never repartitioned"


async def test_start_up_warns_about_a_differing_topic_and_goes_on(
    kafka_settings: KafkaSettings, unique: str
) -> None:
    raw = renamed(TOPIC_SPECS[0], unique)
    await create_as(kafka_settings.kafka_bootstrap or "", raw.name, 6, {"retention.ms": "1000"})
    with structlog.testing.capture_logs() as logs:
        created = await ensure_topics(kafka_settings, [raw])
    assert created == []
    (warning,) = [e for e in logs if e["event"] == "topic_differs_from_spec"]
    assert warning["log_level"] == "warning"
    assert (warning["topic"], warning["setting"], warning["actual"]) == (
        raw.name,
        "retention.ms",
        "1000",
    )


# -- `crm create-topics`, on a broker of its own: it works on the real topic names.


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("topics-broker") / "broker.log"
    with EmbeddedKafka(log_file=log) as broker:
        yield broker.bootstrap


def create_topics(bootstrap: str, *args: str, **env: str) -> Any:
    environment = {"CRM_KAFKA_BOOTSTRAP": bootstrap, "CRM_LOG_FORMAT": "json", **env}
    return CliRunner().invoke(cli, ["create-topics", *args], env=environment)


def test_create_topics_creates_checks_and_fixes_configs_with_an_exit_code_that_says_so(
    own_broker: str,
) -> None:
    first = create_topics(own_broker)
    assert first.exit_code == 0, first.output
    assert f"created {len(TOPIC_SPECS)} topics" in first.stdout

    stricter = {"CRM_TOPIC_MIN_INSYNC_REPLICAS": "1"}
    check = create_topics(own_broker, **stricter)
    assert check.exit_code == 1
    assert "created 0 topics" in check.stdout
    for spec in TOPIC_SPECS:
        assert f"{spec.name}: min.insync.replicas is not set, expected 1" in check.stderr
    assert "crm create-topics --fix" in check.stderr

    fix = create_topics(own_broker, "--fix", **stricter)
    assert fix.exit_code == 0, fix.output
    assert f"fixed: {CUSTOMERS_RAW}: min.insync.replicas is not set, expected 1" in fix.stdout

    again = create_topics(own_broker, **stricter)
    assert again.exit_code == 0, again.output
    assert "every existing topic has the partitions and configs the code expects" in again.stdout


def test_create_topics_never_adds_partitions_and_says_why(own_broker: str) -> None:
    assert create_topics(own_broker).exit_code in (0, 1)  # the topics exist
    more = {"CRM_TOPIC_PARTITIONS": "12"}
    for args in ((), ("--fix",)):
        result = create_topics(own_broker, *args, **more)
        assert result.exit_code == 1
        assert f"{CUSTOMERS_RAW}: partitions is 6, expected 12 (not changed by --fix)" in (
            result.stderr
        )
        assert "out of order" in result.stderr
        assert "crm.clock: partitions" not in result.stderr, "the clock keeps one partition"
    assert asyncio_run_counts(own_broker)[CUSTOMERS_RAW] == 6


def asyncio_run_counts(bootstrap: str) -> dict[str, int]:
    import asyncio

    return asyncio.run(partition_counts(bootstrap, [CUSTOMERS_RAW]))


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
