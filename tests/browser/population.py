"""A small known population behind the API and the web page: one customer, coupons, campaigns
(and stand-ins for the campaigns and segments APIs)."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field
from decimal import Decimal

from fastapi import FastAPI

from services.profiles.api import LookupApi, build_router
from services.profiles.domain import (
    CustomerProfile,
    InteractionEntry,
    RecentPurchase,
    SkuStats,
    fold_coupons,
)
from services.profiles.store_sqlite import SqliteProfilesRepository
from services.reports.app import ReportsLoader, add_web_routes, build_reports_router
from services.reports.domain import Campaign, Line, Purchase, Redemption
from services.reports.settings import ReportsSettings, StoreGoal
from services.reports.store import campaign_fact, delivery_fact, purchase_fact, redemption_fact
from services.reports.store_sqlite import SqliteReportsRepository
from shared.auth import SqliteAuditLog, TokenTable, token_hash
from shared.events import OfferIssued, OfferRedeemed
from shared.http import guard
from shared.privacy import card_id, customer_id_for_card
from shared.settings import HttpSettings, PrivacySettings, Settings
from shared.storage import StoreLocation
from tests.browser.marketing_api import MarketingApi

CARD = "6035 1234 5678 9012"
OTHER_CARD = "6035-0000-0000-0001"
TOKENS = {
    "agent": "agent-secret-token",
    "marketing": "marketing-secret-token",
    "admin": "admin-secret-token",
}
KEY = b"test-card-key"
TODAY = dt.datetime.now(dt.UTC).date()
UTC = dt.UTC


def settings() -> Settings:
    tokens = ",".join(f"{role}:{token_hash(token)}" for role, token in TOKENS.items())
    return Settings(
        http=HttpSettings(api_tokens=tokens),  # type: ignore[arg-type]
        privacy=PrivacySettings(card_key=KEY.decode()),  # type: ignore[arg-type]
    )


MEMORY = StoreLocation.parse("memory://")


@dataclass
class World:
    settings: Settings
    profiles: SqliteProfilesRepository
    reports: SqliteReportsRepository
    audit: SqliteAuditLog
    customer_id: str
    open_code: str
    used_code: str
    marketing: MarketingApi = field(default_factory=MarketingApi.seeded)
    """The campaigns and segments APIs (the offers' and the profiles'), stood in for."""

    def api(self) -> FastAPI:
        app = FastAPI(title="crm-stream test")
        tokens = TokenTable.parse(self.settings.http.api_tokens.get_secret_value())  # type: ignore[union-attr]
        lookup = LookupApi(self.settings, self.profiles, audit=self.audit)
        app.include_router(build_router(lookup, tokens))
        router = build_reports_router(
            ReportsLoader(repository=self.reports),
            tokens,
            ReportsSettings(
                store_goals={"S001": StoreGoal(revenue=Decimal(2000), visits=100)},
                store_teams={"North": ["S001", "S002"]},
            ),
        )
        add_web_routes(router)
        app.include_router(router)
        app.include_router(self.marketing.router(tokens))
        guard(app, tokens, self.settings.http)  # the headers and limits of a real process
        return app


def _offer(
    offer_id: str, customer_id: str, code: str, kind: str, day: dt.date, sku: str | None
) -> OfferIssued:
    return OfferIssued(
        offer_id=offer_id,
        customer_id=customer_id,
        kind=kind,
        coupon_code=code,  # type: ignore[arg-type]
        discount_percent=Decimal(10),
        sku=sku,
        product_name="Milk 1 l" if sku else None,
        valid_from=day,
        valid_until=day + dt.timedelta(days=14),
        issued_at=dt.datetime.combine(day, dt.time(9), tzinfo=UTC),
        template=kind,
    )


async def build_world() -> World:
    s = settings()
    profiles = await SqliteProfilesRepository.open(MEMORY)
    reports = await SqliteReportsRepository.open(MEMORY)
    audit = await SqliteAuditLog.open(MEMORY)
    card = card_id(CARD, KEY)
    customer_id = customer_id_for_card(card)
    last = dt.datetime.combine(TODAY - dt.timedelta(days=2), dt.time(11), tzinfo=UTC)
    profile = CustomerProfile(
        customer_id=customer_id,
        card_ids=[card],
        registered=True,
        email="ana@example.com",
        first_name="Ana",
        marketing_consent=True,
        home_store_id="S001",
        first_purchase_at=last - dt.timedelta(days=20),
        last_purchase_at=last,
        visits=3,
        total_spend=Decimal("42.50"),
        skus={
            "MILK-1L": SkuStats(
                name="Milk 1 l",
                category="dairy",
                quantity=Decimal(6),
                spend=Decimal("7.14"),
                checkouts=3,
                last_bought_at=last,
            )
        },
        recent_purchases=[
            RecentPurchase(
                event_id="p-1",
                at=last,
                store_id="S001",
                total=Decimal("12.50"),
                lines=2,
                skus=["MILK-1L", "BREAD"],
            )
        ],
        latest_interactions=[
            InteractionEntry(
                event_id="i-1",
                type="support_ticket",
                channel="phone",
                at=last,
                details={"topic": "billing"},
            )
        ],
        interactions={"support_ticket": 1},
        version=1,
    )
    await profiles.save_many([profile])
    open_offer = _offer(
        "of-open",
        customer_id,
        "OPEN-CODE-0001",
        "frequent_item",
        TODAY - dt.timedelta(days=1),
        "MILK-1L",
    )
    used_offer = _offer(
        "of-used", customer_id, "USED-CODE-0002", "birthday", TODAY - dt.timedelta(days=5), None
    )
    redemption = OfferRedeemed(
        offer_id="of-used",
        customer_id=customer_id,
        kind="birthday",
        coupon_code="USED-CODE-0002",
        redeemed_at=last,
        checkout_event_id="p-1",
        store_id="S001",
        basket_total=Decimal("12.50"),
    )
    # The coupons as the profiles service folds them from crm.offers.
    coupons = fold_coupons({}, [open_offer, used_offer, redemption])
    await profiles.save_many([], list(coupons.values()))
    await reports.add(campaign_population())
    return World(s, profiles, reports, audit, customer_id, "OPEN-CODE-0001", "USED-CODE-0002")


COMPANIONS = {"COFFEE": "MILK-1L", "BREAD": "EGGS-10"}


def campaign_population() -> list:  # type: ignore[type-arg]
    """Three weeks of frequent-item and birthday campaigns; treated customers spend about 8 more."""
    rng = random.Random(11)
    facts = []
    n = 0
    for week in range(3):
        start = TODAY - dt.timedelta(days=7 * (3 - week))
        at = dt.datetime.combine(start, dt.time(9), tzinfo=UTC)
        for kind in ("frequent_item", "birthday"):
            for i in range(60):
                customer = f"c-{kind}-{week}-{i}"
                held = i % 6 == 0
                offer_id = f"o-{kind}-{week}-{i}"
                facts.append(
                    campaign_fact(
                        Campaign(
                            offer_id,
                            customer,
                            kind,
                            at,
                            start,
                            start + dt.timedelta(days=6),
                            held_out=held,
                        )
                    )
                )  # type: ignore[arg-type]
                for _ in range(2 if held else 3):
                    n += 1
                    day = start + dt.timedelta(days=rng.randint(0, 6))
                    amount = Decimal(rng.randint(400, 1600)) / 100
                    sku = rng.choice(["MILK-1L", "BREAD", "EGGS-10", "COFFEE"])
                    lines = [Line(sku, "grocery", Decimal(1), amount)]
                    if n % 3 == 0 and sku in COMPANIONS:  # bought together, for the products page
                        lines.append(Line(COMPANIONS[sku], "grocery", Decimal(1), Decimal(0)))
                    facts.append(
                        purchase_fact(
                            Purchase(
                                f"p-{n}",
                                customer,
                                rng.choice(["S001", "S002"]),
                                dt.datetime.combine(day, dt.time(12), tzinfo=UTC),
                                day,
                                amount,
                                tuple(lines),
                            )
                        )
                    )
                if not held:
                    facts.append(delivery_fact(offer_id, customer, "sent"))
                    if i % 3 == 1:
                        facts.append(
                            redemption_fact(
                                Redemption(offer_id, at + dt.timedelta(days=1), Decimal(20)),
                                customer,
                            )
                        )
    return facts
