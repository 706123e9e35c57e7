"""`crm bench`: how close the pipeline comes to what this design can do on this machine.

Every phase runs on a fresh embedded broker (or on `CRM_KAFKA_BOOTSTRAP`) with a SQLite store
in a temporary folder (`--store mongodb`: a fresh embedded MongoDB-wire test server per phase,
the PyMongo code path; its figures are the test server's, not a production mongod's), the
services as `crm run` processes (`ServiceProcesses` of the demo). Input topics are filled
before a timed phase starts, so the bench's own publisher is never what is measured:

- transport: plain aiokafka consume -> produce pass-throughs (child processes, like the
  services): one hop (`baseline_rate`), and three chained over the same partitions
  (`chain_rate`), the ceiling of a three-hop design on this broker and these cores;
- ingest: the ingest service alone, raw checkouts -> normalized events (`ingest_ratio` =
  ingest / baseline);
- pipeline: ingest, profiles and offers (the notifier runs too), from raw checkouts until every
  profile is updated and every offer issued (`pipeline_ratio` = pipeline / chain);
- capacity: paced runs from the pipeline's rate down, until one whose backlog does not grow
  (`capacity_rate`), then checkout -> profile change -> offer latency at half of it
  (`latency_rate`, `p50_ms`, `p95_ms`, `p99_ms`);
- growth: the same burst (the same customers' baskets, in the same order) against a store of
  the small population and of the large one (`growth_ratio`), with the store's size and each
  service's peak RSS at the large one;
- till: the offers service's coupon API at a fixed pace (validations, some with a lane's
  reservation, and card swipes asking for the applicable coupons) against the offers the
  pipeline issued: latency per request, and every answer checked.

A timed rate is "outputs after the first one / (last output - first output)": the consumers'
start and group join are not part of it. The result is checked against a reference computed
from the generated data (profile totals, offers per checkout); a wrong result fails the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import os
import platform
import random
import secrets
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.console import Console
from rich.table import Table

from crm.demo import ServiceProcesses
from crm.embedded import SECANTUS_MISSING, EmbeddedKafka, EmbeddedMongo, secantus_available
from crm.registry import PIPELINE
from crm.simulation import CATALOG, RawMessage, basket, card_number
from crm.traffic import PipelineWatch, open_producer, publish, read_topic
from shared.kafka import FETCH_MAX_WAIT_MS, client_options, ensure_topics, require_bootstrap
from shared.keys import CARD_KEY, fresh_keys
from shared.settings import KafkaSettings
from shared.topics import (
    CHECKOUTS_RAW,
    CUSTOMERS_RAW,
    DEFAULT_PARTITIONS,
    EVENTS,
    OFFERS,
    PROFILES_CHANGED,
    TOPIC_SPECS,
    TopicSpec,
)

BENCH_SOURCE = "crm.bench.raw"
"""Input of the pass-throughs: a copy of the raw checkouts."""
BENCH_SINK = "crm.bench.copy"
"""Output of the one-hop pass-through."""
CHAIN = (BENCH_SOURCE, "crm.bench.hop1", "crm.bench.hop2", "crm.bench.chain")
"""The chained pass-throughs' topics: raw -> hop1 -> hop2 -> chain, as ingest -> profiles ->
offers go raw -> events -> profile changes -> offers."""
TILL_TOKEN = secrets.token_urlsafe(24)
"""The till's bearer token of this run (the services get its SHA-256)."""
PIPELINE_SERVICES = tuple(spec.name for spec in PIPELINE)
"""The services a pipeline run starts (others, such as reports, are not part of it)."""
RULES = "[holdout]\npercent = 0\n"
"""Offer rules of the bench: the defaults without the hold-out group, so that every eligible
customer gets the offers the contract's rules give (the reference does not model hold-outs)."""
BENCH_TOPICS = tuple(
    TopicSpec(name, DEFAULT_PARTITIONS, 1) for name in (BENCH_SOURCE, BENCH_SINK, *CHAIN[1:])
)
"""The pass-throughs' topics, partitioned as the services' topics are."""

TARGETS = {
    "ingest_ratio": 0.5,
    "pipeline_ratio": 0.5,
    "p99_ms": 250.0,
    "growth_ratio": 0.8,
    "till_p99_ms": 50.0,
}
"""The targets on a 2-core machine: ratios at least, latencies at most."""

