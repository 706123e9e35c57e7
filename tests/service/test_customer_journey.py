"""The customer journey over HTTP: the timeline and the agents' notes, on the profiles service
and FastStream's test broker (events in on crm.events, crm.offers and crm.deliveries sealed as
ingest seals them; notes out on crm.events and back in through the same subscriber)."""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from faststream.kafka import TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage

from services.profiles.app import create_app, routes
from services.profiles.service import ProfilesService
from services.profiles.store_sqlite import SqliteProfilesRepository
from shared.auth import token_hash
from shared.events import (
    ConsentChanged,
    CustomerErased,
    CustomerSignedUp,
    DeliveryRecorded,
    InteractionRecorded,
    NormalizedEvent,
    OfferIssued,
    OfferRedeemed,
    PurchaseLine,
    PurchaseRecorded,
)
from shared.export import tokens_of
from shared.http import guard
from shared.settings import CalendarSettings, HttpSettings, KafkaSettings, Settings, StoreSettings
from shared.skeleton import ServiceApp
from shared.storage import StoreLocation
from shared.topics import DELIVERIES, EVENTS, OFFERS
from shared.vault import seal
from shared.vault_sqlite import SqliteVault

T0 = dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)
NOW = dt.datetime(2026, 3, 20, 9, 0, tzinfo=dt.UTC)
TOKENS = {role: f"{role}-secret-token" for role in ("agent", "marketing", "till", "admin")}
CID = "c-ana"
NOTE = "Called about the broken kettle from Rua das Flores; promised a call back."


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def settings() -> Settings:
    tokens = ",".join(f"{role}:{token_hash(token)}" for role, token in TOKENS.items())
    return Settings(
        kafka=KafkaSettings(kafka_bootstrap="test:9092"),
        store=StoreSettings(store_url="memory://"),
        http=HttpSettings(api_tokens=tokens),
        calendar=CalendarSettings(
            timezone="Europe/Paris", store_timezones={"S002": "America/New_York"}
        ),
    )


@dataclass
class Api:
    app: ServiceApp[ProfilesService]
    repo: SqliteProfilesRepository
    vault: SqliteVault
    client: httpx.AsyncClient
    events: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    """What went out on crm.events (the notes), as published."""

    async def fold(self, *events: NormalizedEvent) -> None:
        """Customer events as ingest publishes them: personal fields sealed."""
        for event in events:
            cid = event.customer_id or ""
            key = (await self.vault.create([cid], T0))[cid]
            await self.app.broker.publish(seal(event, key), EVENTS, key=cid.encode())

    async def offer(self, *events: OfferIssued | OfferRedeemed) -> None:
        for event in events:
            await self.app.broker.publish(
                event.model_dump_json().encode(), OFFERS, key=event.customer_id.encode()
            )

    async def delivery(self, *events: DeliveryRecorded) -> None:
        for event in events:
            await self.app.broker.publish(
                event.model_dump_json().encode(), DELIVERIES, key=event.customer_id.encode()
            )

    async def timeline(self, query: str = "", role: str = "agent") -> httpx.Response:
        return await self.client.get(f"/api/customers/{CID}/timeline{query}", headers=auth(role))


async def open_api() -> AsyncIterator[Api]:
    repo = await SqliteProfilesRepository.open(StoreLocation.parse("memory://"))
    vault = await SqliteVault.open(StoreLocation.parse("memory://"))
    app = create_app(settings(), repository=repo, clock=lambda: NOW, vault=vault)
    web = FastAPI()
    web.include_router(routes(app))
    guard(web, tokens_of(app.settings), app.settings.http)  # body limits, headers
    transport = httpx.ASGITransport(app=web)
    events: list[tuple[bytes | None, bytes]] = []

    @app.broker.subscriber(EVENTS, batch=False, group_id="journey-test")
    async def on_event(_: Any, message: KafkaMessage) -> None:
        events.append((message.raw_message.key, message.body))  # type: ignore[union-attr]

    async with (
        TestKafkaBroker(app.broker),
        httpx.AsyncClient(transport=transport, base_url="http://crm.test") as client,
    ):
        yield Api(app, repo, vault, client, events)
    await repo.close()
    await vault.close()


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async for opened in open_api():
        yield opened


def signup() -> CustomerSignedUp:
    return CustomerSignedUp(
        event_id="customer:s1",
        occurred_at=T0,
        customer_id=CID,
        card_id="card-hash-1",
        email="ana@example.com",
        first_name="Ana",
        marketing_consent=True,
        store_id="S001",
        source="desk",
        channel="email",
        consent_text_version="2026-01",
    )


def purchase(n: int, store: str = "S002") -> PurchaseRecorded:
    line = PurchaseLine(
        sku="KETTLE", category="kitchen", quantity=Decimal(1), unit_price=Decimal("24.90"),
        amount=Decimal("24.90"),
    )  # fmt: skip
    return PurchaseRecorded(
        event_id=f"till-{n}",
        occurred_at=T0 + dt.timedelta(days=n),
        customer_id=CID,
        card_id="card-hash-1",
        store_id=store,
        currency="EUR",
        lines=(line, line.model_copy(update={"sku": "TEA"})),
        total=Decimal("49.80"),
    )


