"""`crm demo`: the whole pipeline on the embedded default, with generated store traffic.

Embedded Tansu broker, SQLite store in a data folder, the five services as separate `crm run`
processes, a few weeks of traffic published day by day (the clock ticks at each day's start),
then marketing creates a campaign through the API while everything runs, and shoppers swipe
today; then a summary read back from the topics, the stores and the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from crm.embedded import (
    SECANTUS_MISSING,
    EmbeddedKafka,
    EmbeddedMongo,
    free_port,
    secantus_available,
)
from crm.registry import SERVICES
from crm.simulation import RawMessage, SimulationConfig, by_day, card_number, generate
from crm.traffic import (
    PipelineWatch,
    count_types,
    open_producer,
    publish,
    read_topic,
    tick,
)
from services.reports.static import write_static_report
from shared.kafka import ensure_topics
from shared.keys import CARD_KEY, fresh_keys
from shared.privacy import card_id, customer_id_for_card
from shared.settings import KafkaSettings
from shared.topics import CHECKOUTS_RAW, DEADLETTER, DELIVERIES, EVENTS, OFFERS, RAW_TOPICS


@dataclass(frozen=True, slots=True)
class DemoOptions:
    data_dir: Path
    simulation: SimulationConfig
    drain_timeout: float = 120.0
    serve: bool = False
    port: int = 8080
    store: Literal["sqlite", "mongodb"] = "sqlite"
    """`mongodb`: the same demo on the PyMongo code path, against an embedded MongoDB-wire
    test server (SecantusDB) in the data folder."""


def demo_keys(seed: int) -> dict[str, str]:
    """The secret keys of this run (`crm run` refuses the development ones): new random keys,
    except the card key, which follows the seed. Customer ids derive from it, and so does the
    control group a campaign holds out: the same seed gives the same summary. The demo's cards
    are simulated, so a key anyone can derive from the seed protects nothing real."""
    keys = fresh_keys()
    keys[CARD_KEY] = hashlib.sha256(f"crm demo card key|{seed}".encode()).hexdigest()
    return keys


def demo_store_goals(config: SimulationConfig) -> dict[str, str]:
    """Monthly goals for the simulated stores (`CRM_STORE_GOALS`), near what their customers
    spend (about 550 and 9 visits a customer a month, shared by the stores), some above it and
    some below; and two teams (`CRM_STORE_TEAMS`): the first half of the stores and the rest."""
    stores = [f"S{n:03d}" for n in range(1, config.stores + 1)]
    goals = {
        store: {
            "revenue": str(
                int(round(config.customers * 550 * (0.9 + 0.1 * (n % 4)) / len(stores), -2))
            ),
            "visits": round(config.customers * 9 * (0.9 + 0.1 * (n % 4)) / len(stores)),
        }
        for n, store in enumerate(stores)
    }
    half = (len(stores) + 1) // 2
    teams = {"North": stores[:half], "South": stores[half:]} if len(stores) > 1 else {}
    return {
        "CRM_STORE_GOALS": orjson.dumps(goals).decode(),
        "CRM_STORE_TEAMS": orjson.dumps(teams).decode(),
    }


class DemoError(RuntimeError):
    """The demo cannot run here (a missing development extra), with what to do."""


class ServiceProcesses:
    """Services (all five by default) as `crm run <service>` child processes; logs in a folder."""

    def __init__(
        self,
        env: dict[str, str],
        log_dir: Path,
        names: tuple[str, ...] | None = None,
    ) -> None:
        self._env = env
        self._log_dir = log_dir
        self._names = names if names is not None else tuple(spec.name for spec in SERVICES)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}

    def start(self, names: Sequence[str] | None = None) -> None:
        """Start the services (`names`: only these, e.g. one stopped before)."""
        self._log_dir.mkdir(parents=True, exist_ok=True)
        for name in self._names if names is None else names:
            log = (self._log_dir / f"{name}.log").open("ab")
            port = int(self._env.get("CRM_HTTP_PORT", "0")) or free_port()
            self.ports[name] = port
            self.processes[name] = subprocess.Popen(  # noqa: S603 - our own entry point
                [sys.executable, "-m", "crm.cli", "run", name],
                env={**self._env, "CRM_HTTP_PORT": str(port)},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            log.close()

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(
                    f"service {name} exited with code {process.returncode}; "
                    f"see {self._log_dir / (name + '.log')}"
                )

    def stop(self, timeout: float = 30.0, names: Sequence[str] | None = None) -> None:
        """SIGTERM all (`names`: only these), wait for a graceful stop, SIGKILL what is left."""
        chosen = [p for n, p in self.processes.items() if names is None or n in names]
        for process in chosen:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in chosen:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _count_files(folder: Path, pattern: str) -> int:
    return sum(1 for _ in folder.glob(pattern)) if folder.exists() else 0


async def _drain(
    watch: PipelineWatch, services: ServiceProcesses, within: float, after: str
) -> None:
    """Wait until the pipeline is drained, failing at once when a service died."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        services.check_alive()
        if await watch.drained(2.0):
            return
    raise RuntimeError(f"pipeline not drained after {after}: {await watch.lag()}")