_MONEY = Decimal("0.01")
_HISTORY = dt.timedelta(days=30)
"""Profiles keep the checkouts of the last 30 days (FoldOptions.history_days)."""
_TAIL_DAYS = 7
"""The paced checkouts (capacity and latency phases) fall in the last days before the run; the
burst spans `BenchOptions.days` before them, so that a burst is the same whatever follows it."""
CAPACITY_STEPS = 7
"""Paced runs of the capacity search at most: from the pipeline's rate, each 30 % slower (a
paced run is costlier per checkout than a burst: small batches, and its recent checkouts'
offers are still valid, so they are e-mailed, and the deliveries come back to profiles and
offers)."""
CAPACITY_STEP = 0.7
SIGNUPS_PER_S = 300
"""The slowest sign-up rate the bench waits for (a population's sign-ups are not timed)."""
GROWING_BACKLOG_S = 0.5
"""A paced run's backlog grows when the median checkout -> profile latency of its last fifth
exceeds that of its first fifth by more than this."""


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """What `crm bench` measures, and how much of it."""

    checkouts: int = 50_000
    """Checkouts of every burst (transport, ingest, pipeline at both populations)."""
    populations: tuple[int, int] = (10_000, 1_000_000)
    """Customers of the small and of the large store (growth); the burst's checkouts go to as
    many customers as the small population holds, in both."""
    step_seconds: float = 10.0
    """Length of one paced run of the capacity search."""
    step_checkouts: int = 20_000
    """Checkouts of one paced run at most (shorter runs at high rates)."""
    latency_checkouts: int = 10_000
    till_rate: float = 200.0
    till_requests: int = 6_000
    days: int = 28
    seed: int = 11
    consent_share: float = 0.75
    email_share: float = 0.95
    timeout: float = 900.0
    keep_dir: Path | None = None
    store: Literal["sqlite", "mongodb"] = "sqlite"
    """`mongodb`: the services on the PyMongo code path, against an embedded MongoDB-wire test
    server (SecantusDB): a regression in the MongoDB adapters shows, its speed is not mongod's."""

    def with_overrides(self, **overrides: Any) -> BenchOptions:
        """These options with the values given (None keeps the current one)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def quick(cls, **overrides: Any) -> BenchOptions:
        """A run of a few minutes: small bursts and populations, short paced runs."""
        values: dict[str, Any] = {
            "checkouts": 4_000,
            "populations": (1_000, 10_000),
            "step_seconds": 3.0,
            "step_checkouts": 6_000,
            "latency_checkouts": 2_000,
            "till_requests": 1_000,
            "timeout": 180.0,
        }
        values.update(overrides)
        return cls(**values)

    @property
    def pool(self) -> int:
        """Checkouts the paced phases may take after the burst."""
        return CAPACITY_STEPS * self.step_checkouts + self.latency_checkouts


# ---------------------------------------------------------------- workload and reference


@dataclass(frozen=True, slots=True)
class Checkout:
    """One generated checkout and what the reference needs of it."""

    event_id: str
    customer: int
    at: dt.datetime
    skus: frozenset[str]
    total: Decimal
    message: RawMessage


@dataclass(slots=True)
class Workload:
    """Sign-ups of a population and checkouts over it, with the expected results."""

    population: int
    signups: list[RawMessage]
    checkouts: list[Checkout]
    reachable: list[bool]
    """Per customer index: consent and an e-mail address (offers can be issued)."""
    visits: dict[int, int] = field(default_factory=dict)
    spend: dict[int, Decimal] = field(default_factory=dict)
    offers: set[tuple[str, str]] = field(default_factory=set)
    """(checkout event id, SKU) of every frequent-item offer expected."""

    def sent(self, count: int) -> Workload:
        """The workload of its first `count` checkouts (those a run published), with their
        expected results."""
        prefix = Workload(self.population, self.signups, self.checkouts[:count], self.reachable)
        _reference(prefix)
        return prefix


def _amount(line: dict[str, Any]) -> Decimal:
    gross = Decimal(str(line["quantity"])) * Decimal(line["unit_price"])
    return max(gross - Decimal(line.get("discount", "0")), Decimal(0)).quantize(_MONEY)


@functools.cache
def _run_end() -> dt.datetime:
    """The time the generated checkouts end at: an hour before the run began, the same for
    every phase (so the small and the large population get the same checkout times)."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)


def make_workload(
    population: int,
    checkouts: int,
    *,
    options: BenchOptions,
    tag: str,
    first_card: int = 1,
    active: int | None = None,
    burst: int | None = None,
) -> Workload:
    """Deterministic traffic: every customer signs up, then `checkouts` over random customers.

    The checkouts go to `active` customers (all by default), spread evenly over the
    population's index range; an active customer's consent, e-mail address and favourite
    products, and every checkout's basket, depend only on its position among the active ones,
    so two populations with the same `active` get the same work. The first `burst` checkouts
    (all by default) are spread evenly over `options.days` days, the rest over the last
    `_TAIL_DAYS` days before the run; each keyed by card so that one customer's checkouts stay
    in order (as a till keyed by card would send them).
    """
    active = min(active or population, population)
    stride = population // active
    burst = checkouts if burst is None else min(burst, checkouts)
    rng = random.Random(f"{options.seed}-{tag}")  # noqa: S311 - simulated traffic
    shape = random.Random(f"{options.seed}-active-{active}")  # noqa: S311 - simulated traffic
    end = _run_end()
    tail_start = end - dt.timedelta(days=_TAIL_DAYS)
    start = tail_start - dt.timedelta(days=options.days)
    signup_at = (start - dt.timedelta(days=1)).isoformat()
    cards = [card_number(first_card + i) for i in range(population)]
    reachable: list[bool] = []
    favourites: list[list[int]] = []
    signups: list[RawMessage] = []
    for index, card in enumerate(cards):
        source = shape if index % stride == 0 and index // stride < active else rng
        consent = source.random() < options.consent_share
        has_email = source.random() < options.email_share
        reachable.append(consent and has_email)
        if source is shape:
            favourites.append(shape.sample(range(len(CATALOG)), 3))
        doc: dict[str, Any] = {
            "event_id": f"bench-{tag}-signup-{index}",
            "type": "signup",
            "occurred_at": signup_at,
            "card_number": card,
            "first_name": "Bench",
            "birth_date": "1980-01-01",
            "marketing_consent": consent,
        }
        if has_email:
            doc["email"] = f"bench{index}@example.com"
        signups.append(RawMessage(CUSTOMERS_RAW, card.encode(), orjson.dumps(doc), start))
    generated: list[Checkout] = []
    for serial in range(checkouts):
        chosen = shape.randrange(active)
        customer = chosen * stride
        if serial < burst:
            offset = (tail_start - start).total_seconds() * serial / max(1, burst)
            at = start + dt.timedelta(seconds=int(offset))
        else:
            offset = (end - tail_start).total_seconds() * (serial - burst) / (checkouts - burst)
            at = tail_start + dt.timedelta(seconds=int(offset))
        lines = basket(shape, favourites[chosen], spell=False)
        event_id = f"bench-{tag}-chk-{serial}"
        doc = {
            "event_id": event_id,
            "store_id": f"S{shape.randrange(1, 21):03d}",
            "occurred_at": at.isoformat(),
            "card_number": cards[customer],
            "currency": "EUR",
            "lines": lines,
        }
        message = RawMessage(CHECKOUTS_RAW, cards[customer].encode(), orjson.dumps(doc), at)
        skus = frozenset(line["sku"] for line in lines)
        total = sum((_amount(line) for line in lines), Decimal("0.00"))
        generated.append(Checkout(event_id, customer, at, skus, total, message))
    workload = Workload(population, signups, generated, reachable)
    _reference(workload)
    return workload


