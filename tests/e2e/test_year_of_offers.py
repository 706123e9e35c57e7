"""A year of traffic for a small population, the clock ticking every day: the offers issued
and the e-mails received are exactly those the rules call for (computed here from the input,
independently of the services), none twice, none to customers who did not consent.

The rules as the contract states them, on the state as of the start of each day (event time):
the ticks come after a fortnight of events each, so what a customer did later in the
fortnight must not change that day's decision."""

from __future__ import annotations

import asyncio
import calendar
import datetime as dt
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from crm.embedded import EmbeddedKafka
from crm.simulation import RawMessage, SimulationConfig, generate
from crm.traffic import PipelineWatch, read_topic, tick
from shared.events import OfferIssued
from shared.privacy import card_id, customer_id_for_card
from shared.settings import KafkaSettings
from shared.topics import CHECKOUTS_RAW, CUSTOMERS_RAW, DELIVERIES, OFFERS
from tests.e2e.conftest import Mailbox
from tests.keys import CARD_KEY as TEST_CARD_KEY

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CARD_KEY = TEST_CARD_KEY.encode()  # the pipeline_env fixture's CRM_CARD_KEY
TODAY = dt.datetime.now(dt.UTC).date()
CHUNK_DAYS = 14
RULES = """
frequent_item: {enabled: false}
frequency_cap: {enabled: false}
holdout: {percent: 0}
"""


def population() -> tuple[SimulationConfig, list[RawMessage]]:
    days = 364
    config = SimulationConfig(
        customers=30,
        stores=2,
        days=days,
        start=TODAY - dt.timedelta(days=days - 1),
        seed=11,
        visits_per_week=0.7,
        max_lines=4,
        signup_share=0.9,
        consent_share=0.7,
        anonymous_per_day_per_store=0,
        broken_share=0,
        duplicate_share=0,
        interaction_share=0,
        linked_cards=0,
        consent_withdrawals=3,
        erasures=1,
        history_days=400,
        established_share=0.3,
        lapsed_share=0.2,
    )
    # One customer whose birthday is today, so that at least one coupon is still valid to e-mail.
    today_birth = (
        TODAY.replace(year=TODAY.year - 30)
        if (TODAY.month, TODAY.day) != (2, 29)
        else TODAY.replace(year=TODAY.year - 28)
    )
    signup = {
        "event_id": "signup-birthday-today",
        "type": "signup",
        "occurred_at": f"{config.start - dt.timedelta(days=30)}T10:00:00Z",
        "card_number": "6035 0000 0000 0999",
        "email": "today@example.com",
        "first_name": "Tova",
        "birth_date": today_birth.isoformat(),
        "marketing_consent": True,
    }
    at = dt.datetime.combine(config.start - dt.timedelta(days=30), dt.time(10), dt.UTC)
    extra = RawMessage(CUSTOMERS_RAW, None, json.dumps(signup).encode(), at)
    return config, [extra, *generate(config)]


def same_day(birth: dt.date, day: dt.date) -> bool:
    """29 February counts as 28 February in other years."""
    if (birth.month, birth.day) == (2, 29) and not calendar.isleap(day.year):
        return (day.month, day.day) == (2, 28)
    return (birth.month, birth.day) == (day.month, day.day)


def one_year_on(first: dt.date) -> dt.date:
    if (first.month, first.day) == (2, 29):
        return dt.date(first.year + 1, 2, 28)
    return first.replace(year=first.year + 1)


@dataclass
class Customer:
    email_since: dt.datetime | None = None
    consent: list[tuple[dt.datetime, bool]] = field(default_factory=list)
    erased_at: dt.datetime | None = None
    birth: dt.date | None = None
    visits: list[dt.datetime] = field(default_factory=list)

    def eligible(self, moment: dt.datetime) -> bool:
        """Consent in force, an address, not erased: at `moment` (event time)."""
        if self.email_since is None or self.email_since > moment:
            return False
        if self.erased_at is not None and self.erased_at <= moment:
            return False
        state = False
        for at, value in sorted(self.consent):
            if at <= moment:
                state = value
        return state


def customers_of(messages: list[RawMessage]) -> dict[str, Customer]:
    people: dict[str, Customer] = defaultdict(Customer)
    for message in messages:
        doc = json.loads(message.value)
        customer = customer_id_for_card(card_id(doc["card_number"], CARD_KEY))
        person = people[customer]
        if message.topic == CHECKOUTS_RAW:
            person.visits.append(message.at)
        elif doc["type"] == "signup":
            # What a sign-up says holds from its time on.
            person.email_since = message.at if doc.get("email") else None
            person.birth = dt.date.fromisoformat(doc["birth_date"])
            person.consent.append((message.at, doc["marketing_consent"]))
        elif doc["type"] == "consent":
            person.consent.append((message.at, doc["marketing_consent"]))
        elif doc["type"] == "erase":
            person.erased_at = message.at
    return people