class CouponRedeemer:
    """Plays the shoppers who bring their coupons: reads `crm.offers` as marketing would and
    lists an open coupon's code at some of the customer's later checkouts (and, rarely, a code
    that does not exist), so the demo shows redemptions and rejections."""

    def __init__(
        self, kafka: KafkaSettings, *, seed: int, card_key: str, share: float = 0.4
    ) -> None:
        self._kafka = kafka
        self._rng = random.Random(seed)  # noqa: S311 - simulated shoppers, not secrets
        self._share = share
        self._key = card_key.encode()
        self._open: dict[str, dict[str, tuple[dt.date, str | None, str]]] = {}
        """customer -> open code -> (last valid day, the SKU a product coupon is for, offer id)."""
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._kafka.kafka_bootstrap, auto_offset_reset="earliest"
        )
        await self._consumer.start()
        partitions = [
            TopicPartition(OFFERS, p)
            for p in sorted(self._consumer.partitions_for_topic(OFFERS) or ())
        ]
        self._consumer.assign(partitions)
        await self._consumer.seek_to_beginning(*partitions)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def catch_up(self) -> None:
        """Read every offer event published so far: up to each partition's end (an empty
        fetch may come back before records that are there)."""
        consumer = self._consumer
        assert consumer is not None
        partitions = sorted(consumer.assignment(), key=lambda tp: tp.partition)
        ends = await consumer.end_offsets(partitions)

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in partitions])

        while await behind():
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    self._note(orjson.loads(record.value))

    def _note(self, event: dict[str, Any]) -> None:
        codes = self._open.setdefault(event["customer_id"], {})
        if event["type"] == "offer_issued":
            until = dt.date.fromisoformat(event["valid_until"])
            codes[event["coupon_code"]] = (
                until,
                event["sku"] if event.get("scope") == "sku" else None,
                event["offer_id"],
            )
        elif event["type"] in ("offer_redeemed", "offer_expired", "offer_revoked"):
            codes.pop(event["coupon_code"], None)

    def redeem(self, day: dt.date, batch: list[RawMessage]) -> list[RawMessage]:
        out = []
        for message in batch:
            if message.topic != CHECKOUTS_RAW or self._rng.random() > self._share:
                out.append(message)
                continue
            try:
                doc = orjson.loads(message.value)
            except orjson.JSONDecodeError:  # the simulator's broken messages stay broken
                doc = None
            card = doc.get("card_number") if isinstance(doc, dict) else None
            if not isinstance(doc, dict) or not isinstance(card, str):
                out.append(message)
                continue
            customer = customer_id_for_card(card_id(card, self._key))
            # A shopper brings a coupon that fits the basket: a basket coupon, or a product
            # coupon for something in it. Sorted by offer id: which coupons are open is what
            # matters, not the order they were read in nor their codes (the coupon key, and
            # with it every code, is new in each run; offer ids follow the events).
            basket = {str(line.get("sku", "")).strip().upper() for line in doc.get("lines", [])}
            open_codes = self._open.get(customer, {})
            usable = [
                code
                for offer_id, code in sorted(
                    (offer_id, code)
                    for code, (until, sku, offer_id) in open_codes.items()
                    if until >= day and (sku is None or sku in basket)
                )
            ]
            if self._rng.random() < 0.03:
                usable = ["ZZZZ-ZZZZ-ZZZZ"]  # a mistyped code: rejected as unknown
            if not usable:
                out.append(message)
                continue
            doc["coupons"] = [self._rng.choice(usable)]
            out.append(replace(message, value=orjson.dumps(doc)))
        return out


