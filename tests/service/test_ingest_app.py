"""The ingest app through FastStream's TestKafkaBroker: raw bytes in, normalized events out."""

from __future__ import annotations

import json
from typing import Any

import pytest
from faststream.kafka import TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage

from services.ingest.app import create_app, service_of
from services.ingest.store import SqliteIngestRepository
from shared.events import NORMALIZED_EVENT, DeadLetter, PurchaseRecorded
from shared.settings import KafkaSettings, Settings, StoreSettings
from shared.store import StoreLocation
from shared.topics import CHECKOUTS_RAW, CUSTOMERS_RAW, DEADLETTER, EVENTS

CARD = "6035 1234 5678 9012"


def settings() -> Settings:
    return Settings(
        kafka=KafkaSettings(kafka_bootstrap="test:9092"), store=StoreSettings(store_url="memory://")
    )


def checkout(event_id: str, **fields: Any) -> bytes:
    doc = {
        "event_id": event_id,
        "store_id": "S001",
        "occurred_at": "2026-03-01T10:15:00+01:00",
        "card_number": CARD,
        "lines": [{"sku": "milk-1l", "quantity": 2, "unit_price": "1,19"}],
    }
    doc.update(fields)
    return json.dumps(doc).encode()


@pytest.fixture
def collected() -> dict[str, list[tuple[bytes | None, bytes]]]:
    return {EVENTS: [], DEADLETTER: []}


@pytest.fixture
def app(collected: dict[str, list[tuple[bytes | None, bytes]]]):  # type: ignore[no-untyped-def]
    repository = SqliteIngestRepository.open(StoreLocation.parse("memory://"))
    application = create_app(settings(), repository=repository)
    for topic in collected:

        def make(name: str):  # type: ignore[no-untyped-def]
            @application.broker.subscriber(name)
            async def collect(message: KafkaMessage) -> None:
                collected[name].append((message.raw_message.key, message.body))

            return collect

        make(topic)
    return application


async def test_checkout_is_normalized_and_keyed_by_customer(app, collected) -> None:  # type: ignore[no-untyped-def]
    async with TestKafkaBroker(app.broker) as broker:
        await broker.publish(checkout("e-1"), CHECKOUTS_RAW, key=b"S001")
    assert len(collected[EVENTS]) == 1
    key, body = collected[EVENTS][0]
    event = NORMALIZED_EVENT.validate_json(body)
    assert isinstance(event, PurchaseRecorded)
    assert key == event.customer_id.encode()  # type: ignore[union-attr]
    assert b"9012" not in body


async def test_duplicate_swipe_is_published_once(app, collected) -> None:  # type: ignore[no-untyped-def]
    async with TestKafkaBroker(app.broker) as broker:
        await broker.publish(checkout("e-1"), CHECKOUTS_RAW)
        await broker.publish(checkout("e-1"), CHECKOUTS_RAW)
        await broker.publish_batch(checkout("e-2"), checkout("e-2"), topic=CHECKOUTS_RAW)
    ids = [json.loads(body)["event_id"] for _, body in collected[EVENTS]]
    assert ids == ["e-1", "e-2"]
    assert service_of(app).stats["duplicates"] == 2


async def test_broken_input_is_dead_lettered_with_reason_and_masked_card(app, collected) -> None:  # type: ignore[no-untyped-def]
    async with TestKafkaBroker(app.broker) as broker:
        await broker.publish(checkout("bad", lines=[]), CHECKOUTS_RAW)
        await broker.publish(b"{oops " + CARD.encode(), CHECKOUTS_RAW)
        await broker.publish(checkout("good"), CHECKOUTS_RAW)
    letters = [DeadLetter.model_validate_json(body) for _, body in collected[DEADLETTER]]
    assert [letter.reason for letter in letters] == ["no_lines", "invalid_json"]
    assert all(letter.source_topic == CHECKOUTS_RAW for letter in letters)
    assert all("5678" not in letter.payload for letter in letters)
    assert "9012" in letters[1].payload  # the last four digits stay, for support staff
    assert [json.loads(body)["event_id"] for _, body in collected[EVENTS]] == ["good"]


async def test_linked_card_feeds_the_first_cards_customer(app, collected) -> None:  # type: ignore[no-untyped-def]
    other = "6035 0000 1111 2222"
    link = {
        "event_id": "l-1",
        "type": "link_card",
        "occurred_at": "2026-03-01T09:00:00Z",
        "card_number": CARD,
        "other_card_number": other,
    }
    async with TestKafkaBroker(app.broker) as broker:
        await broker.publish(checkout("before", card_number=other), CHECKOUTS_RAW)
        await broker.publish(json.dumps(link).encode(), CUSTOMERS_RAW)
        await broker.publish(checkout("after", card_number=other), CHECKOUTS_RAW)
        await broker.publish(checkout("main"), CHECKOUTS_RAW)
    events = {json.loads(body)["event_id"]: json.loads(body) for _, body in collected[EVENTS]}
    assert events["after"]["customer_id"] == events["main"]["customer_id"]
    assert events["before"]["customer_id"] != events["main"]["customer_id"]
    linked = events["customer:l-1"]
    assert linked["type"] == "card_linked"
    assert linked["merged_customer_id"] == events["before"]["customer_id"]


async def test_batch_from_several_raw_topics_is_published_in_event_time_order(
    app, collected
) -> None:  # type: ignore[no-untyped-def]
    signup = {
        "event_id": "s-1",
        "type": "signup",
        "occurred_at": "2026-03-01T08:00:00Z",
        "card_number": CARD,
        "email": "ana@example.com",
        "marketing_consent": True,
    }
    repository = SqliteIngestRepository.open(StoreLocation.parse("memory://"))
    from services.ingest.service import IngestService
    from shared.settings import CalendarSettings

    service = IngestService(repository, card_key=b"k", calendar=CalendarSettings())

    class Record:
        def __init__(self, topic: str, value: bytes, offset: int) -> None:
            self.topic, self.value, self.offset, self.partition, self.key = (
                topic,
                value,
                offset,
                0,
                None,
            )

    result = await service.process(
        [
            Record(CHECKOUTS_RAW, checkout("late"), 0),
            Record(CUSTOMERS_RAW, json.dumps(signup).encode(), 0),
        ]  # type: ignore[list-item]
    )
    assert [json.loads(value)["event_id"] for _, _, value in result.outgoing if value] == [
        "customer:s-1",
        "late",
    ]
