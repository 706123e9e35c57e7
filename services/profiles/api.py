"""The call-centre look-up API: a customer's profile, coupons and history, for agents.

`POST /api/customers/lookup` takes the card number in the body (never in a URL or a log), hashes
it with `CRM_CARD_KEY` like ingest does and finds the profile that card feeds;
`GET /api/customers/{customer_id}` reads it by its pseudonymous id. Both need the `agent` (or
`admin`) role, and each look-up is written to the audit log, which `admin` reads at
`GET /api/audit`.

Coupons come from the profiles service's own view of `crm.offers` (`coupons_of`), the profile
from its profiles; nothing here reads another service's store.
"""

# No `from __future__ import annotations`: FastAPI resolves the routes' Annotated
# dependencies, which name local variables, at definition time.

import datetime as dt
from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from services.profiles.domain import (
    Coupon,
    CouponState,
    CustomerProfile,
    SentimentCounts,
    UnreachableReason,
    reachability,
)
from services.profiles.service import ProfilesService
from services.profiles.store import ProfilesRepository, customer_export
from shared.auth import (
    AuditEntry,
    AuditLog,
    Principal,
    TokenTable,
    now_utc,
    open_audit_log,
    require,
)
from shared.events import OfferKind
from shared.export import export_router
from shared.logging import get_logger
from shared.marketing import Segment
from shared.privacy import InvalidCardNumber, card_id
from shared.settings import CalendarSettings, Settings, StoreSettings
from shared.skeleton import NotStarted, ServiceApp

log = get_logger(__name__)

LOOKUP_BODY_LIMIT = 1024
"""Bytes of a look-up's body: a card number in JSON."""

MAX_ALIAS_HOPS = 8
"""Aliases followed from a merged customer id to the live profile."""


class LookupRequest(BaseModel):
    """The card number travels in the body only."""

    model_config = ConfigDict(extra="forbid")

    card_number: str = Field(
        min_length=1, max_length=64, description="Card number, digits with spaces or dashes."
    )


class FavouriteView(BaseModel):
    key: str = Field(description="SKU or category.")
    checkouts: int = Field(description="Distinct checkouts containing it.")
    spend: Decimal = Field(description="Money spent on it.")


class PurchaseView(BaseModel):
    event_id: str = Field(description="The checkout's event id.")
    at: AwareDatetime = Field(description="When it happened.")
    local_at: AwareDatetime | None = Field(
        default=None,
        description="The same instant in the store's time zone (`CRM_STORE_TIMEZONES`, else "
        "`CRM_TIMEZONE`): the checkout's store, else the customer's home store.",
    )
    store_id: str = Field(description="Store of the checkout.")
    total: Decimal = Field(description="Basket total.")
    lines: int = Field(description="Basket lines.")
    skus: list[str] = Field(description="Distinct SKUs of the basket.")


class InteractionView(BaseModel):
    type: str = Field(description="Interaction type (support_ticket, email_open, ...).")
    channel: str | None = Field(description="Channel.")
    at: AwareDatetime = Field(description="When it happened.")
    local_at: AwareDatetime | None = Field(
        default=None,
        description="The same instant in the store's time zone (`CRM_STORE_TIMEZONES`, else "
        "`CRM_TIMEZONE`): the checkout's store, else the customer's home store.",
    )
    details: dict[str, str | int | float | bool | None] = Field(description="Details as sent.")


class CouponView(BaseModel):
    offer_id: str = Field(description="Offer id.")
    kind: OfferKind = Field(description="Rule that issued it.")
    coupon_code: str = Field(description="Coupon code.")
    discount_percent: Decimal = Field(description="Percentage off.")
    sku: str | None = Field(description="SKU it applies to; null = basket.")
    product_name: str | None = Field(description="Name of that product.")
    valid_from: dt.date = Field(description="First valid day.")
    valid_until: dt.date = Field(description="Last valid day.")
    state: CouponState = Field(
        description="Lifecycle state: issued, redeemed, expired, or revoked (offers withdrew "
        "it: its code no longer redeems)."
    )
    redeemed_at: AwareDatetime | None = Field(description="When it was redeemed.")
    discount: Decimal | None = Field(
        default=None, description="Money it took off the redeeming basket; null until redeemed."
    )