async def _profiles_count(store_url: str) -> int:
    from services.profiles.store import open_repository
    from shared.settings import StoreSettings

    async with open_repository(StoreSettings(store_url=store_url)) as repository:
        return await repository.count()


def _store(options: DemoOptions, data: Path, stack: contextlib.ExitStack) -> str:
    """The store URL of the demo: SQLite in the data folder, or an embedded MongoDB-wire server."""
    if options.store == "sqlite":
        return f"sqlite:///{data / 'store'}"
    if not secantus_available():
        raise DemoError(SECANTUS_MISSING)
    server = stack.enter_context(EmbeddedMongo(data / "mongo", log_file=data / "mongo.log"))
    return server.url


async def run_demo(options: DemoOptions, console: Console) -> int:
    data = options.data_dir.resolve()
    data.mkdir(parents=True, exist_ok=True)
    outbox = data / "outbox"
    console.print(f"[bold]crm demo[/bold]: data folder {data}")
    with contextlib.ExitStack() as stack:
        store_url = _store(options, data, stack)
        console.print(f"store: {options.store}")
        return await _run(options, console, data, store_url, outbox)
    return 0  # pragma: no cover - the stack never swallows


async def _run(
    options: DemoOptions, console: Console, data: Path, store_url: str, outbox: Path
) -> int:
    with EmbeddedKafka(log_file=data / "broker.log") as broker:
        kafka = KafkaSettings(kafka_bootstrap=broker.bootstrap)
        await ensure_topics(kafka)
        env = {
            **os.environ,
            "CRM_KAFKA_BOOTSTRAP": broker.bootstrap,
            "CRM_STORE_URL": store_url,
            "CRM_OUTBOX_DIR": str(outbox),
            "CRM_CREATE_TOPICS": "false",
            "CRM_LOG_FORMAT": "json",
            # The demo replays weeks in seconds: wall-clock quiet hours would hold every e-mail.
            "CRM_QUIET_HOURS": "off",
            # A simulated day takes a second or two: the grace outlasts its corrections, so
            # a coupon a late event withdraws is never e-mailed (the same summary every run).
            "CRM_SEND_GRACE_S": "10",
            "CRM_DUE_POLL_INTERVAL_S": "1",
            "CRM_HTTP_PORT": "0",
            "CRM_HTTP_HOST": "127.0.0.1",  # the demo's APIs are for this machine only
            # Marketing's token for the campaign the demo creates while it runs.
            "CRM_API_TOKENS": f"marketing:{hashlib.sha256(MARKETING_TOKEN.encode()).hexdigest()}",
            **demo_keys(options.simulation.seed),
            # The reports' stores and teams against goals (the stores chart draws them).
            **demo_store_goals(options.simulation),
        }
        env.pop("CRM_SMTP_HOST", None)
        services = ServiceProcesses(env, data / "logs")
        services.start()
        watch = PipelineWatch(kafka, services=SERVICES)
        producer = await open_producer(kafka)
        await watch.start()
        try:
            messages = generate(options.simulation)
            start = options.simulation.start
            history = [m for m in messages if m.day < start]
            days = list(by_day([m for m in messages if m.day >= start]))
            redeemer = CouponRedeemer(kafka, seed=options.simulation.seed, card_key=env[CARD_KEY])
            await redeemer.start()
            if history:
                console.print(f"history before {start}: {len(history)} events")
                await publish(producer, history)
                await _drain(watch, services, options.drain_timeout, "the history")
            with Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            ) as progress:
                task = progress.add_task("simulated days", total=len(days))
                for day, batch in days:
                    services.check_alive()
                    # The shoppers know the coupons of the days before (the pipeline is
                    # drained); what the day's tick issues reaches them the next day.
                    await redeemer.catch_up()
                    await tick(producer, day)
                    await publish(producer, redeemer.redeem(day, batch))
                    await _drain(watch, services, options.drain_timeout, day.isoformat())
                    progress.update(task, advance=1, description=f"simulated {day.isoformat()}")
            await redeemer.stop()
            last = days[-1][0] + dt.timedelta(days=1)
            await tick(producer, last)
            await _drain(watch, services, options.drain_timeout, "the last tick")
            # Today: marketing launches a campaign through the API, with no restart, and the
            # shoppers who come in afterwards meet it.
            campaign = await _launch_campaign(services.ports["offers"])
            console.print(f"campaign created through the API: {campaign}")
            await publish(producer, live_checkouts(options.simulation))
            await _drain(watch, services, options.drain_timeout, "today's shoppers")
            deadline = time.monotonic() + options.drain_timeout
            while not await _all_delivered(kafka) and time.monotonic() < deadline:
                services.check_alive()
                await asyncio.sleep(1.0)
            summary, corrections = await _summary(kafka, store_url, outbox, len(messages))
            report = await asyncio.to_thread(
                write_static_report, store_url, data / "campaigns-report.html"
            )
        finally:
            await watch.stop()
            await producer.stop()
            services.stop()
        console.print(summary)
        for line in EXPLANATIONS:
            console.print(line)
        console.print(
            f"Corrections on the way: {corrections} offers issued and then revoked when a late "
            "event showed they should not have been (none was e-mailed: the notifier waits). "
            "How many depends on the order in which the services happened to read the topics; "
            "the table above does not."
        )
        console.print(f"E-mails are in [bold]{outbox}[/bold] (one .eml file per offer).")
        console.print(f"Campaigns report (HTML, charts inline): [bold]{report}[/bold]")
        console.print(f"Service logs: {data / 'logs'}")
        if options.serve:
            _serve(env, data, options.port, console)
    return 0