def _reference(workload: Workload) -> None:
    """Expected profile totals and frequent-item offers, from the rules as the contract states
    them (3 checkouts of a SKU in 30 calendar days, both ends included; 30-day cooldown per SKU;
    at most 3 offers in any 7 days), computed independently of the services' code."""
    history: dict[int, list[tuple[dt.datetime, frozenset[str]]]] = defaultdict(list)
    issued: dict[int, list[tuple[str, dt.date]]] = defaultdict(list)
    for checkout in workload.checkouts:
        who = checkout.customer
        workload.visits[who] = workload.visits.get(who, 0) + 1
        workload.spend[who] = workload.spend.get(who, Decimal(0)) + checkout.total
        # calendar days in the services' time zone (UTC here), both ends included
        cutoff = checkout.at.date() - _HISTORY
        kept = [entry for entry in history[who] if entry[0].date() >= cutoff]
        kept.append((checkout.at, checkout.skus))
        history[who] = kept
        if not workload.reachable[who]:
            continue
        day = checkout.at.date()
        for sku in sorted(checkout.skus):
            if sum(1 for _, skus in kept if sku in skus) < 3:
                continue
            mine = issued[who]
            if any(s == sku and abs((day - d).days) < 30 for s, d in mine):
                continue
            if _over_cap(day, [d for _, d in mine]):
                continue
            mine.append((sku, day))
            workload.offers.add((checkout.event_id, sku))


def _over_cap(day: dt.date, days: list[dt.date], most: int = 3, window: int = 7) -> bool:
    for back in range(window):
        first = day - dt.timedelta(days=back)
        last = first + dt.timedelta(days=window - 1)
        if sum(1 for d in days if first <= d <= last) >= most:
            return True
    return False


# ---------------------------------------------------------------- watching the output


Identify = Callable[[str, bytes | None], Iterable[str]]


class OutputWatch:
    """Reads topics from their current end and notes when each identified record first arrives."""

    def __init__(self, settings: KafkaSettings, topics: Sequence[str], identify: Identify) -> None:
        self._settings = settings
        self._topics = topics
        self._identify = identify
        self.arrivals: dict[str, float] = {}
        self._missing: set[str] = set()
        self._complete = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=require_bootstrap(self._settings),
            enable_auto_commit=False,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            **client_options(self._settings),
        )
        await consumer.start()
        partitions = [
            TopicPartition(topic, p)
            for topic in self._topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:  # resolve the positions now, before anything is published
            await consumer.position(tp)
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name="output-watch")

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=50, max_records=20_000)
            now = time.monotonic()
            for records in batches.values():
                for record in records:
                    for ident in self._identify(record.topic, record.value):
                        if ident not in self.arrivals:
                            self.arrivals[ident] = now
                            self._missing.discard(ident)
            if not self._missing:
                self._complete.set()

    async def wait_for(
        self, idents: Collection[str], within: float, stall: float = 20.0, start: float = 90.0
    ) -> tuple[float, set[str]]:
        """Wait until every ident has arrived, for at most `within` seconds, at most `start`
        seconds for the first (a consumer group rejoining after a restart waits out the old
        member's session) and at most `stall` seconds without progress after it; (time the last
        one arrived, the idents still missing)."""
        self._missing = {i for i in idents if i not in self.arrivals}
        self._complete.clear()
        deadline = time.monotonic() + within
        total = len(self._missing)
        while self._missing and time.monotonic() < deadline:
            before = len(self._missing)
            patience = start if before == total else stall
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._complete.wait(), min(patience, within))
            if len(self._missing) == before:
                break
        arrived = [self.arrivals[i] for i in idents if i in self.arrivals]
        return max(arrived, default=time.monotonic()), set(self._missing)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


async def _arrived(watch: OutputWatch, idents: Collection[str], within: float) -> float:
    """When the last of `idents` arrived; RuntimeError when some never did."""
    done, missing = await watch.wait_for(idents, within)
    if missing:
        raise RuntimeError(f"{len(missing)} of {len(idents)} messages never arrived")
    return done


def _event_id(_: str, value: bytes | None) -> Iterable[str]:
    if value:
        event_id = orjson.loads(value).get("event_id")
        if isinstance(event_id, str):
            yield event_id


class _PipelineOutputs:
    """Identities on `crm.profiles.changed` (`p:<checkout>`) and `crm.offers` (`o:<checkout>:<sku>`)."""

    def __init__(self) -> None:
        self.checkout_of: dict[tuple[str, dt.datetime], str] = {}
        """(customer id, checkout time) -> checkout event id: an offer's trigger."""
        self.issued: list[tuple[str, str | None]] = []
        """(customer id, SKU) of every offer_issued seen."""

    def __call__(self, topic: str, value: bytes | None) -> Iterable[str]:
        if not value:
            return
        doc = orjson.loads(value)
        if topic == PROFILES_CHANGED:
            if doc.get("cause_type") == "purchase_recorded":
                yield f"p:{doc['cause_event_id']}"
        elif doc.get("type") == "offer_issued":
            at = dt.datetime.fromisoformat(doc["issued_at"])
            checkout = self.checkout_of.get((doc["customer_id"], at))
            yield f"o:{checkout}:{doc.get('sku')}"


# ---------------------------------------------------------------- infrastructure


@contextlib.asynccontextmanager
async def _kafka(folder: Path, name: str) -> AsyncIterator[KafkaSettings]:
    """A fresh embedded broker, or the configured Kafka (`CRM_KAFKA_BOOTSTRAP`)."""
    configured = KafkaSettings()
    if configured.kafka_bootstrap:
        await ensure_topics(configured, (*TOPIC_SPECS, *BENCH_TOPICS))
        yield configured
        return
    with EmbeddedKafka(log_file=folder / f"broker-{name}.log") as broker:
        settings = KafkaSettings(kafka_bootstrap=broker.bootstrap)
        await ensure_topics(settings, (*TOPIC_SPECS, *BENCH_TOPICS))
        yield settings


@contextlib.asynccontextmanager
async def _store(options: BenchOptions, folder: Path) -> AsyncIterator[str]:
    """The store URL of one phase: SQLite files in its folder, or a fresh embedded
    MongoDB-wire test server with its data there."""
    if options.store == "sqlite":
        yield f"sqlite:///{folder / 'store'}"
        return
    if not secantus_available():
        raise RuntimeError(SECANTUS_MISSING)
    with EmbeddedMongo(folder / "mongo", log_file=folder / "mongo.log") as server:
        yield server.url


@functools.cache
def _run_keys() -> dict[str, str]:
    """The secret keys of this run, new and random (`crm run` refuses the development ones);
    the same for every phase, so the reference computes the customer ids the services do."""
    return fresh_keys()


