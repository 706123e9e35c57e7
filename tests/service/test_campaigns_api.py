"""Marketing's campaigns on the offers service: the HTTP API (create, list, edit, pause, resume),
what it publishes on `crm.campaigns`, and the offers the campaigns then issue from the profile
changes that follow (FastStream's test broker), budgets included."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from faststream.kafka import TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage

from services.offers.app import create_app
from services.offers.campaigns import created
from services.offers.campaigns_api import CampaignsApi, build_router
from services.offers.service import OffersService
from services.offers.settings import HoldOut, OfferRules
from services.offers.store_sqlite import SqliteOffersRepository
from shared.auth import SqliteAuditLog, TokenTable, token_hash
from shared.campaigns import CampaignChanged, CampaignSpec
from shared.edge import dump
from shared.events import OFFER_EVENT, ClockTicked, OfferEvent
from shared.settings import HttpSettings, KafkaSettings, Settings, StoreSettings
from shared.skeleton import ServiceApp
from shared.storage import StoreLocation
from shared.topics import CAMPAIGNS, CLOCK, OFFERS, PROFILES_CHANGED
from tests.unit.test_offers_domain import purchase, signup

UTC = dt.UTC
TOKENS = {"marketing": "marketing-token", "agent": "agent-token", "admin": "admin-token"}
COFFEE: dict[str, Any] = {
    "name": "Coffee lovers",
    "trigger": {
        "type": "purchase",
        "sku": "COFFEE-1KG",
        "min_checkouts": 2,
        "window_days": 30,
        "cooldown_days": 0,
    },
    "audience": {"segment": "all"},
    "offer": {"discount_percent": "15", "scope": "sku", "sku": "COFFEE-1KG", "validity_days": 14},
    "starts_on": None,
    "ends_on": None,
    "holdout_percent": 0,
}


def settings() -> Settings:
    tokens = ",".join(f"{role}:{token_hash(token)}" for role, token in TOKENS.items())
    return Settings(
        kafka=KafkaSettings(kafka_bootstrap="test:9092"),
        store=StoreSettings(store_url="memory://"),
        http=HttpSettings(api_tokens=tokens),
    )


def auth(role: str = "marketing") -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


@dataclass
class Marketing:
    app: ServiceApp[OffersService]
    broker: Any
    http: httpx.AsyncClient
    audit: SqliteAuditLog
    offers: list[OfferEvent] = field(default_factory=list)
    published: list[bytes] = field(default_factory=list)
    """Raw bytes of every record published on crm.campaigns."""
    serial: int = 0

    def issued(self, campaign_id: str) -> list[Any]:
        return [e for e in self.offers if e.type == "offer_issued" and e.campaign_id == campaign_id]

    async def buy(
        self, customer: str, sku: str = "COFFEE-1KG", *, coupons: tuple[str, ...] = ()
    ) -> None:
        """A checkout of `sku` now (after any campaign created so far)."""
        self.serial += 1
        when = dt.datetime.now(UTC) + dt.timedelta(microseconds=self.serial)
        event = purchase(
            f"{customer}-k{self.serial}", when, (sku,), customer=customer, coupons=coupons
        )
        await self.broker.publish(dump(event), PROFILES_CHANGED, key=customer.encode())

    async def sign_up(self, *customers: str) -> None:
        for customer in customers:
            await self.broker.publish(
                dump(signup(event_id=f"s-{customer}", customer=customer)),
                PROFILES_CHANGED,
                key=customer.encode(),
            )


@pytest.fixture
async def marketing() -> AsyncIterator[Marketing]:
    repository = await SqliteOffersRepository.open(StoreLocation.parse("memory://"))
    audit = await SqliteAuditLog.open(StoreLocation.parse("memory://"))
    app = create_app(
        settings(), repository=repository, rules=OfferRules(holdout=HoldOut(percent=Decimal(0)))
    )
    offers: list[OfferEvent] = []
    published: list[bytes] = []

    @app.broker.subscriber(OFFERS, batch=False)
    async def collect(_: object, message: KafkaMessage) -> None:
        offers.append(OFFER_EVENT.validate_json(message.body))

    @app.broker.subscriber(CAMPAIGNS, batch=False)
    async def campaigns(_: object, message: KafkaMessage) -> None:
        published.append(message.body)

    api = FastAPI()
    tokens = TokenTable.parse(settings().http.api_tokens.get_secret_value())  # type: ignore[union-attr]
    api.include_router(build_router(CampaignsApi(app, audit=audit), tokens))
    async with (
        TestKafkaBroker(app.broker) as broker,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://crm") as http,
    ):
        yield Marketing(app, broker, http, audit, offers, published)
    await repository.close()
    await audit.close()


async def test_a_campaign_created_through_the_api_issues_to_the_customers_its_trigger_selects(
    marketing: Marketing,
) -> None:
    await marketing.sign_up("c-1", "c-2")
    response = await marketing.http.post("/api/campaigns", json=COFFEE, headers=auth())
    assert response.status_code == 201
    assert response.json() == {"campaign_id": "coffee-lovers", "status": "active", "version": 1}
    [raw] = marketing.published
    record = CampaignChanged.model_validate_json(raw)
    assert (record.campaign_id, record.history[0].action) == ("coffee-lovers", "created")
    assert record.history[0].by == token_hash(TOKENS["marketing"])[:12]
    await marketing.buy("c-1")
    await marketing.buy("c-1")
    await marketing.buy("c-2")  # once only: not enough
    await marketing.buy("c-2", "TEA")
    [offer] = marketing.issued("coffee-lovers")
    assert (offer.customer_id, offer.sku, offer.discount_percent) == (
        "c-1",
        "COFFEE-1KG",
        Decimal(15),
    )
    view = (await marketing.http.get("/api/campaigns/coffee-lovers", headers=auth())).json()
    assert view["counts"]["issued"] == 1
    assert view["status"] == "active"
    listed = (await marketing.http.get("/api/campaigns", headers=auth())).json()["campaigns"]
    assert {c["campaign_id"] for c in listed} == {
        "anniversary",
        "birthday",
        "coffee-lovers",
        "frequent-item",
        "win-back",
    }
    [entry] = await marketing.audit.latest(5)
    assert (entry.action, entry.subject, entry.role) == (
        "campaign_created",
        "coffee-lovers",
        "marketing",
    )


async def test_a_paused_campaign_issues_nothing_and_resumed_issues_again(
    marketing: Marketing,
) -> None:
    await marketing.sign_up("c-1")
    await marketing.http.post("/api/campaigns", json=COFFEE, headers=auth())
    paused = await marketing.http.post("/api/campaigns/coffee-lovers/pause", headers=auth())
    assert paused.json()["status"] == "paused"
    again = await marketing.http.post("/api/campaigns/coffee-lovers/pause", headers=auth())
    assert again.status_code == 200
    assert len(marketing.published) == 2  # pausing twice publishes once
    await marketing.buy("c-1")
    await marketing.buy("c-1")
    assert marketing.issued("coffee-lovers") == []
    resumed = await marketing.http.post("/api/campaigns/coffee-lovers/resume", headers=auth())
    assert resumed.json()["status"] == "active"
    await marketing.buy("c-1")
    assert len(marketing.issued("coffee-lovers")) == 1
    actions = [c["action"] for c in resumed.json()["history"]]
    assert actions == ["created", "paused", "resumed"]


async def test_a_campaign_whose_end_has_passed_issues_nothing(marketing: Marketing) -> None:
    await marketing.sign_up("c-1")
    ended = {**COFFEE, "ends_on": (dt.datetime.now(UTC).date() - dt.timedelta(days=1)).isoformat()}
    created_ = await marketing.http.post("/api/campaigns", json=ended, headers=auth())
    assert created_.json()["status"] == "ended"
    await marketing.buy("c-1")
    await marketing.buy("c-1")
    assert marketing.issued("coffee-lovers") == []


async def test_an_edit_is_a_new_version_from_now_on(marketing: Marketing) -> None:
    await marketing.sign_up("c-1")
    await marketing.http.post("/api/campaigns", json=COFFEE, headers=auth())
    richer = {**COFFEE, "offer": {**COFFEE["offer"], "discount_percent": "25"}}
    edited = await marketing.http.put("/api/campaigns/coffee-lovers", json=richer, headers=auth())
    assert edited.status_code == 200
    assert edited.json()["version"] == 2
    await marketing.buy("c-1")
    await marketing.buy("c-1")
    [offer] = marketing.issued("coffee-lovers")
    assert offer.discount_percent == Decimal(25)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**COFFEE, "trigger": {"type": "purchase", "min_checkouts": 2}}, "trigger"),
        ({**COFFEE, "offer": {**COFFEE["offer"], "discount_percent": "0"}}, "discount_percent"),
        ({**COFFEE, "audience": {"segment": "Not A Name!"}}, "segment"),
        ({**COFFEE, "surprise": 1}, "surprise"),
    ],
)
async def test_an_invalid_campaign_gets_422_naming_the_field_and_changes_nothing(
    marketing: Marketing, body: dict[str, Any], field: str
) -> None:
    response = await marketing.http.post("/api/campaigns", json=body, headers=auth())
    assert response.status_code == 422
    assert any(field in [str(p) for p in error["loc"]] for error in response.json()["detail"])
    assert marketing.published == []
    listed = (await marketing.http.get("/api/campaigns", headers=auth())).json()["campaigns"]
    assert len(listed) == 4


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/api/campaigns"),
        ("get", "/api/campaigns"),
        ("get", "/api/campaigns/birthday"),
        ("put", "/api/campaigns/birthday"),
        ("post", "/api/campaigns/birthday/pause"),
        ("post", "/api/campaigns/birthday/resume"),
    ],
)
async def test_every_campaign_route_wants_the_marketing_role(
    marketing: Marketing, method: str, path: str
) -> None:
    body = {"json": COFFEE} if method in ("post", "put") and path.count("/") <= 3 else {}
    send = getattr(marketing.http, method)
    assert (await send(path, **body)).status_code == 401
    assert (await send(path, headers={"Authorization": "Bearer wrong"}, **body)).status_code == 401
    assert (await send(path, headers=auth("agent"), **body)).status_code == 403
    assert (await send(path, headers=auth("admin"), **body)).status_code in (200, 201)


async def test_a_campaign_created_after_a_checkout_was_processed_still_applies_to_it(
    marketing: Marketing,
) -> None:
    # The checkouts came after the campaign's creation time but were processed first (the
    # record reached this instance later): the next batch takes their decisions again.
    service = marketing.app.service
    await marketing.sign_up("c-1")
    created_at = dt.datetime.now(UTC)
    await marketing.buy("c-1")
    await marketing.buy("c-1")
    assert marketing.issued("coffee-lovers") == []
    await service.apply_campaigns(
        [created("coffee-lovers", CampaignSpec.model_validate(COFFEE), at=created_at, by="t")]
    )
    await marketing.broker.publish(dump(ClockTicked(date=dt.datetime.now(UTC).date())), CLOCK)
    assert len(marketing.issued("coffee-lovers")) == 1


async def test_a_budget_is_never_overspent_and_then_the_campaign_stops_issuing(
    marketing: Marketing,
) -> None:
    customers = [f"c-{n}" for n in range(4)]
    await marketing.sign_up(*customers)
    once = {**COFFEE["trigger"], "cooldown_days": None}  # one coupon per customer here
    budgeted = {**COFFEE, "trigger": once, "budget": {"max_redemptions": 2}}
    await marketing.http.post("/api/campaigns", json=budgeted, headers=auth())
    for customer in customers:
        await marketing.buy(customer)
        await marketing.buy(customer)
    codes = {e.customer_id: e.coupon_code for e in marketing.issued("coffee-lovers")}
    assert len(codes) == 4
    for customer in customers:
        await marketing.buy(customer, coupons=(codes[customer],))
    redeemed = [e for e in marketing.offers if e.type == "offer_redeemed"]
    rejected = [e for e in marketing.offers if e.type == "redemption_rejected"]
    assert len(redeemed) == 2
    assert [r.reason for r in rejected] == ["budget_spent", "budget_spent"]
    view = (await marketing.http.get("/api/campaigns/coffee-lovers", headers=auth())).json()
    assert view["status"] == "budget_spent"
    await marketing.sign_up("c-late")
    await marketing.buy("c-late")
    await marketing.buy("c-late")
    assert len(marketing.issued("coffee-lovers")) == 4  # spent: no new offer
