"""Fault-injection harness: services as `crm run` processes (several instances each), simulated
traffic with recent dates, a reference computed in-process from the same input, and readers of
what the pipeline left in its stores, its topics and the SMTP server.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from aiokafka import ConsumerRecord

from crm.embedded import free_port
from crm.registry import BY_NAME
from crm.simulation import RawMessage, SimulationConfig, generate
from crm.traffic import PipelineWatch, open_producer, publish, read_topic
from services import ingest, profiles
from services.ingest.store_sqlite import SqliteIngestRepository
from services.offers.store import open_repository as open_offers
from services.profiles.store import open_repository
from services.profiles.store_sqlite import SqliteProfilesRepository
from shared.kafka import ensure_topics
from shared.settings import KafkaSettings, PrivacySettings, Settings, StoreSettings
from shared.skeleton import ServiceApp
from shared.storage import StoreLocation
from shared.topics import CUSTOMERS_RAW, DELIVERIES, EVENTS, OFFERS
from tests.e2e.conftest import Mailbox

TODAY = dt.datetime.now(dt.UTC).date()


def traffic(customers: int, *, days: int = 28, seed: int = 11) -> list[RawMessage]:
    """Simulated raw events ending today (so coupons are still valid when e-mailed).

    No erasure in it: an erasure makes a profile depend on the order of events from two
    topics, and these tests compare totals with a reference (erasure has its own test).
    """
    config = SimulationConfig(
        customers=customers,
        days=days,
        start=TODAY - dt.timedelta(days=days - 1),
        seed=seed,
        erasures=0,
    )
    return generate(config)


def record(
    topic: str,
    value: bytes | None,
    offset: int = 0,
    key: bytes | None = None,
    *,
    timestamp: int = 0,
) -> Any:
    """A ConsumerRecord as a service's batch handler gets it (`timestamp`: its arrival, ms)."""
    return ConsumerRecord(
        topic=topic,
        partition=0,
        offset=offset,
        timestamp=timestamp,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(value or b""),
        headers=(),
    )


@dataclass(frozen=True)
class Totals:
    visits: int
    total_spend: Decimal


async def reference_totals(messages: Sequence[RawMessage], card_key: str) -> dict[str, Totals]:
    """Live profiles' totals from the pure services, in-process, one ordered batch each."""
    memory = StoreLocation.parse("memory://")
    settings = Settings(privacy=PrivacySettings(card_key=card_key))  # type: ignore[arg-type]
    ingested = ServiceApp(
        ingest.SPEC, settings, repository=await SqliteIngestRepository.open(memory)
    )
    outgoing, _ = await ingested.prepare(
        [record(m.topic, m.value, i) for i, m in enumerate(messages)]
    )
    events = [
        record(topic, value, i, key)
        for i, (topic, key, value) in enumerate(outgoing)
        if topic == EVENTS
    ]
    repo = await SqliteProfilesRepository.open(memory)
    folded = ServiceApp(profiles.SPEC, settings, repository=repo)
    _, handled = await folded.prepare(events)
    await handled.save()
    ids = {
        orjson.loads(value).get("customer_id") for topic, _, value in outgoing if topic == EVENTS
    } - {None}
    stored = await repo.get_many(ids)
    return {
        p.customer_id: Totals(p.visits, p.total_spend)
        for p in stored.values()
        if not p.erased and p.merged_into is None
    }


async def stored_totals(store: StoreSettings, ids: Sequence[str]) -> tuple[dict[str, Totals], int]:
    """The profiles the services left in the durable store (through the repository)."""
    async with open_repository(store) as repo:
        found = await repo.get_many(ids)
        count = await repo.count()
    totals = {
        cid: Totals(p.visits, p.total_spend)
        for cid, p in found.items()
        if not p.erased and p.merged_into is None
    }
    return totals, count


@dataclass
class Cluster:
    """Service instances as `crm run` processes; `profiles`, `profiles#2`, ... share a group."""

    env: dict[str, str]
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def service(instance: str) -> str:
        return instance.split("#")[0]

    def start(self, instance: str) -> None:
        self.ports[instance] = self.ports.get(instance) or free_port()
        log = (self.log_dir / f"{instance}.log").open("ab")
        self.processes[instance] = subprocess.Popen(
            [sys.executable, "-m", "crm.cli", "run", self.service(instance)],
            env={**self.env, "CRM_HTTP_PORT": str(self.ports[instance])},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()

    def start_many(self, instances: Sequence[str]) -> None:
        for instance in instances:
            self.start(instance)
        for instance in instances:
            self.wait_ready(instance)

    def wait_ready(self, instance: str, within: float = 60.0) -> None:
        import urllib.request

        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.processes[instance].poll() is not None:
                raise AssertionError(f"{instance} exited: {self.logs(instance)[-3000:]}")
            try:
                url = f"http://127.0.0.1:{self.ports[instance]}/readyz"
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{instance} not ready: {self.logs(instance)[-3000:]}")

    def kill(self, instance: str) -> int:
        """kill -9: no shutdown hook runs, nothing is committed or flushed."""
        process = self.processes[instance]
        process.send_signal(signal.SIGKILL)
        return process.wait(timeout=30)

    def stop(self, instance: str, within: float = 45.0) -> int:
        process = self.processes[instance]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=within)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(f"{instance} did not stop on SIGTERM") from None

    def stop_all(self) -> None:
        for instance in list(self.processes):
            if self.processes[instance].poll() is None:
                self.stop(instance)

    def logs(self, instance: str) -> str:
        return (self.log_dir / f"{instance}.log").read_text(errors="replace")