def interaction() -> InteractionRecorded:
    return InteractionRecorded(
        event_id="interaction:i1",
        occurred_at=T0 + dt.timedelta(days=2, hours=1),
        customer_id=CID,
        interaction_type="social_like",
        channel="instagram",
        details={"brand": "Acme", "sentiment": "positive", "topic": "kettles"},
    )


def withdrawal() -> ConsentChanged:
    return ConsentChanged(
        event_id="customer:c1",
        occurred_at=T0 + dt.timedelta(days=4),
        customer_id=CID,
        marketing_consent=False,
        source="web",
        channel="email",
        consent_text_version="2026-01",
    )


def issued() -> OfferIssued:
    return OfferIssued(
        offer_id="o-1",
        customer_id=CID,
        kind="frequent_item",
        coupon_code="KET-123",
        discount_percent=Decimal(10),
        sku="KETTLE",
        product_name="Kettle",
        valid_from=dt.date(2026, 3, 2),
        valid_until=dt.date(2026, 3, 16),
        issued_at=T0 + dt.timedelta(days=1, minutes=1),
        template="frequent_item",
    )


def redeemed() -> OfferRedeemed:
    return OfferRedeemed(
        offer_id="o-1",
        customer_id=CID,
        kind="frequent_item",
        coupon_code="KET-123",
        redeemed_at=T0 + dt.timedelta(days=3),
        checkout_event_id="till-3",
        store_id="S002",
        basket_total=Decimal("49.80"),
        discount=Decimal("2.49"),
    )


def delivery(state: str, minutes: int) -> DeliveryRecorded:
    return DeliveryRecorded(
        offer_id="o-1",
        customer_id=CID,
        state=state,  # type: ignore[arg-type]
        attempts=1,
        message_id="<o-1@crm>",
        recorded_at=T0 + dt.timedelta(days=1, minutes=minutes),
    )


async def whole_journey(api: Api) -> None:
    await api.fold(signup(), purchase(1), interaction(), purchase(3), withdrawal())
    await api.offer(issued(), redeemed())
    await api.delivery(delivery("sent", 5), delivery("bounced", 9))


async def test_the_timeline_lists_the_journey_newest_first_in_the_stores_time(api: Api) -> None:
    await whole_journey(api)
    answer = await api.timeline()
    assert answer.status_code == 200
    assert answer.headers["cache-control"] == "no-store"
    page = answer.json()
    assert page["next"] is None
    assert [e["type"] for e in page["entries"]] == [
        "consent",
        "purchase",
        "offer_redeemed",
        "interaction",
        "email",
        "email",
        "offer_issued",
        "purchase",
        "signup",
    ]
    by_id = {e["id"]: e for e in page["entries"]}
    bought = by_id["purchase/till-1"]
    assert bought["at"] == "2026-03-02T10:00:00Z"
    # The store's own time; Paris (CRM_TIMEZONE) for the entries without a store.
    assert bought["local_at"] == "2026-03-02T05:00:00-05:00"
    assert bought["zone"] == "America/New_York"
    assert bought["details"] == {"total": "49.80", "currency": "EUR", "lines": 2}
    liked = by_id["interaction/interaction:i1"]
    assert liked["local_at"] == "2026-03-03T12:00:00+01:00"
    assert liked["details"] == {
        "interaction_type": "social_like",
        "channel": "instagram",
        "detail_brand": "Acme",
        "detail_sentiment": "positive",
        "detail_topic": "kettles",
    }
    assert by_id["signup/customer:s1"]["details"] == {
        "marketing_consent": True,
        "source": "desk",
        "channel": "email",
        "consent_text_version": "2026-01",
    }
    assert by_id["consent/customer:c1"]["details"]["source"] == "web"
    assert by_id["email/o-1/bounced"]["details"]["state"] == "bounced"
    assert by_id["offer_redeemed/o-1"]["details"]["discount"] == "2.49"
    # The customer page's data: the consent history, newest first.
    view = (await api.client.get(f"/api/customers/{CID}", headers=auth("agent"))).json()
    assert [(c["given"], c["source"], c["text_version"]) for c in view["consent_history"]] == [
        (False, "web", "2026-01"),
        (True, "desk", "2026-01"),
    ]


async def test_pages_follow_the_cursor_and_a_type_filter_keeps_only_those_types(api: Api) -> None:
    await whole_journey(api)
    seen: list[str] = []
    query = "?limit=4"
    while True:
        page = (await api.timeline(query)).json()
        seen += [e["id"] for e in page["entries"]]
        if page["next"] is None:
            break
        query = f"?limit=4&before={page['next']}"
    whole = [e["id"] for e in (await api.timeline()).json()["entries"]]
    assert seen == whole
    assert len(whole) == 9
    only = (await api.timeline("?type=purchase&type=consent")).json()["entries"]
    assert [e["id"] for e in only] == ["consent/customer:c1", "purchase/till-3", "purchase/till-1"]
    assert (await api.timeline("?before=not-a-cursor")).status_code == 422
    assert (await api.timeline("?type=unknown")).status_code == 422


