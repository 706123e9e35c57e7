"""The look-up shows whether e-mail reaches a customer, and if not why and since when: bounces
come from the notifier's outcomes on crm.deliveries, consent and address from crm.events."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from faststream.kafka import TestKafkaBroker

from services.profiles.api import lookup_routes
from services.profiles.app import create_app
from services.profiles.service import ProfilesService
from services.profiles.store_sqlite import SqliteProfilesRepository
from shared.auth import token_hash
from shared.events import ConsentChanged, CustomerSignedUp, CustomerUpdated, DeliveryRecorded
from shared.privacy import card_id
from shared.settings import HttpSettings, KafkaSettings, Settings, StoreSettings
from shared.skeleton import ServiceApp
from shared.storage import StoreLocation
from shared.topics import DELIVERIES, EVENTS

T0 = dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)
CARD = "6035 1234 5678 9012"
AGENT = "agent-token"


@dataclass
class Lookup:
    app: ServiceApp[ProfilesService]
    card_id: str

    async def event(self, event: Any) -> None:
        await self.app.broker.publish(event.model_dump_json().encode(), EVENTS, key=b"c-1")

    async def bounce(self, at: dt.datetime, offer_id: str = "of-1") -> None:
        outcome = DeliveryRecorded(
            offer_id=offer_id,
            customer_id="c-1",
            state="bounced",
            attempts=1,
            message_id=f"<offer-{offer_id}@crm-stream>",
            recorded_at=at,
            reason="dsn_5.1.1",
        )
        await self.app.broker.publish(outcome.model_dump_json().encode(), DELIVERIES, key=b"c-1")

    async def email_status(self) -> dict[str, Any]:
        api = FastAPI()
        api.include_router(lookup_routes(self.app))
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://crm.test") as client:
            response = await client.post(
                "/api/customers/lookup",
                json={"card_number": CARD},
                headers={"Authorization": f"Bearer {AGENT}"},
            )
        assert response.status_code == 200, response.text
        status: dict[str, Any] = json.loads(response.content)["email_status"]
        return status

    def signup(self, at: dt.datetime = T0) -> CustomerSignedUp:
        return CustomerSignedUp(
            event_id="s1",
            occurred_at=at,
            customer_id="c-1",
            card_id=self.card_id,
            email="ana@example.com",
            first_name="Ana",
            marketing_consent=True,
        )


@pytest.fixture
async def lookup() -> AsyncIterator[Lookup]:
    settings = Settings(
        kafka=KafkaSettings(kafka_bootstrap="test:9092"),
        store=StoreSettings(store_url="memory://"),
        http=HttpSettings(api_tokens=f"agent:{token_hash(AGENT)}"),  # type: ignore[arg-type]
    )
    repo = await SqliteProfilesRepository.open(StoreLocation.parse("memory://"))
    app = create_app(settings, repository=repo, clock=lambda: T0 + dt.timedelta(days=30))
    card = card_id(CARD, settings.privacy.card_key.get_secret_value().encode())
    async with TestKafkaBroker(app.broker):
        yield Lookup(app, card)
    await repo.close()


def unreachable(reason: str, since: dt.datetime) -> dict[str, Any]:
    return {
        "has_email": True,
        "marketing_consent": reason != "unsubscribed",
        "reachable": False,
        "unreachable_reason": reason,
        "unreachable_since": since.isoformat().replace("+00:00", "Z"),
    }


async def test_bounced_customer_is_not_reachable_until_a_new_address(lookup: Lookup) -> None:
    await lookup.event(lookup.signup())
    assert (await lookup.email_status())["reachable"] is True

    bounced_at = T0 + dt.timedelta(days=1)
    await lookup.bounce(bounced_at)
    assert await lookup.email_status() == unreachable("bounced", bounced_at)

    await lookup.event(
        CustomerUpdated(
            event_id="u1",
            occurred_at=T0 + dt.timedelta(days=2),
            customer_id="c-1",
            email="ana@new.example",
        )
    )
    status = await lookup.email_status()
    assert (status["reachable"], status["unreachable_reason"]) == (True, None)


async def test_unsubscribed_customer_is_not_reachable_since_the_withdrawal(
    lookup: Lookup,
) -> None:
    await lookup.event(lookup.signup())
    withdrawn_at = T0 + dt.timedelta(days=3)
    await lookup.event(
        ConsentChanged(
            event_id="unsubscribe:c-1",
            occurred_at=withdrawn_at,
            customer_id="c-1",
            marketing_consent=False,
        )
    )

    assert await lookup.email_status() == unreachable("unsubscribed", withdrawn_at)


async def test_a_bounce_arriving_before_the_sign_up_counts_the_same(lookup: Lookup) -> None:
    bounced_at = T0 + dt.timedelta(days=1)
    await lookup.bounce(bounced_at)
    await lookup.event(lookup.signup())
    await lookup.bounce(T0 + dt.timedelta(hours=1), offer_id="of-0")  # an older one: no change

    assert await lookup.email_status() == unreachable("bounced", bounced_at)