def _service_env(kafka: KafkaSettings, folder: Path, store_url: str) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    rules = folder / "rules.toml"
    rules.write_text(RULES, encoding="utf-8")
    env = {
        **os.environ,
        "CRM_KAFKA_BOOTSTRAP": require_bootstrap(kafka),
        "CRM_STORE_URL": store_url,
        "CRM_OUTBOX_DIR": str(folder / "outbox"),
        "CRM_CREATE_TOPICS": "false",
        "CRM_LOG_FORMAT": "json",
        "CRM_QUIET_HOURS": "off",
        "CRM_HTTP_PORT": "0",
        "CRM_TIMEZONE": "UTC",
        # Static membership, as in the manifests: ingest restarted by a burst rejoins at once
        "CRM_KAFKA_INSTANCE_ID": "crm-bench-0",
        "CRM_RULES_FILE": str(rules),
        "CRM_API_TOKENS": f"till:{hashlib.sha256(TILL_TOKEN.encode()).hexdigest()}",
        # One till token stands for every lane of the run: a limit (still checked) above its pace
        "CRM_API_RATE_LIMIT": "100000",
        **_run_keys(),
    }
    for name in ("CRM_SMTP_HOST", "CRM_STORE_TIMEZONES"):
        env.pop(name, None)
    return env


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident memory (VmHWM) of a live process in MB; None where /proc has no answer."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _rate(count: int, started: float, finished: float) -> float:
    return round(count / max(finished - started, 1e-6), 1)