async def test_the_same_events_in_another_order_give_the_same_timeline() -> None:
    events: list[NormalizedEvent] = [signup(), purchase(1), interaction(), purchase(3)]
    events.append(withdrawal())
    answers = []
    for seed in (1, 2):
        shuffled = list(events)
        random.Random(seed).shuffle(shuffled)
        async for api in open_api():
            for event in shuffled:  # one at a time, and redelivered
                await api.fold(event)
            await api.fold(shuffled[0])
            await api.delivery(delivery("bounced", 9), delivery("sent", 5))
            await api.offer(issued(), redeemed())
            answers.append((await api.timeline()).content)
    assert answers[0] == answers[1]
    assert b"purchase/till-3" in answers[0]


async def test_a_note_goes_out_sealed_on_the_events_topic_and_shows_in_the_timeline(
    api: Api,
) -> None:
    await api.fold(signup())
    answer = await api.client.post(
        f"/api/customers/{CID}/notes", json={"text": NOTE}, headers=auth("agent")
    )
    assert answer.status_code == 202
    note_id = answer.json()["note_id"]
    notes = [(k, v) for k, v in api.events if json.loads(v)["type"] == "note_added"]
    assert len(notes) == 1
    key, value = notes[0]
    assert key == CID.encode()
    assert NOTE.encode() not in value  # sealed with the customer's key
    assert json.loads(value)["text"]["enc"] == "aes256gcm"
    entries = (await api.timeline("?type=note")).json()["entries"]
    assert [(e["id"], e["details"]["text"]) for e in entries] == [(f"note/{note_id}", NOTE)]
    assert entries[0]["details"]["author"] == token_hash(TOKENS["agent"])[:12]
    # Audited: who added a note, to which customer.
    audit = (await api.client.get("/api/audit", headers=auth("admin"))).json()
    assert {
        "action": "note_added",
        "customer_id": CID,
        "role": "agent",
        "token_id": token_hash(TOKENS["agent"])[:12],
    }.items() <= next(a for a in audit if a["action"] == "note_added").items()
    # The right of access gives the notes too.
    export = await api.client.get(
        f"/api/admin/customers/{CID}/export/profiles", headers=auth("admin")
    )
    assert export.status_code == 200
    assert NOTE in export.text


async def test_an_erasure_deletes_the_journey_and_its_notes(api: Api) -> None:
    await whole_journey(api)
    await api.client.post(f"/api/customers/{CID}/notes", json={"text": NOTE}, headers=auth("agent"))
    assert len((await api.timeline()).json()["entries"]) == 10
    erase = CustomerErased(event_id="customer:e1", occurred_at=NOW, customer_id=CID)
    await api.fold(erase)
    await api.vault.erase({CID: NOW})  # as ingest does before it publishes the erasure
    assert (await api.timeline()).status_code == 404
    assert await api.repo.timeline([CID], before=None, limit=100) == []
    # An offer event announced after the erasure, and a note redelivered: nothing comes back.
    await api.offer(issued())
    for value in [v for _, v in api.events if b"note_added" in v]:
        await api.app.broker.publish(value, EVENTS, key=CID.encode())
    assert await api.repo.timeline([CID], before=None, limit=100) == []
    export = await api.client.get(
        f"/api/admin/customers/{CID}/export/profiles", headers=auth("admin")
    )
    assert NOTE not in export.text
    assert export.json()["data"]["timeline"] == []
    late = await api.client.post(
        f"/api/customers/{CID}/notes", json={"text": NOTE}, headers=auth("agent")
    )
    assert late.status_code == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", f"/api/customers/{CID}/timeline"), ("POST", f"/api/customers/{CID}/notes")],
)
async def test_the_journey_needs_an_agent(api: Api, method: str, path: str) -> None:
    await api.fold(signup())
    body = {"text": "hello"}
    anonymous = await api.client.request(method, path, json=body)
    assert anonymous.status_code == 401
    for role in ("marketing", "till"):
        assert (
            await api.client.request(method, path, json=body, headers=auth(role))
        ).status_code == 403
    assert (await api.client.request(method, path, json=body, headers=auth("agent"))).is_success


async def test_a_note_is_bounded_and_an_unknown_customer_takes_none(api: Api) -> None:
    await api.fold(signup())
    notes = f"/api/customers/{CID}/notes"
    too_long = await api.client.post(notes, json={"text": "x" * 2001}, headers=auth("agent"))
    assert too_long.status_code == 422
    huge = await api.client.post(notes, json={"text": "x" * 20_000}, headers=auth("agent"))
    assert huge.status_code == 413
    empty = await api.client.post(notes, json={"text": ""}, headers=auth("agent"))
    assert empty.status_code == 422
    unknown = await api.client.post(
        "/api/customers/nobody/notes", json={"text": "hi"}, headers=auth("agent")
    )
    assert unknown.status_code == 404
    assert [v for _, v in api.events if b"note_added" in v] == []
