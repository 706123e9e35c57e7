"""`crm replay profiles|offers|reports`: rebuild a service's store from the retained topics.

The procedure, each step done by the command:
1. the service must be stopped: its consumer group has no member (checked, and refused
   otherwise; `--force` skips the check on a broker that keeps stopped members listed);
2. the service's store is emptied (its SQLite file's tables, or its MongoDB collections);
3. the group's committed offsets go back to the first retained record of every topic it reads;
4. the service runs in this process until it has read everything (its group's lag is zero
   twice in a row);
5. what the service published before and the rebuild did not derive again is kept (offers: an
   offer issued and revoked on the way by a correction stays known, as revoked), then it
   stops: its store is rebuilt, and it can be started as usual.

Safe to run again: each run starts from an empty store and the first records. What the service
publishes while it rebuilds is what it published the first time (deterministic offer ids and
codes, profile changes of the same events): every consumer drops it as already seen, and the
notifier's delivery records keep it from e-mailing anything twice.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata

from crm.traffic import PipelineWatch, read_topic
from shared.kafka import client_options, require_bootstrap
from shared.logging import get_logger
from shared.settings import Settings
from shared.skeleton import ServiceApp, ServiceSpec
from shared.storage import MongoStore, SqliteStore

log = get_logger(__name__)


class ReplayError(RuntimeError):
    """The replay cannot run now (the service is running, the store cannot be reset)."""


@dataclass(frozen=True, slots=True)
class ReplayReport:
    service: str
    partitions: int
    records: int
    seconds: float


async def _members(settings: Settings, group: str) -> int:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=require_bootstrap(settings.kafka), **client_options(settings.kafka)
    )
    await admin.start()
    try:
        described = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    members = 0
    for response in described:
        for entry in getattr(response, "groups", []):
            # (error_code, group_id, state, protocol_type, protocol, members, ...)
            if len(entry) > 5 and entry[1] == group:
                members += len(entry[5])
    return members


async def _rewind(settings: Settings, group: str, topics: tuple[str, ...]) -> tuple[int, int]:
    """Commit the first retained offset of every partition for the group; (partitions, records).

    The commit is made as a member of the group (joined with the service's topics), which
    every broker accepts; the group is left right after."""
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=require_bootstrap(settings.kafka),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **client_options(settings.kafka),
    )
    await consumer.start()
    try:
        wanted = {
            TopicPartition(topic, p)
            for topic in topics
            for p in consumer.partitions_for_topic(topic) or ()
        }
        deadline = time.monotonic() + 60.0
        while not wanted <= consumer.assignment():
            if time.monotonic() > deadline:
                raise ReplayError(f"could not take over the partitions of group {group}")
            await consumer.getmany(timeout_ms=200, max_records=1)
        partitions = sorted(wanted, key=lambda tp: (tp.topic, tp.partition))
        if not partitions:
            return 0, 0
        first = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.commit({tp: OffsetAndMetadata(first[tp], "") for tp in partitions})
        return len(partitions), sum(max(0, ends[tp] - first[tp]) for tp in partitions)
    finally:
        await consumer.stop()


async def _reset_store(spec: ServiceSpec[Any, Any], settings: Settings) -> None:
    async with spec.open_store(settings) as repository:
        if not isinstance(repository, SqliteStore | MongoStore):
            raise ReplayError(f"the {spec.name} store cannot be reset")
        await repository.reset()


async def replay(
    spec: ServiceSpec[Any, Any],
    settings: Settings,
    *,
    within: float = 3600.0,
    force: bool = False,
) -> ReplayReport:
    """Rebuild `spec`'s store from the retained topics (see the module's procedure).

    `force` skips the check that the service is stopped, for brokers that keep a stopped
    consumer listed in its group (the embedded Tansu broker never drops it): make sure
    yourself that no instance of the service runs.
    """
    started = time.monotonic()
    # A service that just stopped may still be listed until the broker notices (its session
    # timeout): wait that long before refusing.
    deadline = time.monotonic() + 30.0
    members = 0 if force else await _members(settings, spec.group)
    while members and time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        members = await _members(settings, spec.group)
    if members:
        raise ReplayError(
            f"stop the {spec.name} service first: its consumer group {spec.group} has "
            f"{members} member(s)"
        )
    await _reset_store(spec, settings)
    partitions, records = await _rewind(settings, spec.group, spec.topics)
    log.info("replay_started", service_name=spec.name, partitions=partitions, records=records)
    app = ServiceApp(spec, settings)
    watch = PipelineWatch(settings.kafka, services=(spec,))
    await app.start()
    await watch.start()
    try:
        if not await watch.drained(within, poll=0.5):
            raise ReplayError(f"{spec.name} did not catch up within {within:.0f} s")
        if spec.after_replay is not None:
            published = await read_topic(settings.kafka, spec.after_replay.topic, within=60)
            handled = await spec.after_replay.keep(app.service, [r.value for r in published])
            await app.publish(handled.outgoing)
            await handled.save()
    finally:
        await watch.stop()
        await app.stop()
    seconds = round(time.monotonic() - started, 1)
    log.info("replay_done", service_name=spec.name, seconds=seconds)
    return ReplayReport(spec.name, partitions, records, seconds)


def replay_main(
    spec: ServiceSpec[Any, Any], settings: Settings, *, force: bool = False
) -> ReplayReport:
    return asyncio.run(replay(spec, settings, force=force))