def expected_offers(
    people: dict[str, Customer], chunks: list[list[dt.date]]
) -> set[tuple[str, str, dt.date]]:
    """(customer, kind, day) by the documented rules, each day on the state at its start."""
    expected: set[tuple[str, str, dt.date]] = set()
    last_win_back: dict[str, dt.date] = {}
    for day in (day for chunk in chunks for day in chunk):
        start = dt.datetime.combine(day, dt.time(0), dt.UTC)
        for customer, person in sorted(people.items()):
            if not person.eligible(start):
                continue
            if person.birth and same_day(person.birth, day):
                expected.add((customer, "birthday", day))
            visits = sorted(v.date() for v in person.visits if v < start)
            if visits and one_year_on(visits[0]) == day:
                expected.add((customer, "anniversary", day))
            if len(visits) >= 5 and visits[-1] <= day - dt.timedelta(days=61):
                previous = last_win_back.get(customer)
                if previous is None or (day - previous).days >= 90:
                    expected.add((customer, "win_back", day))
                    last_win_back[customer] = day
    return expected


async def run_year(
    bootstrap: str, messages: list[RawMessage], start: dt.date
) -> list[list[dt.date]]:
    kafka = KafkaSettings(kafka_bootstrap=bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    watch = PipelineWatch(kafka)
    await producer.start()
    await watch.start()

    async def send(batch: list[RawMessage]) -> None:
        for message in batch:
            await producer.send(message.topic, message.value, key=message.key)
        await producer.flush()
        assert await watch.drained(120), await watch.lag()

    try:
        signups = [m for m in messages if m.topic == CUSTOMERS_RAW and b'"signup"' in m.value]
        rest = [m for m in messages if m not in signups]
        await send(signups)
        await send([m for m in rest if m.day < start])
        days = [start + dt.timedelta(days=n) for n in range((TODAY - start).days + 1)]
        chunks = [days[i : i + CHUNK_DAYS] for i in range(0, len(days), CHUNK_DAYS)]
        for chunk in chunks:
            await send([m for m in rest if chunk[0] <= m.day <= chunk[-1]])
            for day in chunk:
                await tick(producer, day)
            assert await watch.drained(120), await watch.lag()
        return chunks
    finally:
        await watch.stop()
        await producer.stop()


def live_offers(records: list[Any]) -> list[OfferIssued]:
    """The offers that stand at the end of crm.offers: a late event may revoke an offer and a
    later one issue it again (a correction the contract allows); issuing an offer that
    stands a second time is a republication, and fails."""
    live: dict[str, OfferIssued] = {}
    for record in records:
        kind = json.loads(record.value).get("type")
        if kind == "offer_issued":
            offer = OfferIssued.model_validate_json(record.value)
            assert offer.offer_id not in live, f"offer {offer.offer_id} issued twice"
            live[offer.offer_id] = offer
        elif kind == "offer_revoked":
            live.pop(json.loads(record.value)["offer_id"], None)
    return list(live.values())


async def wait_delivered(bootstrap: str, offer_ids: set[str], within: float = 120.0) -> None:
    """Until every one of these offers has its e-mail's outcome on crm.deliveries."""
    kafka = KafkaSettings(kafka_bootstrap=bootstrap)
    deadline = asyncio.get_running_loop().time() + within
    while True:
        records = await read_topic(kafka, DELIVERIES)
        missing = offer_ids - {json.loads(r.value)["offer_id"] for r in records}
        if not missing:
            return
        assert asyncio.get_running_loop().time() < deadline, f"no delivery outcome: {missing}"
        await asyncio.sleep(0.5)


def test_a_year_of_ticks_issues_and_mails_exactly_the_expected_offers(
    broker: EmbeddedKafka, smtp_server: tuple[Mailbox, int], make_pipeline: Any, tmp_path: Path
) -> None:
    mailbox, port = smtp_server
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    pipeline = make_pipeline(
        CRM_SMTP_HOST="127.0.0.1", CRM_SMTP_PORT=str(port), CRM_RULES_FILE=str(rules)
    )
    pipeline.start_all()
    config, messages = population()
    chunks = asyncio.run(run_year(broker.bootstrap, messages, config.start))

    records = asyncio.run(read_topic(KafkaSettings(kafka_bootstrap=broker.bootstrap), OFFERS))
    issued = live_offers(records)
    people = customers_of(messages)
    expected = expected_offers(people, chunks)
    got = {(o.customer_id, o.kind, o.valid_from) for o in issued}
    assert {k for _, k, _ in expected} >= {"birthday", "anniversary", "win_back"}, expected
    assert got == expected

    # One e-mail per offer still valid today (older coupons have expired: not e-mailed), none twice.
    mailable = {f"<offer-{o.offer_id}@crm-stream>" for o in issued if o.valid_until >= TODAY}
    # The notifier sends after the pipeline is drained (a grace, then its due poll): wait for
    # the delivery records of those offers; each is written once its e-mail was accepted.
    asyncio.run(wait_delivered(broker.bootstrap, {o.offer_id for o in issued}))
    received = [str(m["Message-ID"]) for m in mailbox.messages]
    assert len(received) == len(set(received))
    assert mailable, "the customer born today must get a birthday e-mail"
    assert set(received) == mailable
    assert ["today@example.com"] in mailbox.recipients
    opted_out = {
        f"customer{n}@example.com"
        for n in range(1, config.customers + 1)
        if not people[customer_id_for_card(card_id(f"6035{n:012d}", CARD_KEY))].eligible(
            dt.datetime.combine(TODAY, dt.time.max, dt.UTC)
        )
    }
    assert not [r for rcpts in mailbox.recipients for r in rcpts if r in opted_out]
