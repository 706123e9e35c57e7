"""`publish_all` on the embedded broker: record batches per partition, read back as raw records.

What a consumer of the topic sees is checked: which partition each record is in (the one a
keyed send picks, so batching moves no key), the order of one key's records, the bytes of keys
and values, a tombstone's missing value, and the `traceparent` header on every record.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
from aiokafka.partitioner import DefaultPartitioner

from crm.traffic import read_topic
from shared.edge import Outgoing
from shared.kafka import BATCH_BYTES, new_broker, publish_all
from shared.settings import KafkaSettings, ObservabilitySettings
from shared.tracing import tracing_middlewares
from tests.topics import create_topic

pytestmark = pytest.mark.integration

PARTITIONS = 4


async def publish(settings: KafkaSettings, messages: list[Outgoing]) -> None:
    broker = new_broker(settings, client_id="crm-test-publisher")
    for middleware in tracing_middlewares("test", ObservabilitySettings()):  # as services do
        broker.add_middleware(middleware)
    await broker.start()
    try:
        await publish_all(broker, messages)
    finally:
        await broker.stop()


async def test_batches_keep_each_keys_partition_and_order_and_every_byte(
    kafka_settings: KafkaSettings, unique: str
) -> None:
    topic = f"crm.test.batches.{unique}"
    await create_topic(kafka_settings, topic, PARTITIONS)
    # More than one batch's worth for some partitions: 2,000 values of ~1 KB over 40 keys.
    messages: list[Outgoing] = [
        (topic, f"customer-{n % 40}".encode(), f"{n:06d}-".encode() + b"x" * 1_000)
        for n in range(2_000)
    ]
    assert sum(len(v or b"") for _, _, v in messages) > 2 * BATCH_BYTES
    await publish(kafka_settings, messages)

    records = await read_topic(kafka_settings, topic)
    assert sorted(r.value for r in records) == sorted(v for _, _, v in messages)
    partitioner = DefaultPartitioner()
    every = list(range(PARTITIONS))
    by_key: dict[bytes, list[bytes]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        assert record.partition == partitioner(record.key, every, every)
        by_key[record.key].append(record.value)
        # The producer's trace context is on every record of a batch.
        assert "traceparent" in dict(record.headers)
    for key, values in by_key.items():
        assert values == [v for _, k, v in messages if k == key], key


async def test_many_small_records_and_one_larger_than_a_batch_all_arrive_in_order(
    kafka_settings: KafkaSettings, unique: str
) -> None:
    """Small records are mostly headers: 20,000 of them on one key overflowed a batch counted
    by keys and values alone (a sign-up wave of a million customers found it)."""
    topic = f"crm.test.small.{unique}"
    await create_topic(kafka_settings, topic, PARTITIONS)
    small: list[Outgoing] = [(topic, b"one-key", f"{n:08d}".encode()) for n in range(20_000)]
    large: Outgoing = (topic, b"one-key", b"L" * 600_000)  # more than a 512 KiB batch
    messages = [*small[:10_000], large, *small[10_000:]]
    await publish(kafka_settings, messages)

    records = await read_topic(kafka_settings, topic, within=30.0)
    ordered = sorted(records, key=lambda r: (r.partition, r.offset))
    assert [r.value for r in ordered] == [v for _, _, v in messages]


async def test_a_call_with_a_tombstone_keeps_it_a_tombstone_after_the_value_it_deletes(
    kafka_settings: KafkaSettings, unique: str
) -> None:
    topic = f"crm.test.tombstones.{unique}"
    await create_topic(kafka_settings, topic, PARTITIONS)
    await publish(kafka_settings, [(topic, b"kid-1", b"wrapped key"), (topic, b"kid-1", None)])

    records = await read_topic(kafka_settings, topic)
    assert [(r.key, r.value) for r in records] == [(b"kid-1", b"wrapped key"), (b"kid-1", None)]