class CouponsView(BaseModel):
    open: list[CouponView] = Field(
        description="Issued coupons not yet redeemed, expired or revoked."
    )
    used: list[CouponView] = Field(
        description="Redeemed coupons (a coupon revoked after its redemption is in neither)."
    )


class EmailStatus(BaseModel):
    has_email: bool = Field(description="Whether an e-mail address is on file.")
    marketing_consent: bool = Field(description="Opt-in to marketing e-mail.")
    reachable: bool = Field(description="Whether offers and e-mails can be sent.")
    unreachable_reason: UnreachableReason | None = Field(
        default=None,
        description="Why not: `no_email`, `unsubscribed` (consent stated false), `no_consent` "
        "(never stated), `bounced` (the address bounced, during or after sending), `erased`; "
        "null when reachable.",
    )
    unreachable_since: AwareDatetime | None = Field(
        default=None,
        description="Since when: the time of the bounce or of the consent or address "
        "statement; null when reachable or not known.",
    )


class ConsentView(BaseModel):
    at: AwareDatetime = Field(description="When consent was stated.")
    local_at: AwareDatetime | None = Field(
        default=None,
        description="The same instant in the store's time zone (`CRM_STORE_TIMEZONES`, else "
        "`CRM_TIMEZONE`): the checkout's store, else the customer's home store.",
    )
    given: bool = Field(description="Given (true), or withdrawn or refused (false).")
    source: str | None = Field(description="Where: till, desk, web, unsubscribe_link, admin...")
    channel: str | None = Field(description="The channel it is for (email...).")
    text_version: str | None = Field(description="Version of the consent wording shown.")


class SentimentView(BaseModel):
    label: str = Field(description="Brand or category (lower case).")
    positive: int = Field(description="Positive opinions (likes...).")
    neutral: int = Field(description="Neutral opinions.")
    negative: int = Field(description="Negative opinions (dislikes, complaints...).")
    net_score: Decimal = Field(
        description="(positive - negative) / all opinions, in percent: -100 to +100."
    )


def _opinions(table: Mapping[str, SentimentCounts]) -> list[SentimentView]:
    """Most opinions first, then by label."""
    views = []
    for label, c in table.items():
        total = c.positive + c.neutral + c.negative
        net = Decimal((c.positive - c.negative) * 100) / total if total else Decimal(0)
        views.append(
            SentimentView(
                label=label,
                positive=c.positive,
                neutral=c.neutral,
                negative=c.negative,
                net_score=net.quantize(Decimal("0.1")),
            )
        )
    return sorted(views, key=lambda v: (-(v.positive + v.neutral + v.negative), v.label))


class CustomerView(BaseModel):
    """What an agent sees of a customer."""

    customer_id: str = Field(description="Pseudonymous customer id.")
    cards: int = Field(description="Cards feeding this profile.")
    registered: bool = Field(description="Whether the customer signed up.")
    first_name: str | None = Field(description="First name.")
    email: str | None = Field(description="E-mail address.")
    birth_date: dt.date | None = Field(description="Date of birth.")
    home_store_id: str | None = Field(description="Home store.")
    email_status: EmailStatus = Field(description="Consent and e-mail status.")
    visits: int = Field(description="Distinct checkouts.")
    total_spend: Decimal = Field(description="Money spent.")
    average_spend: Decimal = Field(description="Spend per visit.")
    first_purchase_at: AwareDatetime | None = Field(description="First checkout.")
    last_purchase_at: AwareDatetime | None = Field(description="Latest checkout.")
    recency_days: int | None = Field(description="Days since the latest checkout.")
    segment: Segment = Field(description="RFM segment (fixed thresholds).")
    favourite_products: list[FavouriteView] = Field(description="Top SKUs.")
    favourite_categories: list[FavouriteView] = Field(description="Top categories.")
    recent_purchases: list[PurchaseView] = Field(description="Latest checkouts, newest first.")
    coupons: CouponsView = Field(description="Open and used coupons.")
    coupons_presented: list[str] = Field(description="Codes listed at checkouts, sorted.")
    interactions: dict[str, int] = Field(description="Interactions per type.")
    latest_interactions: list[InteractionView] = Field(
        description="Latest interactions (support tickets, e-mail opens and clicks...), newest first."
    )
    consent_history: list[ConsentView] = Field(
        default_factory=list,
        description="Marketing consent statements, newest first: when, given or not, source, "
        "channel, wording version.",
    )
    sentiment_by_brand: list[SentimentView] = Field(
        default_factory=list,
        description="The customer's opinions per brand (social likes and dislikes, support "
        "tickets with a sentiment), most first.",
    )
    sentiment_by_category: list[SentimentView] = Field(
        default_factory=list, description="The customer's opinions per category, most first."
    )


