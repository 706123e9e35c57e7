"""Comparing an existing topic with its spec (`crm create-topics`, `crm run` start-up): what
counts as a difference, what `--fix` may change, and how a difference reads."""

from __future__ import annotations

import pytest

from shared.kafka import (
    PARTITIONS,
    REPLICATION,
    KafkaConfigError,
    TopicDifference,
    TopicState,
    desired_state,
    topic_differences,
)
from shared.settings import KafkaSettings
from shared.topics import CLOCK, CONTACTS, CUSTOMERS_RAW, DAY_MS, TOPIC_SPECS

SPECS = {spec.name: spec for spec in TOPIC_SPECS}
PROD = KafkaSettings(topic_replication=3, topic_min_insync_replicas=2)


def state(partitions: int = 6, replication: int = 3, **configs: str) -> TopicState:
    return TopicState(
        partitions=partitions,
        replication=replication,
        configs={name.replace("_", "."): value for name, value in configs.items()},
    )


def raw_as_expected(**changes: str | None) -> TopicState:
    configs = dict(desired_state(SPECS[CUSTOMERS_RAW], PROD).configs)
    for name, value in changes.items():
        configs.pop(name.replace("_", "."), None)
        if value is not None:
            configs[name.replace("_", ".")] = value
    return TopicState(partitions=6, replication=3, configs=configs)


def differences(actual: TopicState, topic: str = CUSTOMERS_RAW) -> set[tuple[str, str | None]]:
    desired = desired_state(SPECS[topic], PROD)
    return {(d.setting, d.actual) for d in topic_differences(topic, desired, actual)}


def test_a_topic_as_its_spec_says_has_no_difference() -> None:
    assert differences(raw_as_expected()) == set()


def test_fewer_partitions_or_replicas_are_differences_more_are_not() -> None:
    expected = raw_as_expected()
    fewer = TopicState(partitions=3, replication=2, configs=expected.configs)
    more = TopicState(partitions=12, replication=5, configs=expected.configs)
    assert differences(fewer) == {(PARTITIONS, "3"), (REPLICATION, "2")}
    assert differences(more) == set()


def test_min_insync_replicas_lower_or_unset_is_a_difference_higher_is_not() -> None:
    assert differences(raw_as_expected(min_insync_replicas="1")) == {("min.insync.replicas", "1")}
    assert differences(raw_as_expected(min_insync_replicas=None)) == {("min.insync.replicas", None)}
    assert differences(raw_as_expected(min_insync_replicas="3")) == set()


def test_a_retention_shorter_or_longer_than_the_spec_is_a_difference() -> None:
    week, forever = str(7 * DAY_MS), "-1"
    assert differences(raw_as_expected(retention_ms=week)) == {("retention.ms", week)}
    assert differences(raw_as_expected(retention_ms=forever)) == {("retention.ms", forever)}


def test_missing_compaction_and_unexpected_compaction_are_differences() -> None:
    no_compaction = state(retention_ms="-1", min_insync_replicas="2")
    found = differences(no_compaction, CONTACTS)
    assert ("cleanup.policy", None) in found
    assert ("max.compaction.lag.ms", None) in found
    assert differences(raw_as_expected(cleanup_policy="compact")) == {("cleanup.policy", "compact")}
    assert differences(raw_as_expected(cleanup_policy="delete")) == set()


def test_only_configs_are_alterable_and_a_difference_reads_as_a_sentence() -> None:
    partitions = TopicDifference(CUSTOMERS_RAW, PARTITIONS, "6", "3")
    retention = TopicDifference(CUSTOMERS_RAW, "retention.ms", "2592000000", None)
    assert not partitions.alterable
    assert not TopicDifference(CUSTOMERS_RAW, REPLICATION, "3", "1").alterable
    assert retention.alterable
    assert str(partitions) == "crm.customers.raw: partitions is 3, expected 6"
    assert str(retention) == "crm.customers.raw: retention.ms is not set, expected 2592000000"


def test_the_desired_state_follows_the_settings_and_keeps_single_partition_topics() -> None:
    settings = KafkaSettings(topic_partitions=12, topic_replication=3, topic_min_insync_replicas=2)
    assert desired_state(SPECS[CUSTOMERS_RAW], settings).partitions == 12
    assert desired_state(SPECS[CLOCK], settings).partitions == 1
    assert desired_state(SPECS[CLOCK], settings).configs["min.insync.replicas"] == "2"
    embedded = desired_state(SPECS[CLOCK], KafkaSettings())
    assert "min.insync.replicas" not in embedded.configs
    assert embedded.replication == 1


def test_min_insync_replicas_above_the_replication_is_refused() -> None:
    with pytest.raises(KafkaConfigError, match="CRM_TOPIC_MIN_INSYNC_REPLICAS"):
        desired_state(SPECS[CLOCK], KafkaSettings(topic_replication=1, topic_min_insync_replicas=2))
