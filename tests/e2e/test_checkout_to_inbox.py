"""Checkout to inbox: the four services as `crm run` processes on the embedded broker, real SMTP."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import bson
import pytest
from pymongo import AsyncMongoClient

from crm.embedded import EmbeddedKafka
from crm.traffic import PipelineWatch, read_topic
from shared.events import OfferIssued
from shared.settings import KafkaSettings, StoreSettings
from shared.topics import (
    CHECKOUTS_RAW,
    CONTACTS,
    CUSTOMERS_RAW,
    DEADLETTER,
    DELIVERIES,
    EVENTS,
    OFFERS,
    PROFILES_CHANGED,
)
from tests.e2e.conftest import Mailbox

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ANA = "6035 1111 2222 3333"
BEN = "6035-4444-5555-6666"


TODAY = dt.datetime.now(dt.UTC).date()


def days_ago(days: int) -> str:
    """Recent dates: the notifier does not e-mail a coupon that has already expired."""
    return (TODAY - dt.timedelta(days=days)).isoformat()


def raw_input() -> list[tuple[str, dict[str, Any]]]:
    def checkout(event_id: str, card: str, ago: int, skus: list[str]) -> tuple[str, dict[str, Any]]:
        return (
            CHECKOUTS_RAW,
            {
                "event_id": event_id,
                "store_id": "S001",
                "occurred_at": f"{days_ago(ago)}T10:00:00+01:00",
                "card_number": card,
                "lines": [
                    {"sku": sku, "name": sku.title(), "quantity": 1, "unit_price": "1,19"}
                    for sku in skus
                ],
            },
        )

    signups = [
        (
            CUSTOMERS_RAW,
            {
                "event_id": "su-ana",
                "type": "signup",
                "occurred_at": f"{days_ago(20)}T09:00:00Z",
                "card_number": ANA,
                "email": "ana@example.com",
                "first_name": "Ana",
                "marketing_consent": True,
            },
        ),
        (
            CUSTOMERS_RAW,
            {
                "event_id": "su-ben",
                "type": "signup",
                "occurred_at": f"{days_ago(20)}T09:00:00Z",
                "card_number": BEN,
                "email": "ben@example.com",
                "first_name": "Ben",
                "marketing_consent": False,
            },
        ),
    ]
    checkouts = [
        checkout("a1", ANA, 16, ["milk-1l", "bread"]),
        checkout("a2", ANA.replace(" ", ""), 9, ["MILK-1L", "bread"]),
        checkout("a3", ANA.replace(" ", "-"), 2, ["Milk-1l", "apples"]),
        checkout("b1", BEN, 16, ["coffee"]),
        checkout("b2", BEN, 9, ["coffee"]),
        checkout("b3", BEN, 2, ["coffee"]),
    ]
    return signups + checkouts


async def publish(bootstrap: str, items: list[tuple[str, dict[str, Any]]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for topic, doc in items:
            await producer.send_and_wait(topic, json.dumps(doc).encode(), key=b"S001")
    finally:
        await producer.stop()


def wait_until(condition: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def drained(bootstrap: str, within: float = 60.0) -> None:
    watch = PipelineWatch(KafkaSettings(kafka_bootstrap=bootstrap))
    await watch.start()
    try:
        assert await watch.drained(within), await watch.lag()
    finally:
        await watch.stop()


@pytest.mark.parametrize("store", ["sqlite", pytest.param("mongodb", marks=pytest.mark.mongo)])
def test_frequent_item_coupon_reaches_the_consenting_customer_once(
    broker: EmbeddedKafka,
    smtp_server: tuple[Mailbox, int],
    make_pipeline: Any,
    store: str,
    request: pytest.FixtureRequest,
) -> None:
    mailbox, port = smtp_server
    extra: dict[str, str] = {}
    if store == "mongodb":  # the PyMongo code path, on the suite's MongoDB-wire server
        mongo: StoreSettings = request.getfixturevalue("mongo_store")
        extra = {"CRM_STORE_URL": mongo.store_url or "", "CRM_MONGO_DATABASE": mongo.mongo_database}
    pipeline = make_pipeline(CRM_SMTP_HOST="127.0.0.1", CRM_SMTP_PORT=str(port), **extra)
    pipeline.start_all()

    asyncio.run(publish(broker.bootstrap, raw_input()))
    wait_until(lambda: mailbox.count() >= 1, 90, "the coupon e-mail")
    asyncio.run(drained(broker.bootstrap))

    records = asyncio.run(read_topic(KafkaSettings(kafka_bootstrap=broker.bootstrap), OFFERS))
    issued = [
        OfferIssued.model_validate_json(r.value) for r in records if b'"offer_issued"' in r.value
    ]
    assert len(issued) == 1
    offer = issued[0]
    assert offer.kind == "frequent_item"
    assert offer.sku == "MILK-1L"

    assert mailbox.count() == 1
    message = mailbox.messages[0]
    assert mailbox.recipients[0] == ["ana@example.com"]
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None
    assert html is not None
    assert offer.coupon_code in text.get_content()
    assert offer.coupon_code in html.get_content()
    assert message["List-Unsubscribe"]
    assert offer.offer_id in message["Message-ID"]

    # The same input again (a till resending its day) adds no e-mail and no offer.
    asyncio.run(publish(broker.bootstrap, raw_input()))
    asyncio.run(drained(broker.bootstrap))
    # drained = the notifier committed the batch, which it does only after sending its e-mails
    assert mailbox.count() == 1
    records = asyncio.run(read_topic(KafkaSettings(kafka_bootstrap=broker.bootstrap), OFFERS))
    assert sum(1 for r in records if b'"offer_issued"' in r.value) == 1

    # No raw card number in any service's log, any topic after ingest, or any stored document.
    spellings = [s for card in (ANA, BEN) for s in (card, card.replace(" ", "").replace("-", ""))]
    for name in ("ingest", "profiles", "offers", "notifier"):
        logs = pipeline.logs(name)
        assert not [s for s in spellings if s in logs], name
    kafka = KafkaSettings(kafka_bootstrap=broker.bootstrap)
    for topic in (EVENTS, PROFILES_CHANGED, CONTACTS, OFFERS, DELIVERIES, DEADLETTER):
        values = b"".join(r.value or b"" for r in asyncio.run(read_topic(kafka, topic)))
        assert values or topic == DEADLETTER, topic
        assert not [s for s in spellings if s.encode() in values], topic
    for name, content in stored_bytes(pipeline.env):
        assert not [s for s in spellings if s.encode() in content], name


def stored_bytes(env: dict[str, str]) -> list[tuple[str, bytes]]:
    """Every byte the services stored: each SQLite file, or each MongoDB document as BSON."""
    url = env["CRM_STORE_URL"]
    if url.startswith("sqlite://"):
        folder = Path(url.removeprefix("sqlite://"))
        return [(path.name, path.read_bytes()) for path in folder.glob("*.sqlite3*")]
    return asyncio.run(mongo_bytes(url, env["CRM_MONGO_DATABASE"]))


async def mongo_bytes(url: str, name: str) -> list[tuple[str, bytes]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url)
    try:
        database = client[name]
        found = []
        for collection in await database.list_collection_names():
            documents = await database[collection].find().to_list(None)
            found.append((collection, b"".join(bson.encode(doc) for doc in documents)))
        assert found, "the services stored nothing in MongoDB"
        return found
    finally:
        await client.close()