def _percentile(values: Sequence[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


async def _burst(kafka: KafkaSettings, messages: Sequence[RawMessage]) -> tuple[float, float]:
    """Publish as fast as the producer goes; (start, end of the last acknowledgement)."""
    producer = await open_producer(kafka)
    try:
        started = time.monotonic()
        await publish(producer, messages)
        return started, time.monotonic()
    finally:
        await producer.stop()


# ---------------------------------------------------------------- phases


def _steady_rate(times: Iterable[float], started: float) -> float:
    """Outputs per second from the first output to the last: those after the first arrival
    over the time between it and the last (the consumers' start and group join excluded).
    When every output came at once (a workload smaller than one fetch), all of them over the
    time since `started`, when the consumers were started."""
    arrivals = sorted(times)
    if not arrivals:
        return 0.0
    first = arrivals[0]
    if arrivals[-1] == first:
        return _rate(len(arrivals), started, first)
    after = sum(1 for t in arrivals if t > first)
    return round(after / (arrivals[-1] - first), 1)


def _start_passthrough(
    env: dict[str, str], log_file: Path, source: str, sink: str, group: str
) -> subprocess.Popen[bytes]:
    """One pass-through as a process of its own, like a service."""
    with log_file.open("ab") as log:
        return subprocess.Popen(  # noqa: S603 - our own module, our own topic names
            [sys.executable, "-m", "crm.bench", "passthrough", source, sink, group],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def _pass_through(
    kafka: KafkaSettings,
    env: dict[str, str],
    folder: Path,
    hops: Sequence[tuple[str, str, str]],
    idents: Collection[str],
    within: float,
) -> tuple[float, dict[str, float | None]]:
    """Start the pass-throughs `hops` (source, sink, group) on a filled source; the steady rate
    at the last sink and each hop's peak RSS."""
    watch = OutputWatch(kafka, [hops[-1][1]], _event_id)
    await watch.start()
    started = time.monotonic()
    copiers = [
        _start_passthrough(env, folder / f"passthrough-{group}.log", source, sink, group)
        for source, sink, group in hops
    ]
    try:
        await _arrived(watch, idents, within)
        rss = {
            group: peak_rss_mb(copier.pid)
            for (_, _, group), copier in zip(hops, copiers, strict=True)
        }
    finally:
        await watch.stop()
        for copier in copiers:
            copier.terminate()
        for copier in copiers:
            copier.wait(timeout=30)
    return _steady_rate((watch.arrivals[i] for i in idents), started), rss


async def _transport_and_ingest(
    options: BenchOptions, folder: Path, result: dict[str, Any], console: Console
) -> None:
    """The pass-throughs (one hop, three chained) and ingest alone, on one broker, on the same
    raw checkouts; each input filled before its consumers start."""
    work = make_workload(2_000, options.checkouts, options=options, tag="ingest", first_card=1)
    warm = make_workload(200, 200, options=options, tag="ingest-warm", first_card=900_000_000)
    ids = [c.event_id for c in work.checkouts]
    async with _kafka(folder, "ingest") as kafka, _store(options, folder / "ingest") as store_url:
        env = _service_env(kafka, folder / "ingest", store_url)
        copies = [
            RawMessage(BENCH_SOURCE, c.message.key, c.message.value, c.at) for c in work.checkouts
        ]
        started, sent = await _burst(kafka, copies)
        result["publish_rate"] = _rate(len(copies), started, sent)
        result["baseline_rate"], rss = await _pass_through(
            kafka,
            env,
            folder,
            [(BENCH_SOURCE, BENCH_SINK, "crm-bench-baseline")],
            ids,
            options.timeout,
        )
        result["rss_mb_passthrough"] = rss["crm-bench-baseline"]
        console.print(f"baseline (one hop): {result['baseline_rate']:,.0f} msg/s")
        chain = [(CHAIN[n], CHAIN[n + 1], f"crm-bench-chain-{n + 1}") for n in range(3)]
        result["chain_rate"], _ = await _pass_through(
            kafka, env, folder, chain, ids, options.timeout
        )
        console.print(f"chain (three hops): {result['chain_rate']:,.0f} msg/s")

        services = ServiceProcesses(env, folder / "ingest" / "logs", names=("ingest",))
        watch = OutputWatch(kafka, [EVENTS], _event_id)
        await watch.start()
        try:
            services.start()
            await _burst(kafka, [*warm.signups, *work.signups])
            await _burst(kafka, [c.message for c in warm.checkouts])
            signed_up = [f"customer:bench-ingest-signup-{i}" for i in range(work.population)]
            await _arrived(
                watch, [*signed_up, *(c.event_id for c in warm.checkouts)], options.timeout
            )
            services.stop()  # filled while ingest is down: its start is not in the figure
            await _burst(kafka, [c.message for c in work.checkouts])
            started = time.monotonic()
            services.start()
            await _arrived(watch, ids, options.timeout)
            result["ingest_rate"] = _steady_rate((watch.arrivals[i] for i in ids), started)
            result["rss_mb_ingest_alone"] = peak_rss_mb(services.processes["ingest"].pid)
        finally:
            await watch.stop()
            services.stop()
    result["ingest_ratio"] = round(result["ingest_rate"] / max(result["baseline_rate"], 1e-6), 3)
    console.print(f"ingest: {result['ingest_rate']:,.0f} msg/s")


@dataclass(slots=True)
class PipelineRun:
    """What one pipeline run measured and found."""

    population: int
    rate: float = 0.0
    mismatches: list[str] = field(default_factory=list)
    capacity_rate: float = 0.0
    capacity_verified: bool = False
    steps: list[dict[str, float]] = field(default_factory=list)
    """The capacity search's paced runs: rate, checkouts, first and last fifth's median latency."""
    latency_rate: float = 0.0
    profile_latency_ms: list[float] = field(default_factory=list)
    offer_latency_ms: list[float] = field(default_factory=list)
    rss_mb: dict[str, float | None] = field(default_factory=dict)
    store_mb: float = 0.0
    """Every store of the run (SQLite files, or the test server's data folder)."""
    profiles_store_mb: float | None = None
    """The profiles store alone (SQLite; None on the MongoDB-wire server, which holds all)."""
    offers: int = 0
    """Offers the burst must cause (the same work at both populations)."""
    till: TillRun | None = None


@dataclass(slots=True)
class TillRun:
    """What the till phase measured: latency per request and the answers by reason."""

    latency_ms: list[float] = field(default_factory=list)
    answers: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    rate: float = 0.0


def _folder_mb(folder: Path) -> float:
    """Size of the files under a folder, in MB."""
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return round(size / 1e6, 1)


class _Pipeline:
    """One pipeline run's services, broker, watches and the checkouts sent so far."""

    def __init__(
        self,
        options: BenchOptions,
        work: Workload,
        kafka: KafkaSettings,
        services: ServiceProcesses,
        watch: OutputWatch,
        drain: PipelineWatch,
    ) -> None:
        self.options = options
        self.work = work
        self.kafka = kafka
        self.services = services
        self.watch = watch
        self.drain = drain
        self.sent = 0
        self._expected: Workload | None = None

    def expected(self) -> Workload:
        """The expected results of the checkouts sent so far."""
        if self._expected is None or len(self._expected.checkouts) != self.sent:
            self._expected = self.work.sent(self.sent)
        return self._expected

    def wanted(self, checkouts: Sequence[Checkout]) -> dict[str, list[str]]:
        """Per checkout, the outputs it must cause: its profile change and its offers."""
        ids = {c.event_id: [f"p:{c.event_id}"] for c in checkouts}
        for event_id, sku in self.expected().offers:
            if event_id in ids:
                ids[event_id].append(f"o:{event_id}:{sku}")
        return ids

    def take(self, count: int) -> list[Checkout]:
        """The next `count` checkouts of the workload (RuntimeError when it has too few)."""
        if self.sent + count > len(self.work.checkouts):
            raise RuntimeError("the workload has too few checkouts for this run")
        taken = self.work.checkouts[self.sent : self.sent + count]
        self.sent += count
        return taken

    async def outputs(self, checkouts: Sequence[Checkout]) -> tuple[dict[str, float], list[str]]:
        """Wait for every output of `checkouts`: each checkout's completion time (its last
        output) and the outputs that never came."""
        wanted = self.wanted(checkouts)
        idents = [i for outputs in wanted.values() for i in outputs]
        _, missing = await self.watch.wait_for(idents, self.options.timeout)
        arrivals = self.watch.arrivals
        done = {
            event_id: max(arrivals[i] for i in outputs)
            for event_id, outputs in wanted.items()
            if all(i in arrivals for i in outputs)
        }
        return done, [f"never seen: {ident}" for ident in sorted(missing)]

    async def drained(self, within: float | None = None) -> None:
        if not await self.drain.drained(within or self.options.timeout):
            raise RuntimeError(f"pipeline not drained: {await self.drain.lag()}")

    async def burst(self, count: int, run: PipelineRun) -> None:
        """Fill the raw topic while ingest is down, start it: the steady rate to the last
        output (profile changes and offers)."""
        checkouts = self.take(count)
        self.services.stop(names=("ingest",))
        await _burst(self.kafka, [c.message for c in checkouts])
        started = time.monotonic()
        self.services.start(names=("ingest",))
        done, missing = await self.outputs(checkouts)
        run.mismatches += missing
        run.rate = _steady_rate(done.values(), started)
        run.offers = len(self.expected().offers)
        await self.drained()

    async def paced(self, rate: float, count: int) -> tuple[list[float], list[float], list[str]]:
        """`count` checkouts at `rate`/s: per checkout its profile change's latency (ms, in
        sending order), every offer's latency, and the outputs that never came."""
        checkouts = self.take(count)
        sent = await _paced(self.kafka, [c.message for c in checkouts], rate)
        _, missing = await self.outputs(checkouts)
        arrivals = self.watch.arrivals
        profile = [
            (arrivals[f"p:{c.event_id}"] - sent[c.event_id]) * 1000
            for c in checkouts
            if f"p:{c.event_id}" in arrivals
        ]
        offer = [
            (arrivals[ident] - sent[event_id]) * 1000
            for event_id, outputs in self.wanted(checkouts).items()
            for ident in outputs[1:]
            if ident in arrivals
        ]
        await self.drained()
        return profile, offer, missing

    async def capacity(self, run: PipelineRun, console: Console) -> None:
        """Paced runs from the burst's rate down, 30 % at a time, until one whose backlog does
        not grow: the highest rate this pipeline sustains."""
        rate = max(1.0, round(run.rate))
        for _ in range(CAPACITY_STEPS):
            count = max(
                50, min(self.options.step_checkouts, round(rate * self.options.step_seconds))
            )
            profile, _, missing = await self.paced(rate, count)
            run.mismatches += missing
            fifth = max(1, len(profile) // 5)
            first, last = _percentile(profile[:fifth], 0.5), _percentile(profile[-fifth:], 0.5)
            run.steps.append(
                {
                    "rate": rate,
                    "checkouts": count,
                    "first_ms": round(first, 1),
                    "last_ms": round(last, 1),
                }
            )
            console.print(
                f"paced at {rate:,.0f}/s: median latency {first:,.0f} ms -> {last:,.0f} ms"
            )
            if last - first <= GROWING_BACKLOG_S * 1000:
                run.capacity_rate, run.capacity_verified = rate, True
                return
            rate = round(rate * CAPACITY_STEP)
        run.capacity_rate = rate


async def _pipeline(
    options: BenchOptions, folder: Path, population: int, *, measure: bool, console: Console
) -> PipelineRun:
    """Sign up the population (not timed), then a burst of checkouts through the pipeline; with
    `measure`, then the capacity search, latency at half the capacity and the till."""
    small = options.populations[0]
    pool = options.pool if measure else 0
    tag = f"p{population}"
    work = make_workload(
        population,
        options.checkouts + pool,
        options=options,
        tag=tag,
        active=small,
        burst=options.checkouts,
    )
    key = _run_keys()[CARD_KEY].encode()
    from shared.privacy import card_id, customer_id_for_card

    customer_ids = [
        customer_id_for_card(card_id(card_number(1 + i), key)) for i in range(population)
    ]
    outputs = _PipelineOutputs()
    for checkout in work.checkouts:
        outputs.checkout_of[(customer_ids[checkout.customer], checkout.at)] = checkout.event_id
    here = folder / tag
    run = PipelineRun(population)
    async with _kafka(folder, tag) as kafka, _store(options, here) as store_url:
        services = ServiceProcesses(
            _service_env(kafka, here, store_url), here / "logs", PIPELINE_SERVICES
        )
        services.start()
        watch = OutputWatch(kafka, [PROFILES_CHANGED, OFFERS], outputs)
        drain = PipelineWatch(kafka)
        await drain.start()
        pipeline = _Pipeline(options, work, kafka, services, watch, drain)
        try:
            started_at = time.monotonic()
            await _burst(kafka, work.signups)
            # Sign-ups go through the whole pipeline (about 700/s here): a million take minutes
            await pipeline.drained(max(options.timeout, population / SIGNUPS_PER_S))
            console.print(
                f"population {population:,}: signed up in {time.monotonic() - started_at:.1f}s"
            )
            services.check_alive()
            await watch.start()
            await pipeline.burst(options.checkouts, run)
            console.print(f"pipeline at {population:,}: {run.rate:,.0f} checkouts/s")
            if measure:
                await pipeline.capacity(run, console)
                run.latency_rate = max(1.0, round(run.capacity_rate / 2))
                profile, offer, missing = await pipeline.paced(
                    run.latency_rate, options.latency_checkouts
                )
                run.profile_latency_ms, run.offer_latency_ms = profile, offer
                run.mismatches += missing
            expected = pipeline.expected()
            run.mismatches += await _check(kafka, store_url, expected, customer_ids)
            if measure and options.till_requests:
                cards = {cid: card_number(1 + i) for i, cid in enumerate(customer_ids)}
                run.till = await _till(options, kafka, services.ports["offers"], cards)
                run.mismatches += [
                    f"till answered {reason} {count} times"
                    for reason, count in run.till.answers.items()
                    if reason not in TILL_EXPECTED
                ]
                console.print(f"till: {run.till.rate:,.0f} requests/s answered")
            for name, process in services.processes.items():
                run.rss_mb[name] = peak_rss_mb(process.pid)
        finally:
            await watch.stop()
            await drain.stop()
            services.stop()
        run.store_mb = _folder_mb(here / ("mongo" if options.store == "mongodb" else "store"))
        if options.store == "sqlite":
            files = (here / "store").glob("profiles.sqlite3*")  # with its WAL, if any
            run.profiles_store_mb = round(sum(f.stat().st_size for f in files) / 1e6, 1)
    return run


TILL_EXPECTED = frozenset({"valid", "expired", "already_redeemed", "applicable"})
"""Answers the till phase may get: its codes are real, its cards their owners', its baskets
hold the product; a coupon may have run out, or be held by another lane's reservation."""


async def _till(
    options: BenchOptions, kafka: KafkaSettings, port: int, cards: dict[str, str]
) -> TillRun:
    """The till API at `options.till_rate` requests/s, open loop (each request goes at its
    time, whether the last one was answered or not): per request, its latency."""
    import httpx

    issued = [
        doc
        for record in await read_topic(kafka, OFFERS, within=60.0)
        if (doc := orjson.loads(record.value or b"{}")).get("type") == "offer_issued"
        and doc.get("customer_id") in cards
    ]
    run = TillRun()
    if not issued:
        return run
    rng = random.Random(f"{options.seed}-till")  # noqa: S311 - simulated traffic
    catalog = {sku: (name, category, price) for sku, name, category, price, _ in CATALOG}

    def line(sku: str) -> dict[str, Any]:
        name, category, price = catalog.get(sku, ("Item", "misc", "1.00"))
        return {"sku": sku, "name": name, "category": category, "quantity": 1, "unit_price": price}

    def request(serial: int) -> tuple[str, dict[str, Any]]:
        offer = issued[rng.randrange(len(issued))]
        lines = [line(sku) for sku, *_ in rng.sample(CATALOG, 4)]
        if offer.get("sku"):
            lines.append(line(offer["sku"]))
        body: dict[str, Any] = {
            "card_number": cards[offer["customer_id"]],
            "store_id": "S001",
            "lines": lines,
        }
        if serial % 2:
            return "/api/coupons/applicable", body
        body |= {"code": offer["coupon_code"], "lane": f"lane-{serial % 8}"}
        body["reserve"] = serial % 10 == 0
        return "/api/coupons/validate", body

    async def one(client: httpx.AsyncClient, at: float, path: str, body: dict[str, Any]) -> None:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        sent = time.monotonic()
        response = await client.post(path, json=body)
        run.latency_ms.append((time.monotonic() - sent) * 1000)
        if response.status_code != 200:
            run.answers[f"http_{response.status_code}"] += 1
        elif path.endswith("applicable"):
            run.answers["applicable"] += 1
        else:
            run.answers[response.json()["reason"] or "valid"] += 1

    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    headers = {"Authorization": f"Bearer {TILL_TOKEN}"}
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits) as client:
        for n in range(20):  # warm-up: connections open, store pages in the cache
            path, body = request(n)
            await client.post(path, json=body)
        started = time.monotonic()
        plan = [request(n) for n in range(options.till_requests)]
        await asyncio.gather(
            *(
                one(client, started + n / options.till_rate, path, body)
                for n, (path, body) in enumerate(plan)
            )
        )
        run.rate = _rate(options.till_requests, started, time.monotonic())
    return run


async def _paced(
    kafka: KafkaSettings, messages: Sequence[RawMessage], rate: float
) -> dict[str, float]:
    """Publish at `rate` messages/s; the send time of each checkout's event id."""
    producer = await open_producer(kafka)
    sent: dict[str, float] = {}
    futures = []
    try:
        started = time.monotonic()
        for count, message in enumerate(messages, 1):
            sent[orjson.loads(message.value)["event_id"]] = time.monotonic()
            futures.append(await producer.send(message.topic, message.value, key=message.key))
            ahead = count / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent


async def _check(
    kafka: KafkaSettings, store_url: str, work: Workload, customer_ids: Sequence[str]
) -> list[str]:
    """Every profile's visits and total spend, and every offer, against the reference."""
    from services.profiles.store import open_repository
    from shared.settings import StoreSettings

    problems: list[str] = []
    store = StoreSettings(store_url=store_url)
    async with open_repository(store) as repository:
        for start in range(0, len(customer_ids), 1000):
            chunk = customer_ids[start : start + 1000]
            stored = await repository.get_many(chunk)
            for offset, customer_id in enumerate(chunk):
                index = start + offset
                profile = stored.get(customer_id)
                visits = profile.visits if profile else 0
                spend = profile.total_spend if profile else Decimal(0)
                expected_visits = work.visits.get(index, 0)
                expected_spend = work.spend.get(index, Decimal(0))
                if profile is None or visits != expected_visits or spend != expected_spend:
                    problems.append(
                        f"customer {index}: {visits} visits / {spend} spent, "
                        f"expected {expected_visits} / {expected_spend}"
                    )
    mine = set(customer_ids)
    issued: dict[str, int] = defaultdict(int)
    for record in await read_topic(kafka, OFFERS, within=60.0):
        doc = orjson.loads(record.value) if record.value else {}
        if doc.get("type") == "offer_issued" and doc.get("customer_id") in mine:
            issued[doc["customer_id"]] += 1
    expected: dict[str, int] = defaultdict(int)
    for event_id, _ in work.offers:
        checkout = work.checkouts[int(event_id.rsplit("-", 1)[1])]
        expected[customer_ids[checkout.customer]] += 1
    for customer_id in sorted(set(issued) | set(expected)):
        if issued[customer_id] != expected[customer_id]:
            problems.append(
                f"customer {customer_id}: {issued[customer_id]} offers, "
                f"expected {expected[customer_id]}"
            )
    return problems


# ---------------------------------------------------------------- JSON decoding


def json_decoding(options: BenchOptions, samples: int = 2_000) -> dict[str, float]:
    """Microseconds per message to decode our raw checkouts and normalized events, per method."""
    from services.ingest.domain import decode
    from shared.events import NORMALIZED_EVENT
    from shared.raw import RawCheckout

    work = make_workload(200, samples, options=options, tag="json")
    raw = [c.message.value for c in work.checkouts]
    result: dict[str, float] = {}

    def measure(name: str, function: Callable[[bytes], object], values: Sequence[bytes]) -> None:
        started = time.perf_counter()
        for value in values:
            function(value)
        result[name] = round((time.perf_counter() - started) / len(values) * 1e6, 1)

    measure("raw_ingest_decode_us", lambda v: decode(CHECKOUTS_RAW, v), raw)
    measure("raw_pydantic_json_us", RawCheckout.model_validate_json, raw)
    measure(
        "raw_orjson_then_pydantic_us", lambda v: RawCheckout.model_validate(orjson.loads(v)), raw
    )
    from services.ingest.domain import normalize_checkout

    zone = ZoneInfo("UTC")
    events = [
        normalize_checkout(
            RawCheckout.model_validate_json(v), key=b"k", zone=zone, resolve=lambda c: c
        )
        .model_dump_json()
        .encode()
        for v in raw
    ]
    measure("event_pydantic_json_us", NORMALIZED_EVENT.validate_json, events)
    measure(
        "event_orjson_then_pydantic_us",
        lambda v: NORMALIZED_EVENT.validate_python(orjson.loads(v)),
        events,
    )
    measure("event_orjson_only_us", orjson.loads, events)
    return result


# ---------------------------------------------------------------- the run


async def run_bench(options: BenchOptions, console: Console) -> dict[str, Any]:
    """Every phase in turn; the result as one JSON-able dict (`check_passed` says if correct)."""
    began = time.monotonic()
    result: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "checkouts": options.checkouts,
        "populations": list(options.populations),
        "store": options.store,
    }
    with contextlib.ExitStack() as stack:
        if options.keep_dir:
            folder = options.keep_dir
            folder.mkdir(parents=True, exist_ok=True)
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="crm-bench-")))
        await _transport_and_ingest(options, folder, result, console)
        small_population, large_population = options.populations
        small = await _pipeline(options, folder, small_population, measure=True, console=console)
        large = await _pipeline(options, folder, large_population, measure=False, console=console)
    result["pipeline_rate"] = small.rate
    result["pipeline_ratio"] = round(small.rate / max(result["chain_rate"], 1e-6), 3)
    result["pipeline_rate_large"] = large.rate
    result["growth_ratio"] = round(large.rate / max(small.rate, 1e-6), 3)
    result["capacity_rate"] = small.capacity_rate
    result["capacity_verified"] = small.capacity_verified
    result["capacity_steps"] = small.steps
    result["latency_rate"] = small.latency_rate
    for name, values in (("", small.offer_latency_ms), ("profile_", small.profile_latency_ms)):
        for label, share in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
            result[f"{name}{label}_ms"] = round(_percentile(values, share), 1)
    result["latency_samples"] = {
        "profiles": len(small.profile_latency_ms),
        "offers": len(small.offer_latency_ms),
    }
    till = small.till or TillRun()
    for label, share in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
        result[f"till_{label}_ms"] = round(_percentile(till.latency_ms, share), 1)
    result["till_rate"] = options.till_rate
    result["till_answered_rate"] = till.rate
    result["till_answers"] = dict(sorted(till.answers.items()))
    result["offers_expected"] = {
        str(small.population): small.offers,
        str(large.population): large.offers,
    }
    result["rss_mb"] = large.rss_mb
    """Each service's peak RSS in the run against the large population."""
    result["rss_mb_small"] = small.rss_mb
    result["store_mb"] = {
        str(small.population): small.store_mb,
        str(large.population): large.store_mb,
    }
    result["profiles_store_mb"] = {
        str(small.population): small.profiles_store_mb,
        str(large.population): large.profiles_store_mb,
    }
    mismatches = small.mismatches + large.mismatches
    result["check_passed"] = not mismatches
    result["mismatches"] = mismatches[:20]
    result["mismatch_count"] = len(mismatches)
    result["json_decode"] = json_decoding(options)
    result["targets"] = {
        "ingest_ratio": result["ingest_ratio"] >= TARGETS["ingest_ratio"],
        "pipeline_ratio": result["pipeline_ratio"] >= TARGETS["pipeline_ratio"],
        "p99_ms": result["p99_ms"] <= TARGETS["p99_ms"],
        "growth_ratio": result["growth_ratio"] >= TARGETS["growth_ratio"],
        "till_p99_ms": result["till_p99_ms"] <= TARGETS["till_p99_ms"],
    }
    result["duration_s"] = round(time.monotonic() - began, 1)
    return result