def _coupon(coupon: Coupon) -> CouponView:
    return CouponView(
        offer_id=coupon.offer_id,
        kind=coupon.kind,
        coupon_code=coupon.coupon_code,
        discount_percent=coupon.discount_percent,
        sku=coupon.sku,
        product_name=coupon.product_name,
        valid_from=coupon.valid_from,
        valid_until=coupon.valid_until,
        state=coupon.state,
        redeemed_at=coupon.redeemed_at,
        discount=coupon.discount,
    )


def _email_status(profile: CustomerProfile) -> EmailStatus:
    reach = reachability(profile)
    return EmailStatus(
        has_email=profile.email is not None,
        marketing_consent=profile.marketing_consent,
        reachable=reach.reachable,
        unreachable_reason=reach.reason,
        unreachable_since=reach.since,
    )


def customer_view(
    profile: CustomerProfile,
    *,
    coupons: list[Coupon],
    today: dt.date,
    calendar: CalendarSettings | None = None,
) -> CustomerView:
    """The agent's view of a live profile (pure); times also in the store's time zone."""
    calendar = calendar or CalendarSettings()
    home = calendar.zone_of(profile.home_store_id)
    return CustomerView(
        customer_id=profile.customer_id,
        cards=len(profile.card_ids),
        registered=profile.registered,
        first_name=profile.first_name,
        email=profile.email,
        birth_date=profile.birth_date,
        home_store_id=profile.home_store_id,
        email_status=_email_status(profile),
        visits=profile.visits,
        total_spend=profile.total_spend,
        average_spend=profile.average_spend,
        first_purchase_at=profile.first_purchase_at,
        last_purchase_at=profile.last_purchase_at,
        recency_days=profile.recency_days(today),
        segment=profile.segment(today),
        favourite_products=[
            FavouriteView(key=f.key, checkouts=f.checkouts, spend=f.spend)
            for f in profile.favourite_products()
        ],
        favourite_categories=[
            FavouriteView(key=f.key, checkouts=f.checkouts, spend=f.spend)
            for f in profile.favourite_categories()
        ],
        recent_purchases=[
            PurchaseView(
                event_id=p.event_id,
                at=p.at,
                local_at=p.at.astimezone(calendar.zone_of(p.store_id)),
                store_id=p.store_id,
                total=p.total,
                lines=p.lines,
                skus=list(p.skus),
            )
            for p in reversed(profile.recent_purchases)
        ],
        coupons=CouponsView(
            open=[_coupon(c) for c in coupons if c.state == "issued"],
            used=[_coupon(c) for c in coupons if c.state == "redeemed"],
        ),
        coupons_presented=list(profile.coupons_redeemed),
        interactions=dict(profile.interactions),
        latest_interactions=[
            InteractionView(
                type=i.type,
                channel=i.channel,
                at=i.at,
                local_at=i.at.astimezone(home),
                details=dict(i.details),
            )
            for i in reversed(profile.latest_interactions)
        ],
        consent_history=[
            ConsentView(
                at=c.at,
                local_at=c.at.astimezone(home),
                given=c.given,
                source=c.source,
                channel=c.channel,
                text_version=c.text_version,
            )
            for c in reversed(profile.consent_history)
        ],
        sentiment_by_brand=_opinions(profile.sentiment_by_brand),
        sentiment_by_category=_opinions(profile.sentiment_by_category),
    )


class AuditSource:
    """The audit log of the profiles' APIs (look-up and segments), opened when first used:
    one for both, so `GET /api/audit` lists what either wrote, in-memory stores included."""

    def __init__(self, store: StoreSettings, audit: AuditLog | None = None) -> None:
        self._store = store
        self._audit = audit

    async def get(self) -> AuditLog:
        if self._audit is None:
            self._audit = await open_audit_log(self._store)
        return self._audit


