"""The ingest app through FastStream's TestKafkaBroker: raw bytes in, normalized events out."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from faststream.kafka import TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage

from services.ingest.app import SPEC, create_app, decode_raw
from services.ingest.service import IngestService
from services.ingest.settings import IngestSettings
from services.ingest.store_sqlite import SqliteIngestRepository
from shared.edge import Received, Source
from shared.events import NORMALIZED_EVENT, DeadLetter, PurchaseRecorded
from shared.settings import (
    CalendarSettings,
    KafkaSettings,
    Settings,
    StoreSettings,
)
from shared.skeleton import ServiceApp
from shared.storage import StoreLocation
from shared.topics import CHECKOUTS_RAW, CUSTOMERS_RAW, DEADLETTER, EVENTS, INTERACTIONS_RAW
from shared.vault_sqlite import SqliteVault

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


Collected = dict[str, list[tuple[bytes | None, bytes]]]
App = ServiceApp[IngestService]


@pytest.fixture
def collected() -> Collected:
    return {EVENTS: [], DEADLETTER: []}


@pytest.fixture
async def app(collected: Collected) -> AsyncIterator[App]:
    repository = await SqliteIngestRepository.open(StoreLocation.parse("memory://"))
    application = create_app(settings(), repository=repository)
    for topic in collected:

        def make(name: str) -> None:
            @application.broker.subscriber(name)
            async def collect(message: KafkaMessage) -> None:
                collected[name].append((message.raw_message.key, message.body))  # type: ignore[union-attr]

        make(topic)
    yield application
    await repository.close()


async def test_checkout_is_normalized_and_keyed_by_customer(app: App, collected: Collected) -> None:
    async with TestKafkaBroker(app.broker) as broker:
        await broker.publish(checkout("e-1"), CHECKOUTS_RAW, key=b"S001")
    assert len(collected[EVENTS]) == 1
    key, body = collected[EVENTS][0]
    event = NORMALIZED_EVENT.validate_json(body)
    assert isinstance(event, PurchaseRecorded)
    assert key == event.customer_id.encode()  # type: ignore[union-attr]
    assert b"9012" not in body


async def test_duplicate_swipe_is_published_once(app: App, collected: Collected) -> None:
    async with TestKafkaBroker(app.broker) as broker:
        await broker.publish(checkout("e-1"), CHECKOUTS_RAW)
        await broker.publish(checkout("e-1"), CHECKOUTS_RAW)
        await broker.publish_batch(checkout("e-2"), checkout("e-2"), topic=CHECKOUTS_RAW)
    ids = [json.loads(body)["event_id"] for _, body in collected[EVENTS]]
    assert ids == ["e-1", "e-2"]
    assert app.service.stats["duplicates"] == 2


async def test_broken_input_is_dead_lettered_with_reason_and_no_card(
    app: App, collected: Collected
) -> None:
    async with TestKafkaBroker(app.broker) as broker:
        await broker.publish(checkout("bad", lines=[]), CHECKOUTS_RAW)
        await broker.publish(b"{oops " + CARD.encode(), CHECKOUTS_RAW)
        await broker.publish(checkout("good"), CHECKOUTS_RAW)
    letters = [DeadLetter.model_validate_json(body) for _, body in collected[DEADLETTER]]
    assert [letter.reason for letter in letters] == ["no_lines", "invalid_json"]
    assert all(letter.source_topic == CHECKOUTS_RAW for letter in letters)
    assert all(b"5678" not in body for _, body in collected[DEADLETTER])
    assert letters[0].fields["event_id"] == "bad"
    assert letters[1].fields == {}  # not JSON: nothing of it is kept, only its size and hash
    assert [json.loads(body)["event_id"] for _, body in collected[EVENTS]] == ["good"]
    assert app.service.stats["dead_lettered_no_lines"] == 1
    assert app.service.stats["dead_lettered_invalid_json"] == 1


async def test_linked_card_feeds_the_first_cards_customer(app: App, collected: Collected) -> None:
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


async def test_batch_from_several_raw_topics_is_published_in_event_time_order() -> None:
    signup = {
        "event_id": "s-1",
        "type": "signup",
        "occurred_at": "2026-03-01T08:00:00Z",
        "card_number": CARD,
        "email": "ana@example.com",
        "marketing_consent": True,
    }
    repository = await SqliteIngestRepository.open(StoreLocation.parse("memory://"))
    vault = await SqliteVault.open(StoreLocation.parse("memory://"))
    service = IngestService(repository, card_key=b"k", calendar=CalendarSettings(), vault=vault)

    def received(topic: str, value: bytes, offset: int) -> Received[Any]:
        source = Source(topic=topic, partition=0, offset=offset, value=value)
        return Received(decode_raw(source), source)

    result = await service.handle(
        [
            received(CHECKOUTS_RAW, checkout("late"), 0),
            received(CUSTOMERS_RAW, json.dumps(signup).encode(), 0),
        ]
    )
    await repository.close()
    await vault.close()
    assert [json.loads(value)["event_id"] for _, _, value in result.outgoing if value] == [
        "customer:s-1",
        "late",
    ]


def test_the_declaration_reads_the_raw_topics_and_publishes_before_recording() -> None:
    assert SPEC.name == "ingest"
    assert set(SPEC.topics) == {CHECKOUTS_RAW, CUSTOMERS_RAW, INTERACTIONS_RAW}
    assert SPEC.order == "publish_then_save"


async def test_opening_the_store_forgets_event_ids_older_than_the_dedup_window(
    tmp_path: Path,
) -> None:
    store = Settings(store=StoreSettings(store_url=f"sqlite://{tmp_path}"))
    now = dt.datetime.now(dt.UTC)
    repository = await SqliteIngestRepository.open(StoreLocation.parse(store.store.store_url))
    await repository.record({"old"}, {}, now - dt.timedelta(days=6))
    await repository.record({"new"}, {}, now - dt.timedelta(days=4))
    await repository.close()
    app = create_app(store, ingest_settings=IngestSettings(dedup_days=5))
    async with app.spec.open_store(store) as opened:
        assert await opened.seen(["old", "new"]) == {"new"}
    async with SPEC.open_store(store) as opened:  # the default window (30 days) keeps it
        assert await opened.seen(["old", "new"]) == {"new"}
