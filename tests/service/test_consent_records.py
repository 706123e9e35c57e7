"""Consent records: where each consent statement came from (source, channel, wording version)
travels from the raw customer event through ingest and profiles to the customer page and its
timeline (GDPR art. 7(1): consent must be demonstrable). Ingest and profiles run on FastStream's
test broker over one key vault; the page's data is read over HTTP."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from faststream.kafka import TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage

from services.ingest.app import create_app as create_ingest
from services.ingest.store_sqlite import SqliteIngestRepository
from services.profiles.app import create_app as create_profiles
from services.profiles.app import routes
from services.profiles.store_sqlite import SqliteProfilesRepository
from shared.auth import token_hash
from shared.privacy import card_id, customer_id_for_card
from shared.settings import DEV_CARD_KEY, HttpSettings, KafkaSettings, Settings, StoreSettings
from shared.storage import StoreLocation
from shared.topics import CUSTOMERS_RAW, EVENTS
from shared.vault_sqlite import SqliteVault

CARD = "6035 9999 0000 1234"
T0 = dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)
NOW = T0 + dt.timedelta(days=10)
AGENT = "agent-secret-token"

Record = tuple[bytes | None, bytes]


def settings() -> Settings:
    return Settings(
        kafka=KafkaSettings(kafka_bootstrap="test:9092"),
        store=StoreSettings(store_url="memory://"),
        http=HttpSettings(api_tokens=f"agent:{token_hash(AGENT)}"),
    )


def raw(event_id: str, kind: str, at: dt.datetime, **fields: Any) -> bytes:
    document = {"event_id": event_id, "type": kind, "occurred_at": at.isoformat()}
    return json.dumps(document | {"card_number": CARD} | fields).encode()


@pytest.fixture
async def vault() -> AsyncIterator[SqliteVault]:
    opened = await SqliteVault.open(StoreLocation.parse("memory://"))
    yield opened
    await opened.close()


async def ingested(vault: SqliteVault, *messages: bytes) -> list[Record]:
    repo = await SqliteIngestRepository.open(StoreLocation.parse("memory://"))
    app = create_ingest(settings(), repository=repo, vault=vault)
    published: list[Record] = []

    @app.broker.subscriber(EVENTS)
    async def collect(message: KafkaMessage) -> None:
        published.append((message.raw_message.key, message.body))  # type: ignore[union-attr]

    async with TestKafkaBroker(app.broker) as broker:
        for value in messages:
            await broker.publish(value, CUSTOMERS_RAW, key=b"desk-7")
    await repo.close()
    return published


async def test_consent_statements_keep_source_channel_and_wording_up_to_the_customer_page(
    vault: SqliteVault,
) -> None:
    records = await ingested(
        vault,
        raw(
            "s1",
            "signup",
            T0,
            email="rui@example.com",
            marketing_consent=True,
            source="desk",
            channel="email",
            consent_text_version="2026-01",
        ),
        raw("c1", "consent", T0 + dt.timedelta(days=2), marketing_consent=False, source="WEB"),
        # An old producer, without the extension: still taken, its record says nothing more.
        raw("c2", "consent", T0 + dt.timedelta(days=3), marketing_consent=True),
    )
    normalized = [json.loads(v) for _, v in records]
    assert [(e["type"], e["source"], e["channel"]) for e in normalized] == [
        ("customer_signed_up", "desk", "email"),
        ("consent_changed", "web", None),
        ("consent_changed", None, None),
    ]
    assert normalized[0]["consent_text_version"] == "2026-01"

    repo = await SqliteProfilesRepository.open(StoreLocation.parse("memory://"))
    app = create_profiles(settings(), repository=repo, clock=lambda: NOW, vault=vault)
    web = FastAPI()
    web.include_router(routes(app))
    customer = customer_id_for_card(card_id(CARD, DEV_CARD_KEY.encode()))
    headers = {"Authorization": f"Bearer {AGENT}"}
    async with (
        TestKafkaBroker(app.broker) as broker,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://t") as client,
    ):
        for key, value in reversed(records):  # in any order: the history is by event time
            await broker.publish(value, EVENTS, key=key)
        page = (await client.get(f"/api/customers/{customer}", headers=headers)).json()
        journey = await client.get(
            f"/api/customers/{customer}/timeline?type=consent&type=signup", headers=headers
        )
    await repo.close()
    assert [
        (c["at"], c["given"], c["source"], c["channel"], c["text_version"])
        for c in page["consent_history"]
    ] == [
        ("2026-03-04T10:00:00Z", True, None, None, None),
        ("2026-03-03T10:00:00Z", False, "web", None, None),
        ("2026-03-01T10:00:00Z", True, "desk", "email", "2026-01"),
    ]
    assert page["email_status"]["marketing_consent"] is True
    assert [(e["type"], e["details"].get("source")) for e in journey.json()["entries"]] == [
        ("consent", None),
        ("consent", "web"),
        ("signup", "desk"),
    ]