class LookupApi:
    """The look-up's dependencies: the profiles repository (of the running service, or one
    given) and the audit log (given, or opened when first used)."""

    def __init__(
        self,
        settings: Settings,
        profiles: ProfilesRepository | None = None,
        *,
        app: ServiceApp[ProfilesService] | None = None,
        audit: AuditLog | AuditSource | None = None,
    ) -> None:
        self._settings = settings
        self._profiles = profiles
        self._app = app
        self._audit = (
            audit if isinstance(audit, AuditSource) else AuditSource(settings.store, audit)
        )

    def profiles(self) -> ProfilesRepository:
        if self._profiles is not None:
            return self._profiles
        if self._app is None:
            raise RuntimeError("no profiles repository")
        try:
            return self._app.service.repository
        except NotStarted as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "not started") from exc

    async def audit(self) -> AuditLog:
        return await self._audit.get()

    async def live(self, customer_id: str) -> CustomerProfile | None:
        """The live profile of an id, following aliases left by card links."""
        repository = self.profiles()
        for _ in range(MAX_ALIAS_HOPS):
            profile = await repository.get(customer_id)
            if profile is None or profile.erased:
                return None
            if profile.merged_into is None:
                return profile
            customer_id = profile.merged_into
        return None

    async def view(self, profile: CustomerProfile) -> CustomerView:
        return customer_view(
            profile,
            coupons=await self.profiles().coupons_of(profile.customer_id),
            today=now_utc().date(),
            calendar=self._settings.calendar,
        )

    async def audited(
        self, principal: Principal, action: str, profile: CustomerProfile | None
    ) -> CustomerView:
        customer_id = profile.customer_id if profile else None
        await (await self.audit()).record(
            AuditEntry(
                at=now_utc(),
                role=principal.role,
                token_id=principal.token_id,
                customer_id=customer_id,
                action=action,
                found=profile is not None,
            )
        )
        log.info(
            "customer_looked_up",
            action=action,
            role=principal.role,
            token_id=principal.token_id,
            customer_id=customer_id,
            found=profile is not None,
        )
        if profile is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such customer")
        return await self.view(profile)


def build_router(api: LookupApi, tokens: TokenTable) -> APIRouter:
    """The look-up routes over a `LookupApi` (tests build one with in-memory repositories)."""
    router = APIRouter(tags=["customers"])
    agent = require(tokens, "agent")
    admin = require(tokens, "admin")

    @router.post(
        "/api/customers/lookup", response_model=CustomerView, max_body_size=LOOKUP_BODY_LIMIT
    )
    async def lookup(
        body: LookupRequest, principal: Annotated[Principal, Depends(agent)]
    ) -> CustomerView:
        """A customer by card number (in the body: it never appears in a URL or a log)."""
        try:
            card = card_id(
                body.card_number, api._settings.privacy.card_key.get_secret_value().encode()
            )
        except InvalidCardNumber as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from None
        found = await api.profiles().find_by_card(card)
        profile = await api.live(found.customer_id) if found is not None else None
        return await api.audited(principal, "lookup_by_card", profile)

    @router.get("/api/customers/{customer_id}", response_model=CustomerView)
    async def by_id(
        customer_id: str, principal: Annotated[Principal, Depends(agent)]
    ) -> CustomerView:
        """A customer by pseudonymous id."""
        return await api.audited(principal, "get_by_id", await api.live(customer_id))

    @router.get("/api/audit", response_model=list[AuditEntry])
    async def audit(
        _: Annotated[Principal, Depends(admin)],
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[AuditEntry]:
        """The latest customer look-ups, newest first (admin only)."""
        return await (await api.audit()).latest(limit)

    async def export(customer_id: str) -> dict[str, object]:
        # The profile (or its tombstone), its coupons and segments, its journey (notes
        # included, the merged customers' too); who looked it up, when.
        profile = await customer_export(api.profiles(), customer_id)
        return {**profile, "audit": await (await api.audit()).of_customer(customer_id)}

    router.include_router(export_router("profiles", tokens, export))
    return router


def lookup_routes(app: ServiceApp[ProfilesService], audit: AuditSource | None = None) -> APIRouter:
    """The look-up API of a running profiles service (served by `crm run`)."""
    settings = app.settings
    tokens = TokenTable.parse(
        settings.http.api_tokens.get_secret_value() if settings.http.api_tokens else None
    )
    if not len(tokens):
        log.warning("api_tokens_unset", detail="CRM_API_TOKENS is empty: the API refuses everyone")
    return build_router(LookupApi(settings, app=app, audit=audit), tokens)