def result_table(result: dict[str, Any]) -> Table:
    """The figures of a run as a rich table."""
    table = Table(title=f"crm bench ({result['store']})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    met = result["targets"]

    def mark(name: str) -> str:
        return "[green]met[/green]" if met[name] else "[red]missed[/red]"

    small, large = result["populations"]
    table.add_row("publisher, filling the input (msg/s)", f"{result['publish_rate']:,.0f}", "")
    table.add_row("pass-through, one hop (msg/s)", f"{result['baseline_rate']:,.0f}", "")
    table.add_row("pass-through, three hops (msg/s)", f"{result['chain_rate']:,.0f}", "")
    table.add_row("ingest (msg/s)", f"{result['ingest_rate']:,.0f}", "")
    table.add_row(
        "ingest / one hop", f"{result['ingest_ratio']:.0%}", f">= 50% {mark('ingest_ratio')}"
    )
    table.add_row(
        f"pipeline at {small:,} customers (checkouts/s)", f"{result['pipeline_rate']:,.0f}", ""
    )
    table.add_row(
        "pipeline / three hops",
        f"{result['pipeline_ratio']:.0%}",
        f">= 50% {mark('pipeline_ratio')}",
    )
    verified = "" if result["capacity_verified"] else " (not verified)"
    table.add_row("sustainable rate (checkouts/s)", f"{result['capacity_rate']:,.0f}{verified}", "")
    rate = result["latency_rate"]
    table.add_row(
        f"checkout -> profile p50/p95/p99 at {rate:,.0f}/s (ms)",
        f"{result['profile_p50_ms']:.0f} / {result['profile_p95_ms']:.0f} / "
        f"{result['profile_p99_ms']:.0f}",
        "",
    )
    table.add_row(
        f"checkout -> offer p50/p95/p99 at {rate:,.0f}/s (ms)",
        f"{result['p50_ms']:.0f} / {result['p95_ms']:.0f} / {result['p99_ms']:.0f}",
        f"p99 <= 250 {mark('p99_ms')}",
    )
    table.add_row(
        f"pipeline at {large:,} customers (checkouts/s)",
        f"{result['pipeline_rate_large']:,.0f}",
        "",
    )
    table.add_row("growth ratio", f"{result['growth_ratio']:.2f}", f">= 0.8 {mark('growth_ratio')}")
    for population, mb in result["store_mb"].items():
        table.add_row(f"stores at {int(population):,} customers (MB)", f"{mb:,.0f}", "")
    for population, profiles_mb in result["profiles_store_mb"].items():
        if profiles_mb is not None:
            table.add_row(
                f"profiles store at {int(population):,} customers (MB)", f"{profiles_mb:,.0f}", ""
            )
    for name, mb in result["rss_mb"].items():
        table.add_row(f"peak RSS {name} at {large:,} customers (MB)", f"{mb or 0:.0f}", "")
    rate = result["till_rate"]
    table.add_row(
        f"till coupon API p50/p95/p99 at {rate:,.0f} req/s (ms)",
        f"{result['till_p50_ms']:.0f} / {result['till_p95_ms']:.0f} / {result['till_p99_ms']:.0f}",
        f"p99 <= 50 {mark('till_p99_ms')}",
    )
    for name, micros in result["json_decode"].items():
        table.add_row(f"JSON {name.removesuffix('_us')} (µs/msg)", f"{micros}", "")
    verdict = (
        "[green]passed[/green]"
        if result["check_passed"]
        else f"[red]FAILED ({result['mismatch_count']})[/red]"
    )
    table.add_row("self-check (profiles, offers)", verdict, "")
    table.add_row("duration (s)", f"{result['duration_s']:.0f}", "")
    return table


def bench_main(options: BenchOptions, *, as_json: bool) -> int:
    """Run, print a table (or one JSON object); 1 when the self-check failed."""
    console = Console(stderr=as_json)
    try:
        result = asyncio.run(run_bench(options, console))
    except KeyboardInterrupt:
        console.print("interrupted: services and broker stopped")
        return 130
    if as_json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    else:
        console.print(result_table(result))
        for problem in result["mismatches"]:
            console.print(f"[red]mismatch:[/red] {problem}")
    return 0 if result["check_passed"] else 1


# ---------------------------------------------------------------- the pass-throughs


async def passthrough(
    settings: KafkaSettings, stop: asyncio.Event, source: str, sink: str, group: str
) -> None:
    """Plain aiokafka: consume a batch, produce it unchanged (same partition), commit after the
    acknowledgements. No per-message waits; the producer lingers and batches like the services'."""
    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=require_bootstrap(settings),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        max_partition_fetch_bytes=2 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        **client_options(settings),
    )
    await consumer.start()
    producer = await open_producer(settings)
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=5_000)
            futures = [
                await producer.send(sink, record.value, key=record.key, partition=tp.partition)
                for tp, records in batches.items()
                for record in records
            ]
            if futures:
                await asyncio.gather(*futures)
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


def _passthrough_main(source: str, sink: str, group: str) -> None:
    import signal

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await passthrough(KafkaSettings(), stop, source, sink, group)

    asyncio.run(go())


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "passthrough":
        _passthrough_main(*sys.argv[2:5])
