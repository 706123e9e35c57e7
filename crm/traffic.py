"""Publishing traffic and watching the pipeline: used by `crm simulate`, `crm tick` and `crm demo`."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from crm.registry import PIPELINE
from crm.simulation import RawMessage
from shared.events import ClockTicked
from shared.kafka import client_options, partition_lag, require_bootstrap
from shared.settings import KafkaSettings
from shared.skeleton import ServiceSpec
from shared.topics import CLOCK


async def open_producer(settings: KafkaSettings) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(
        bootstrap_servers=require_bootstrap(settings),
        linger_ms=5,
        max_batch_size=512 * 1024,
        max_request_size=2 * 1024 * 1024,
        acks="all",
        **client_options(settings),
    )
    await producer.start()
    return producer


async def publish(
    producer: AIOKafkaProducer, messages: Iterable[RawMessage], *, rate: float | None = None
) -> int:
    """Publish raw messages; `rate` (messages/s) paces them, None sends as fast as possible."""
    futures = []
    started = time.monotonic()
    count = 0
    for message in messages:
        futures.append(await producer.send(message.topic, message.value, key=message.key))
        count += 1
        if rate:
            ahead = count / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
        if len(futures) >= 5000:
            await asyncio.gather(*futures)
            futures.clear()
    await asyncio.gather(*futures)
    return count


async def tick(producer: AIOKafkaProducer, day: dt.date) -> None:
    """Publish the clock event: `day` has begun."""
    await producer.send_and_wait(CLOCK, ClockTicked(date=day).model_dump_json().encode())


async def exact_ends(
    reader: AIOKafkaConsumer, ends: dict[TopicPartition, int], within: float = 5.0
) -> dict[TopicPartition, int]:
    """The offset after each partition's last record.

    Tansu (the embedded broker) reports a partition's end as the base offset of its last record
    batch plus one. A group that committed part of that batch (a batch of `max_records` ends
    inside it) then looks drained while the rest of the batch waits, and whatever follows
    (the demo's next day, a test's checks) races the pipeline. Reading the last batch gives
    the exact end; on Apache Kafka, whose ends are exact, the read only confirms them."""
    exact = dict(ends)
    pending = {tp for tp, end in ends.items() if end > 0}
    if not pending:
        return exact
    reader.assign(sorted(pending, key=lambda tp: (tp.topic, tp.partition)))
    for tp in pending:
        reader.seek(tp, ends[tp] - 1)
    deadline = time.monotonic() + within
    while pending and time.monotonic() < deadline:
        batch = await reader.getmany(*pending, timeout_ms=200)
        for tp, records in batch.items():
            if records:
                exact[tp] = max(exact[tp], records[-1].offset + 1)
                pending.discard(tp)
    return exact


class PipelineWatch:
    """Consumer-group lag of every service, checked upstream first, to know the pipeline is drained."""

    def __init__(
        self, settings: KafkaSettings, services: Sequence[ServiceSpec[Any, Any]] = PIPELINE
    ) -> None:
        """Watches the pipeline's services by default; pass `SERVICES` to watch reports too."""
        self._settings = settings
        self._services = tuple(services)
        self._consumers: dict[str, tuple[AIOKafkaConsumer, tuple[str, ...]]] = {}
        self._reader: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self._reader = AIOKafkaConsumer(
            bootstrap_servers=require_bootstrap(self._settings),
            enable_auto_commit=False,
            fetch_max_wait_ms=50,  # it reads only partitions that have records
            **client_options(self._settings),
        )
        await self._reader.start()
        for spec in self._services:
            group, topics = spec.group, spec.topics
            consumer = AIOKafkaConsumer(
                bootstrap_servers=require_bootstrap(self._settings),
                group_id=group,
                enable_auto_commit=False,
                **client_options(self._settings),
            )
            await consumer.start()
            self._consumers[group] = (consumer, topics)

    async def stop(self) -> None:
        for consumer, _ in self._consumers.values():
            await consumer.stop()
        self._consumers.clear()
        if self._reader is not None:
            await self._reader.stop()
            self._reader = None

    async def lag(self) -> dict[str, int]:
        """Uncommitted messages per group, in pipeline order (see `partition_lag`)."""
        result, _ = await self._measure()
        return result

    async def _measure(self) -> tuple[dict[str, int], int]:
        groups: dict[str, list[TopicPartition]] = {}
        for group, (consumer, topics) in self._consumers.items():
            await consumer._client.force_metadata_update()
            groups[group] = [
                TopicPartition(topic, p)
                for topic in topics
                for p in sorted(consumer.partitions_for_topic(topic) or ())
            ]
        every = sorted({tp for tps in groups.values() for tp in tps})
        reader = self._reader
        ends: dict[TopicPartition, int] = {}
        if every and reader is not None:
            ends = await exact_ends(reader, await reader.end_offsets(every))
        result: dict[str, int] = {}
        for group, partitions in groups.items():
            consumer, _ = self._consumers[group]
            result[group] = sum(
                [partition_lag(ends[tp], await consumer.committed(tp)) for tp in partitions]
            )
        return result, sum(ends.values())

    async def drained(self, within: float, poll: float = 0.25) -> bool:
        """Wait until every group has committed everything, twice in a row with no new
        messages written in between; False on timeout."""
        deadline = time.monotonic() + within
        previous: int | None = None
        while time.monotonic() < deadline:
            lags, written = await self._measure()
            if not any(lags.values()):
                if previous == written:
                    return True
                previous = written
            else:
                previous = None
            await asyncio.sleep(poll)
        return False


async def read_topic(settings: KafkaSettings, topic: str, within: float = 10.0) -> list[Any]:
    """Every record of a topic, from the beginning to its current end."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=require_bootstrap(settings),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **client_options(settings),
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[Any] = []
        deadline = time.monotonic() + within

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in partitions])

        while time.monotonic() < deadline and await behind():
            batch = await consumer.getmany(timeout_ms=200)
            for items in batch.values():
                records.extend(items)
        return records
    finally:
        await consumer.stop()


def count_types(records: Iterable[Any]) -> Counter[str]:
    """Counts of `type` (and `type:kind`) of JSON records."""
    counts: Counter[str] = Counter()
    for record in records:
        if not record.value:
            continue
        doc = orjson.loads(record.value)
        kind = doc.get("type", "?")
        counts[kind] += 1
        for field in ("kind", "state", "reason"):
            if doc.get(field):
                counts[f"{kind}:{doc[field]}"] += 1
    return counts