def kafka(bootstrap: str) -> KafkaSettings:
    return KafkaSettings(kafka_bootstrap=bootstrap)


async def create_topics(bootstrap: str) -> None:
    await ensure_topics(kafka(bootstrap))


async def send(bootstrap: str, messages: Sequence[RawMessage]) -> int:
    producer = await open_producer(kafka(bootstrap))
    try:
        return await publish(producer, messages)
    finally:
        await producer.stop()


async def send_signups_first(bootstrap: str, messages: Sequence[RawMessage]) -> int:
    """The sign-ups, drained, then the rest: raw topics have no order between them, and a
    sign-up that reaches profiles after the swipes would earn no offers for them, so the
    counts the checks rely on would depend on timing."""
    signups = [m for m in messages if m.topic == CUSTOMERS_RAW and b'"signup"' in m.value]
    sent = await send(bootstrap, signups)
    await wait_drained(bootstrap)
    first = {id(m) for m in signups}
    return sent + await send(bootstrap, [m for m in messages if id(m) not in first])


async def lag_of(bootstrap: str, service: str) -> int:
    watch = PipelineWatch(kafka(bootstrap))
    await watch.start()
    try:
        return (await watch.lag())[BY_NAME[service].group]
    finally:
        await watch.stop()


async def wait_drained(bootstrap: str, within: float = 120.0) -> None:
    watch = PipelineWatch(kafka(bootstrap))
    await watch.start()
    try:
        assert await watch.drained(within, poll=0.5), f"not drained: {await watch.lag()}"
    finally:
        await watch.stop()


def wait_until(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Outcome:
    """What the pipeline published and delivered."""

    issued: Counter[str]
    """offer_issued records on crm.offers per offer id."""
    republished: Counter[str]
    """offer_issued records that follow one of the same offer with no offer_revoked between
    (a re-issue after a revocation is a correction the contract allows, not a republication)."""
    history: dict[str, list[str]]
    """Each offer's event types on crm.offers, in order (what a failure reports)."""
    versions: dict[str, set[bytes]]
    """The distinct payloads of each offer id's offer_issued records."""
    delivered: set[str]
    """Offer ids with an outcome on crm.deliveries."""
    sent: set[str]
    """Message-IDs the notifier recorded as sent."""
    mailed: Counter[str]
    """Messages the SMTP server accepted, per Message-ID."""


async def outcome(bootstrap: str, mailbox: Mailbox) -> Outcome:
    settings = kafka(bootstrap)
    issued: Counter[str] = Counter()
    republished: Counter[str] = Counter()
    history: dict[str, list[str]] = {}
    versions: dict[str, set[bytes]] = {}
    for r in await read_topic(settings, OFFERS, within=30):
        doc = orjson.loads(r.value)
        if "offer_id" not in doc:
            continue
        seen = history.setdefault(doc["offer_id"], [])
        if doc.get("type") == "offer_issued":
            issued[doc["offer_id"]] += 1
            versions.setdefault(doc["offer_id"], set()).add(r.value)
            # A customer's offer events share one partition, so their order is the topic's.
            states = [t for t in seen if t in ("offer_issued", "offer_revoked")]
            if states and states[-1] == "offer_issued":
                republished[doc["offer_id"]] += 1
        seen.append(str(doc.get("type")))
    sent: set[str] = set()
    delivered: set[str] = set()
    for r in await read_topic(settings, DELIVERIES, within=30):
        doc = orjson.loads(r.value)
        delivered.add(doc["offer_id"])
        if doc.get("state") == "sent":
            sent.add(doc["message_id"])
    mailed: Counter[str] = Counter(str(m["Message-ID"]) for m in list(mailbox.messages))
    return Outcome(
        issued=issued,
        republished=republished,
        history=history,
        versions=versions,
        delivered=delivered,
        sent=sent,
        mailed=mailed,
    )


async def stored_offer_ids(store: StoreSettings, customer_ids: Sequence[str]) -> set[str]:
    """The offers the offers service stored for these customers (through its repository)."""
    async with open_offers(store) as repo:
        return set(await repo.offers_of_customers(customer_ids))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def group_progress(bootstrap: str, service: str) -> tuple[int, int]:
    """(records committed, records not yet committed) of a service's consumer group."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from shared.kafka import partition_lag

    group, topics = BY_NAME[service].group, BY_NAME[service].topics
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        partitions = [
            TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()
        ]
        ends = await consumer.end_offsets(partitions) if partitions else {}
        done = lag = 0
        for tp in partitions:
            committed = await consumer.committed(tp) or 0
            done += committed
            lag += partition_lag(ends[tp], committed)
        return done, lag
    finally:
        await consumer.stop()


def wait_mid_stream(bootstrap: str, service: str, within: float = 90.0) -> None:
    """Until the service has committed some of its input and has more to do."""

    def mid() -> bool:
        done, lag = run(group_progress(bootstrap, service))
        return done > 0 and lag > 0

    wait_until(mid, within, f"{service} mid-stream")
