"""Events from a newer producer, over the real Kafka protocol on the embedded broker: fields
the consumer does not know are dropped, the event is processed, nothing is dead-lettered.

During a rolling upgrade (and after a rollback) an old consumer reads what a new producer
wrote, optional fields the old models never had included.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from crm.traffic import read_topic
from services.profiles.app import SPEC
from services.profiles.store import open_repository
from services.profiles.store_sqlite import SqliteProfilesRepository
from shared.campaigns import Bought, SegmentDefined, SegmentRule
from shared.edge import dump
from shared.kafka import ensure_topics
from shared.settings import KafkaSettings, Settings, StoreSettings
from shared.skeleton import ServiceApp
from shared.topics import DEADLETTER, EVENTS, SEGMENT_DEFINITIONS, SEGMENTS
from tests.integration.test_profiles_segments_kafka import definition_and_swipe
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def with_unknown_fields(event: bytes, **nested: dict[str, Any]) -> bytes:
    """The event as a newer producer would write it: a field at the top and, for each list
    named, one in its first element."""
    document = json.loads(event)
    document["loyalty_tier"] = "gold"
    document["schema_version"] = 7
    for name, extra in nested.items():
        document[name][0].update(extra)
    return json.dumps(document).encode()


async def test_events_with_fields_the_consumer_does_not_know_are_processed_not_dead_lettered(
    kafka_settings: KafkaSettings, unique: str
) -> None:
    await ensure_topics(kafka_settings)
    definition, swipe = definition_and_swipe(f"newer-{unique}", unique)
    name, customer = definition.name, swipe.customer_id
    producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.kafka_bootstrap)
    await producer.start()
    # crm.segment-definitions (a table every instance reads whole) and crm.events (the
    # service's own input, with sealed-field handling) take two different decoding paths.
    await producer.send_and_wait(
        SEGMENT_DEFINITIONS, with_unknown_fields(dump(definition)), key=name.encode()
    )
    await producer.send_and_wait(
        EVENTS,
        with_unknown_fields(dump(swipe), lines={"origin": "self-checkout"}),
        key=customer.encode(),
    )
    settings = Settings(kafka=kafka_settings, store=StoreSettings(store_url="memory://"))
    app = ServiceApp(dataclasses.replace(SPEC, group=f"crm-profiles-{unique}"), settings)
    await app.start()
    try:
        ready = app.service.definitions_ready
        assert ready is not None
        await asyncio.wait_for(ready.wait(), 30)
        assert name in await app.service.segments()

        async def entries() -> list[dict[str, Any]]:
            return [
                json.loads(r.value)
                for r in await read_topic(kafka_settings, SEGMENTS)
                if r.key == customer.encode() and json.loads(r.value)["segment"] == name
            ]

        async def entered() -> bool:
            return bool(await entries())

        await wait_for(entered)
        [entry] = await entries()
        assert (entry["type"], entry["cause_event_id"]) == ("segment_entered", f"e-{unique}")
        profile = await app.service.repository.get(customer)
        assert profile is not None
        assert profile.visits == 1
        # Dead letters are published before a batch's output: had the swipe been refused,
        # its letter would be on the topic by now.
        letters = [
            json.loads(r.value)
            for r in await read_topic(kafka_settings, DEADLETTER)
            if r.value and json.loads(r.value)["fields"].get("event_id") == f"e-{unique}"
        ]
        assert letters == []
        assert not [k for k in app.stats if k.startswith(("dead_lettered", "skipped"))]
    finally:
        await app.stop()
        await producer.stop()


async def test_a_stored_definition_a_newer_version_saved_reads_back_after_a_rollback(
    tmp_path: Path,
) -> None:
    """Stores keep copies of events (segment definitions, campaigns, the notifier's offers):
    after a rollback, the older code reads what the newer one saved."""
    definition = SegmentDefined(
        name="buyers",
        rule=SegmentRule(bought=(Bought(sku="MILK-1L"),)),
        version=1,
        defined_at=dt.datetime(2026, 3, 1, tzinfo=dt.UTC),
        defined_by="test",
    )
    saved_by_newer = with_unknown_fields(definition.model_dump_json().encode())
    async with open_repository(StoreSettings(store_url=f"sqlite://{tmp_path}")) as repository:
        assert isinstance(repository, SqliteProfilesRepository)
        await repository.write(
            lambda db: db.execute(
                "INSERT INTO segment_definitions (name, doc) VALUES (?, ?)",
                ("buyers", saved_by_newer.decode()),
            )
        )

        assert await repository.definitions() == [
            definition.model_copy(update={"schema_version": 7})
        ]