def _campaign(event: dict[str, Any]) -> str:
    """The campaign of an offer event (events from before campaigns: by kind)."""
    return str(event.get("campaign_id") or event.get("kind", "").replace("_", "-"))


def final_states(records: list[Any]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Each offer's last event (the topic keeps a customer's events in order), and each
    rejected redemption's last reason: what the events say in the end, however many
    corrections they went through."""
    offers: dict[str, dict[str, Any]] = {}
    rejections: dict[str, str] = {}
    for record in records:
        if not record.value:
            continue
        event = orjson.loads(record.value)
        kind = event.get("type")
        if kind == "redemption_rejected":
            rejections[event["rejection_id"]] = event["reason"]
        elif kind == "held_out":
            offers.setdefault(event["offer_id"], event)
        elif kind in ("offer_issued", "offer_revoked", "offer_redeemed", "offer_expired"):
            first = offers.get(event["offer_id"], {})
            offers[event["offer_id"]] = {**event, "kind": first.get("kind", event.get("kind"))}
    return offers, rejections


async def _summary(
    kafka: KafkaSettings, store_url: str, outbox: Path, published: int
) -> tuple[Table, int]:
    """The summary table (what the events come to: the same for the same seed) and the number
    of offers revoked on the way (corrections: they depend on how events happened to arrive)."""
    # Count by reading the topics: Tansu's end offsets undercount multi-record batches.
    raw = sum([len(await read_topic(kafka, topic)) for topic in RAW_TOPICS])
    normalized = len(await read_topic(kafka, EVENTS))
    letters = count_types(await read_topic(kafka, DEADLETTER))
    offers, rejections = final_states(await read_topic(kafka, OFFERS))
    deliveries: dict[str, str] = {}
    for record in await read_topic(kafka, DELIVERIES):
        event = orjson.loads(record.value)
        deliveries[event["offer_id"]] = event["state"] + (
            f":{event['reason']}" if event["state"] == "suppressed" else ""
        )
    states = Counter(event["type"] for event in offers.values())
    live = {k: e for k, e in offers.items() if e["type"] not in ("offer_revoked", "held_out")}
    table = Table(title="crm demo summary")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("raw events in", str(raw))
    table.add_row("normalized events", str(normalized))
    table.add_row("dead-lettered", str(letters["dead_letter"]))
    for key in sorted(k for k in letters if k.startswith("dead_letter:")):
        table.add_row(f"  reason {key.split(':', 1)[1]}", str(letters[key]))
    table.add_row("duplicates dropped", str(max(0, raw - normalized - letters["dead_letter"])))
    table.add_row("customer profiles", str(await _profiles_count(store_url)))
    table.add_row("offers issued", str(len(live)))
    for campaign, count in sorted(Counter(_campaign(e) for e in live.values()).items()):
        table.add_row(f"  campaign {campaign}", str(count))
    table.add_row("held out (control group)", str(states["held_out"]))
    held = Counter(_campaign(e) for e in offers.values() if e["type"] == "held_out")
    for campaign, count in sorted(held.items()):
        table.add_row(f"  campaign {campaign}", str(count))
    delivered = [k for k in live if deliveries.get(k) in ("sent", "written")]
    used = sum(1 for k in delivered if live[k]["type"] == "offer_redeemed")
    table.add_row("coupons redeemed", str(states["offer_redeemed"]))
    if delivered:
        # The rate is over the coupons the customers were told about, not over every offer.
        table.add_row(
            "  of the e-mailed ones", f"{used} of {len(delivered)} ({used / len(delivered):.1%})"
        )
    table.add_row("redemptions rejected", str(len(rejections)))
    for reason, count in sorted(Counter(rejections.values()).items()):
        table.add_row(f"  {reason}", str(count))
    table.add_row("coupons expired", str(states["offer_expired"]))
    # The e-mails of the offers that stand: one issued and revoked on the way (a correction)
    # has an outcome too, but whether there was one depends on how the events arrived.
    outcomes = Counter(state for offer_id, state in deliveries.items() if offer_id in live)
    for state in ("written", "sent", "bounced", "failed"):
        if outcomes[state] or state == "written":
            table.add_row(f"e-mails {state}", str(outcomes[state]))
    for key in sorted(k for k in outcomes if k.startswith("suppressed:")):
        table.add_row(f"e-mails not sent: {key.split(':', 1)[1]}", str(outcomes[key]))
    table.add_row(".eml files in the outbox", str(_count_files(outbox, "*.eml")))
    for (outcome, reason), count in sorted((await _decisions(store_url)).items()):
        if outcome == "suppressed":
            table.add_row(f"chances passed over: {reason}", str(count))
    return table, states["offer_revoked"]


EXPLANATIONS = (
    "Coupons expired: issued, not redeemed before their last valid day.",
    "E-mails not sent, offer_expired: the coupon's last day had passed when the e-mail was "
    "due (the demo replays four weeks up to today in a minute, so the oldest coupons are "
    "already dead when the notifier reaches them; it never mails a dead coupon).",
    "Chances passed over: a chance is one campaign's trigger met by one customer (a "
    "birthday, a checkout with a favourite product...), so one customer can count many times; "
    "consent: no marketing consent at that moment; cooldown: the same campaign's coupon was "
    "given too recently; cap: the customer already had the most offers the frequency cap "
    "allows in its window; audience: not in the campaign's segment; budget_spent: the "
    "campaign's budget is used up; no_email: no address; erased: the customer asked to be "
    "forgotten.",
)
"""One line per row of the summary whose label alone does not say what it counts."""


MARKETING_TOKEN = secrets.token_urlsafe(24)
"""Marketing's bearer token in this run (the services get its SHA-256)."""
LAUNCH = {
    "name": "Espresso launch",
    "trigger": {"type": "purchase", "sku": "ESPRESSO-500", "min_checkouts": 2, "window_days": 30},
    "audience": {"segment": "all"},
    "offer": {"discount_percent": "20", "scope": "sku", "sku": "ESPRESSO-500", "validity_days": 14},
    "template": "campaign",
    "holdout_percent": "10",
}
"""The campaign the demo creates while it runs: a new product, twice bought, 20 % off it."""
ESPRESSO = {
    "sku": "ESPRESSO-500",
    "name": "Espresso beans 500 g",
    "category": "pantry",
    "quantity": 1,
    "unit_price": "8.90",
}


