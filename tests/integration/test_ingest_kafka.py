"""Ingest over the real Kafka protocol on the embedded broker: aiokafka in, normalized out."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from crm.traffic import read_topic
from services.ingest.app import create_app
from services.ingest.store_sqlite import SqliteIngestRepository
from shared.events import DeadLetter
from shared.kafka import ensure_topics
from shared.settings import KafkaSettings, Settings, StoreSettings
from shared.storage import StoreLocation
from shared.topics import CHECKOUTS_RAW, DEADLETTER, EVENTS
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def checkout(event_id: str, card: str | None, **fields: Any) -> bytes:
    doc: dict[str, Any] = {
        "event_id": event_id,
        "store_id": "S001",
        "occurred_at": "2026-03-01T10:15:00",
        "card_number": card,
        "lines": [{"sku": "milk-1l", "quantity": 1, "unit_price": "1.19"}],
    }
    doc.update(fields)
    return json.dumps(doc).encode()


async def test_raw_checkouts_reach_the_normalized_topic_keyed_by_customer(
    kafka_settings: KafkaSettings, unique: str
) -> None:
    await ensure_topics(kafka_settings)
    settings = Settings(kafka=kafka_settings, store=StoreSettings(store_url="memory://"))
    repository = await SqliteIngestRepository.open(StoreLocation.parse("memory://"))
    app = create_app(settings, repository=repository)
    cards = [
        f"6035 0000 {n:04d} {unique[:4].translate(str.maketrans('abcdef', '123456'))}"
        for n in range(5)
    ]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.kafka_bootstrap)
    await producer.start()
    await app.start()
    try:
        expected_ids = set()
        for n in range(50):
            # tills key by store: ingest must re-key by customer
            event_id = f"{unique}-{n}"
            expected_ids.add(event_id)
            await producer.send(CHECKOUTS_RAW, checkout(event_id, cards[n % 5]), key=b"S001")
        bad = [checkout(f"{unique}-bad", cards[0], lines=[]), b"\x00garbage " + cards[1].encode()]
        for value in bad:
            await producer.send(CHECKOUTS_RAW, value, key=b"S001")
        await producer.flush()

        async def all_there() -> bool:
            records = await read_topic(kafka_settings, EVENTS)
            ids = {json.loads(r.value)["event_id"] for r in records}
            return expected_ids <= ids

        await wait_for(all_there)
        records = [
            r for r in await read_topic(kafka_settings, EVENTS) if unique in r.value.decode()
        ]
        partitions_of: dict[bytes, set[int]] = {}
        for record in records:
            doc = json.loads(record.value)
            assert record.key == doc["customer_id"].encode()
            partitions_of.setdefault(record.key, set()).add(record.partition)
        assert len(partitions_of) == 5
        assert all(len(parts) == 1 for parts in partitions_of.values())

        async def letters_there() -> bool:
            return len(await mine(kafka_settings, bad)) >= 2

        await wait_for(letters_there)
        letters = await mine(kafka_settings, bad)
        assert sorted(letter.reason for letter in letters) == ["invalid_json", "no_lines"]
        for record in await read_topic(kafka_settings, EVENTS):
            for card in cards:
                assert card.replace(" ", "") not in record.value.decode()
    finally:
        await app.stop()
        await producer.stop()
        await repository.close()


async def mine(kafka_settings: KafkaSettings, sent: list[bytes]) -> list[DeadLetter]:
    """The dead letters of these payloads (a dead letter keeps their hash, not their text)."""
    hashes = {hashlib.sha256(value).hexdigest() for value in sent}
    letters = [
        DeadLetter.model_validate_json(r.value)
        for r in await read_topic(kafka_settings, DEADLETTER)
    ]
    return [letter for letter in letters if letter.payload_sha256 in hashes]
