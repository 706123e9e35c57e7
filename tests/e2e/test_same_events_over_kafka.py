"""Same events, same offers, over Kafka: the same store traffic and clock days sent in
event-time order, then checkouts first, then shuffled with random keys, each to a fresh broker
and store with the services as `crm run` processes, leave identical profiles and offers."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from crm.embedded import EmbeddedKafka
from crm.simulation import RawMessage, SimulationConfig, card_number, generate
from crm.traffic import PipelineWatch
from services.offers.store import open_repository as open_offers
from services.profiles.store import open_repository as open_profiles
from shared.events import ClockTicked
from shared.privacy import card_id, customer_id_for_card
from shared.settings import KafkaSettings, StoreSettings
from shared.topics import CHECKOUTS_RAW, CLOCK
from tests.keys import CARD_KEY as TEST_CARD_KEY

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CARD_KEY = TEST_CARD_KEY.encode()  # the pipeline_env fixture's CRM_CARD_KEY
TODAY = dt.datetime.now(dt.UTC).date()
SERVICES = ("ingest", "profiles", "offers")


def traffic() -> tuple[SimulationConfig, list[RawMessage]]:
    """Three weeks ending today, with linked cards and consent withdrawals, no erasure (the
    documented exception), and a clock tick at the start of every day."""
    days = 21
    config = SimulationConfig(
        customers=40,
        stores=2,
        days=days,
        start=TODAY - dt.timedelta(days=days - 1),
        seed=5,
        visits_per_week=3.0,
        max_lines=6,
        erasures=0,
        linked_cards=4,
        consent_withdrawals=6,
        broken_share=0,
    )
    messages = generate(config)
    for n in range(days):
        day = config.start + dt.timedelta(days=n)
        start = dt.datetime.combine(day, dt.time(0), dt.UTC)
        messages.append(
            RawMessage(CLOCK, None, ClockTicked(date=day).model_dump_json().encode(), start)
        )
    return config, messages


def in_event_time_order(messages: list[RawMessage]) -> list[RawMessage]:
    return sorted(messages, key=lambda m: (m.at, m.topic != CLOCK))


def checkouts_first(messages: list[RawMessage]) -> list[RawMessage]:
    ordered = in_event_time_order(messages)
    return [m for m in ordered if m.topic == CHECKOUTS_RAW] + [
        m for m in ordered if m.topic != CHECKOUTS_RAW
    ]


def shuffled_with_random_keys(messages: list[RawMessage]) -> list[RawMessage]:
    rng = random.Random(23)
    out = [
        RawMessage(m.topic, None if m.topic == CLOCK else rng.randbytes(6), m.value, m.at)
        for m in messages
    ]
    rng.shuffle(out)
    return out


async def send(bootstrap: str, messages: list[RawMessage]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        for message in messages:
            await producer.send(message.topic, message.value, key=message.key)
        await producer.flush()
    finally:
        await producer.stop()
    watch = PipelineWatch(KafkaSettings(kafka_bootstrap=bootstrap), services=_specs())
    await watch.start()
    try:
        assert await watch.drained(120), await watch.lag()
    finally:
        await watch.stop()


def _specs() -> tuple[Any, ...]:
    from crm.registry import BY_NAME

    return tuple(BY_NAME[name] for name in SERVICES)


async def outcome(store: StoreSettings, customers: list[str]) -> tuple[Any, ...]:
    """Every live profile's content and every offer that stands, with its state and code."""
    async with open_profiles(store) as profiles:
        found = await profiles.get_many(customers)
    live = sorted(
        (p.content() for p in found.values() if not p.erased and p.merged_into is None),
        key=lambda c: c["customer_id"],
    )
    async with open_offers(store) as offers:
        stored = await offers.offers_of_customers(customers)
        ledgers = await offers.ledgers(customers)
    standing = {
        k: (o.state, o.coupon_code, o.valid_from, o.valid_until, o.redemption)
        for k, o in stored.items()
        if o.state != "revoked"
    }
    decisions = {
        (cid, d.key): (d.outcome, d.reason)
        for cid, ledger in ledgers.items()
        for d in ledger.decisions.values()
    }
    return live, standing, decisions


def test_the_same_events_in_three_orders_leave_the_same_profiles_and_offers(
    make_pipeline: Any, tmp_path: Path
) -> None:
    config, messages = traffic()
    customers = sorted(
        {
            customer_id_for_card(card_id(card_number(n), CARD_KEY))
            for n in range(1, config.customers + 50)
        }
    )
    results = []
    for name, order in (
        ("event time", in_event_time_order),
        ("checkouts first", checkouts_first),
        ("shuffled", shuffled_with_random_keys),
    ):
        folder = tmp_path / name.replace(" ", "-")
        with EmbeddedKafka(log_file=tmp_path / f"{name}.log") as broker:
            store = StoreSettings(store_url=f"sqlite:///{folder / 'store'}")
            pipeline = make_pipeline(
                CRM_KAFKA_BOOTSTRAP=broker.bootstrap, CRM_STORE_URL=store.store_url or ""
            )
            for service in SERVICES:
                pipeline.start(service)
            for service in SERVICES:
                pipeline.wait_ready(service)
            asyncio.run(send(broker.bootstrap, order(messages)))
            pipeline.stop_all()
            results.append((name, asyncio.run(outcome(store, customers))))
    (_, first), *others = results
    profiles, offers, decisions = first
    assert len(profiles) > 30
    assert len(offers) > 10, "the traffic should earn offers"
    assert any(outcome == "suppressed" for outcome, _ in decisions.values())
    for name, other in others:
        assert other[0] == profiles, f"profiles differ when sent {name}"
        assert other[1] == offers, f"offers differ when sent {name}"
        assert other[2] == decisions, f"decisions differ when sent {name}"
