"""A compacted topic read whole by every instance of a service: Kafka Streams' GlobalKTable.

Campaigns (`crm.campaigns`) and segment definitions (`crm.segment-definitions`) must reach
every instance, not the one its consumer group assigns the partition to. Each instance reads
the whole topic without a group, from the first record, hands every decoded record to `apply`,
and says it is `ready` once it has read up to the end offsets it found at start: a service
that waits for it decides on every definition saved before it started, a replay included.
Then it follows the topic for changes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.kafka import FETCH_MAX_WAIT_MS, client_options, require_bootstrap
from shared.logging import get_logger
from shared.settings import KafkaSettings

log = get_logger(__name__)

T = TypeVar("T")


class GlobalTable(Generic[T]):
    """Reads `topic` whole and follows it; `decode(key, value)` gives a record or None (skipped,
    counted in `skipped`); `apply(records)` takes each fetched batch in offset order."""

    def __init__(
        self,
        settings: KafkaSettings,
        topic: str,
        *,
        decode: Callable[[bytes | None, bytes | None], T | None],
        apply: Callable[[Sequence[T]], Awaitable[None]],
        name: str,
    ) -> None:
        self._settings = settings
        self.topic = topic
        self._decode = decode
        self._apply = apply
        self._name = name
        self.ready = asyncio.Event()
        self.applied = 0
        self.skipped = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=require_bootstrap(self._settings),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            **client_options(self._settings),
        )
        await consumer.start()
        try:
            found = consumer.partitions_for_topic(self.topic)
            while not found:  # created by `crm create-topics` or another service's start-up
                await asyncio.sleep(1.0)
                await consumer._client.force_metadata_update()
                found = consumer.partitions_for_topic(self.topic)
            partitions = [TopicPartition(self.topic, p) for p in sorted(found)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            while True:
                if not self.ready.is_set() and all(
                    [await consumer.position(tp) >= ends[tp] for tp in partitions]
                ):
                    self.ready.set()
                    log.info(
                        "global_table_ready",
                        table=self._name,
                        topic=self.topic,
                        records=self.applied,
                    )
                fetched = await consumer.getmany(timeout_ms=200, max_records=500)
                records: list[T] = []
                for tp in partitions:
                    for record in fetched.get(tp, ()):
                        decoded = self._decode(record.key, record.value)
                        if decoded is None:
                            self.skipped += 1
                            log.warning(
                                "global_table_record_skipped",
                                table=self._name,
                                partition=tp.partition,
                                offset=record.offset,
                            )
                            continue
                        records.append(decoded)
                if records:
                    await self._apply_retrying(records)
                    self.applied += len(records)
        finally:
            await consumer.stop()

    async def _apply_retrying(self, records: Sequence[T]) -> None:
        """Apply, retrying (capped backoff) while the store is down: nothing is skipped."""
        delay = 0.2
        while True:
            try:
                await self._apply(records)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # retried; the type is logged
                log.warning(
                    "global_table_apply_failed",
                    table=self._name,
                    error_type=type(exc).__name__,
                    retry_in_s=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[GlobalTable[T]]:
        """Read and follow the topic while the block runs."""
        self._task = asyncio.create_task(self._run(), name=f"global-table-{self._name}")
        try:
            yield self
        finally:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