async def _launch_campaign(port: int) -> str:
    """Create the demo's campaign through the offers service's API, as marketing would."""
    import httpx

    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {MARKETING_TOKEN}"},
        timeout=30,
    ) as client:
        response = await client.post("/api/campaigns", json=LAUNCH)
        response.raise_for_status()
        return str(response.json()["campaign_id"])


def live_checkouts(config: SimulationConfig) -> list[RawMessage]:
    """Today's shoppers after the launch: a seeded fifth of the customers buy the new espresso
    twice (every simulated day lies before today, so what they earn is the same on every run,
    whatever the time of day)."""
    rng = random.Random(f"{config.seed}-live")  # noqa: S311 - simulated traffic
    chosen = sorted(rng.sample(range(1, config.customers + 1), k=max(1, config.customers // 5)))
    now = dt.datetime.now(dt.UTC)
    messages = []
    for serial, index in enumerate(chosen):
        card = card_number(index)
        for visit in range(2):
            at = now + dt.timedelta(milliseconds=2 * serial + visit)
            doc = {
                "event_id": f"live-{config.seed}-{index}-{visit}",
                "store_id": "S001",
                "occurred_at": at.isoformat(),
                "card_number": card,
                "currency": "EUR",
                "lines": [ESPRESSO],
            }
            messages.append(RawMessage(CHECKOUTS_RAW, card.encode(), orjson.dumps(doc), at))
    return messages


async def _decisions(store_url: str) -> Counter[tuple[str, str]]:
    """(outcome, reason) of every decision offers keeps, from its store."""
    from services.offers.store import open_repository
    from shared.settings import StoreSettings

    async with open_repository(StoreSettings(store_url=store_url)) as repository:
        counts = await repository.decision_counts()
    summed: Counter[tuple[str, str]] = Counter()
    for (_, outcome, reason), n in counts.items():
        summed[(outcome, reason or "")] += n
    return summed


async def _all_delivered(kafka: KafkaSettings) -> bool:
    """Whether every offer that stands has its e-mail's outcome (the notifier waits a grace
    before sending, so the last ones come a little after the pipeline is drained)."""
    offers, _ = final_states(await read_topic(kafka, OFFERS))
    waiting = {k for k, e in offers.items() if e["type"] not in ("offer_revoked", "held_out")}
    for record in await read_topic(kafka, DELIVERIES):
        waiting.discard(orjson.loads(record.value)["offer_id"])
    return not waiting


def _serve(env: dict[str, str], data: Path, port: int, console: Console) -> None:
    """Keep the web page and the APIs up on localhost (`crm run all`) until Ctrl-C."""
    token = secrets.token_urlsafe(18)
    digest = hashlib.sha256(token.encode()).hexdigest()
    serving = ServiceProcesses(
        {
            **env,
            "CRM_HTTP_HOST": "127.0.0.1",  # as printed: reachable from this machine only
            "CRM_HTTP_PORT": str(port),
            "CRM_API_TOKENS": f"admin:{digest}",
        },
        data / "logs",
        names=("all",),
    )
    serving.start()
    console.print(
        f"Web page: [bold]http://127.0.0.1:{port}/ui/[/bold]  (sign in with the admin token "
        f"[bold]{token}[/bold]; it works only for this run). Ctrl-C stops."
    )
    try:
        # Ctrl-C reaches the whole process group: a server that stopped cleanly ends the wait.
        while all(process.poll() is None for process in serving.processes.values()):
            time.sleep(1)
        if any(process.returncode for process in serving.processes.values()):
            serving.check_alive()  # raises, naming the log to read
    except KeyboardInterrupt:
        console.print("stopping")
    finally:
        serving.stop()


def demo_main(options: DemoOptions) -> int:
    console = Console()
    try:
        return asyncio.run(run_demo(options, console))
    except DemoError as exc:
        console.print(f"[bold red]crm demo:[/bold red] {exc}")
        return 2
    except KeyboardInterrupt:
        console.print("interrupted: services and broker stopped")
        return 130
