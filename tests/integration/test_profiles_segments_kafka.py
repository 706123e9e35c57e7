"""Profiles' segments over the real Kafka protocol on the embedded broker: a definition read
from `crm.segment-definitions` by the running service, a swipe's entry on `crm.segments`."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
from decimal import Decimal

import pytest
from aiokafka import AIOKafkaProducer

from crm.traffic import read_topic
from services.profiles.app import SPEC
from shared.campaigns import Bought, SegmentDefined, SegmentRule
from shared.edge import dump
from shared.events import PurchaseLine, PurchaseRecorded
from shared.kafka import ensure_topics
from shared.settings import KafkaSettings, Settings, StoreSettings
from shared.skeleton import ServiceApp
from shared.topics import EVENTS, SEGMENT_DEFINITIONS, SEGMENTS
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def definition_and_swipe(name: str, unique: str) -> tuple[SegmentDefined, PurchaseRecorded]:
    """A segment of the buyers of one SKU, and a customer's swipe that buys it."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    sku, customer = f"SKU-{unique}".upper(), f"c-{unique}"
    definition = SegmentDefined(
        name=name,
        rule=SegmentRule(bought=(Bought(sku=sku),)),
        version=1,
        defined_at=now,
        defined_by="test",
    )
    swipe = PurchaseRecorded(
        event_id=f"e-{unique}",
        occurred_at=now,
        customer_id=customer,
        card_id=f"card-{unique}",
        store_id="S001",
        currency="EUR",
        lines=(
            PurchaseLine(
                sku=sku, quantity=Decimal(1), unit_price=Decimal("2.50"), amount=Decimal("2.50")
            ),
        ),
        total=Decimal("2.50"),
    )
    return definition, swipe


async def test_a_definition_on_the_topic_is_read_before_a_swipe_enters_its_segment(
    kafka_settings: KafkaSettings, unique: str
) -> None:
    await ensure_topics(kafka_settings)
    definition, swipe = definition_and_swipe(f"buyers-{unique}", unique)
    name, customer = definition.name, swipe.customer_id
    producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.kafka_bootstrap)
    await producer.start()
    # Saved before the service starts: its first batch waits until it has read it.
    await producer.send_and_wait(SEGMENT_DEFINITIONS, dump(definition), key=name.encode())
    await producer.send_and_wait(EVENTS, dump(swipe), key=customer.encode())
    settings = Settings(kafka=kafka_settings, store=StoreSettings(store_url="memory://"))
    app = ServiceApp(dataclasses.replace(SPEC, group=f"crm-profiles-{unique}"), settings)
    await app.start()
    try:
        ready = app.service.definitions_ready
        assert ready is not None
        await asyncio.wait_for(ready.wait(), 30)
        assert name in await app.service.segments()

        async def entered() -> bool:
            records = await read_topic(kafka_settings, SEGMENTS)
            return any(
                r.key == customer.encode() and json.loads(r.value)["segment"] == name
                for r in records
            )

        await wait_for(entered)
        [record] = [
            json.loads(r.value)
            for r in await read_topic(kafka_settings, SEGMENTS)
            if r.key == customer.encode() and json.loads(r.value)["segment"] == name
        ]
        assert (record["type"], record["cause_event_id"]) == ("segment_entered", f"e-{unique}")
        assert [d.name for d in await app.service.repository.definitions()].count(name) == 1
    finally:
        await app.stop()
        await producer.stop()
