"""Dead letters keep an allow-list of fields: ids, types, times, the store, the reason and the
failing field's path; never names, e-mail addresses, birth dates, card numbers or free text.

Each raw topic gets a message with personal data and one bad field through ingest's app; the
test reads the bytes of the record published on `crm.deadletter`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from faststream.kafka import TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage

from services.ingest.app import create_app
from services.ingest.service import IngestService
from services.ingest.store_sqlite import SqliteIngestRepository
from shared.settings import KafkaSettings, Settings, StoreSettings
from shared.skeleton import ServiceApp
from shared.storage import StoreLocation
from shared.topics import CHECKOUTS_RAW, CUSTOMERS_RAW, DEADLETTER, INTERACTIONS_RAW

CARD = "6035 1234 5678 9012"
EMAIL = "ana.pereira@example.com"
NAME = "Anastasia"
BORN = "1990-05-17"
DETAIL = "Ana Pereira phoned about her late parcel to Rua das Flores 12"
PERSONAL = (CARD, CARD.replace(" ", ""), "5678", EMAIL, NAME, BORN, "Pereira", "Rua das Flores")

Letters = list[bytes]


@pytest.fixture
async def app() -> AsyncIterator[tuple[ServiceApp[IngestService], Letters]]:
    repository = await SqliteIngestRepository.open(StoreLocation.parse("memory://"))
    settings = Settings(
        kafka=KafkaSettings(kafka_bootstrap="test:9092"), store=StoreSettings(store_url="memory://")
    )
    application = create_app(settings, repository=repository)
    letters: Letters = []

    @application.broker.subscriber(DEADLETTER)
    async def collect(message: KafkaMessage) -> None:
        letters.append(message.body)

    yield application, letters
    await repository.close()


async def dead_letter_of(
    app: tuple[ServiceApp[IngestService], Letters], topic: str, document: dict[str, Any] | bytes
) -> bytes:
    application, letters = app
    value = document if isinstance(document, bytes) else json.dumps(document).encode()
    async with TestKafkaBroker(application.broker) as broker:
        await broker.publish(value, topic, key=b"S001")
    assert len(letters) == 1
    return letters[0]


def assert_nothing_personal(raw: bytes) -> None:
    for value in PERSONAL:
        assert value.encode() not in raw, value


async def test_a_signup_with_a_bad_birth_date_is_dead_lettered_without_personal_data(
    app: tuple[ServiceApp[IngestService], Letters],
) -> None:
    raw = await dead_letter_of(
        app,
        CUSTOMERS_RAW,
        {
            "event_id": "s-1",
            "type": "signup",
            "occurred_at": "2026-03-01T10:00:00Z",
            "card_number": CARD,
            "email": EMAIL,
            "first_name": NAME,
            "birth_date": "1990-17-05",
            "marketing_consent": True,
        },
    )
    assert_nothing_personal(raw)
    assert b"1990-17-05" not in raw
    assert b'"reason":"invalid_birth_date"' in raw
    assert b'"field":"birth_date"' in raw
    assert b'"event_id":"s-1"' in raw
    assert b'"type":"signup"' in raw
    assert f'"source_topic":"{CUSTOMERS_RAW}"'.encode() in raw


async def test_a_checkout_with_a_negative_quantity_is_dead_lettered_without_the_card(
    app: tuple[ServiceApp[IngestService], Letters],
) -> None:
    raw = await dead_letter_of(
        app,
        CHECKOUTS_RAW,
        {
            "event_id": "c-1",
            "store_id": "S001",
            "occurred_at": "2026-03-01T10:00:00Z",
            "card_number": CARD,
            "customer_email": EMAIL,
            "cashier_note": DETAIL,
            "lines": [{"sku": "MILK", "name": NAME, "quantity": -1, "unit_price": "1.19"}],
        },
    )
    assert_nothing_personal(raw)
    assert b'"reason":"negative_quantity"' in raw
    assert b'"field":"lines.0.quantity"' in raw
    assert b'"store_id":"S001"' in raw
    assert b'"event_id":"c-1"' in raw


async def test_an_interaction_with_free_text_details_is_dead_lettered_without_them(
    app: tuple[ServiceApp[IngestService], Letters],
) -> None:
    raw = await dead_letter_of(
        app,
        INTERACTIONS_RAW,
        {
            "event_id": "i-1",
            "type": "support_ticket",
            "occurred_at": "the day before yesterday",
            "card_number": CARD,
            "channel": "phone",
            "details": {"note": DETAIL, "email": EMAIL, "caller": NAME},
        },
    )
    assert_nothing_personal(raw)
    assert b'"reason":"invalid_time"' in raw
    assert b'"field":"occurred_at"' in raw
    assert b'"type":"support_ticket"' in raw


async def test_a_payload_that_is_not_json_keeps_only_its_size_and_hash(
    app: tuple[ServiceApp[IngestService], Letters],
) -> None:
    value = f"name={NAME}; email={EMAIL}; card={CARD}".encode()
    raw = await dead_letter_of(app, CUSTOMERS_RAW, value)
    assert_nothing_personal(raw)
    assert b'"reason":"invalid_json"' in raw
    assert b'"fields":{}' in raw
    assert f'"payload_bytes":{len(value)}'.encode() in raw
    assert hashlib.sha256(value).hexdigest().encode() in raw
