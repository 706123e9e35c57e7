"""The offers service's HTTP routes: the till's coupon checks and the agents' "why" of a coupon.

- `POST /api/coupons/validate` (`till`): is this code good for this card's customer and this
  basket, and how much would it take off? Answered from the offers store by the same check a
  checkout's redemption goes through. With `"reserve": true` the coupon is held for the lane
  (`CRM_TILL_HOLD_S`), so two lanes never both give it: the other lane hears
  `already_redeemed` until the checkout lists it or the hold ends.
- `POST /api/coupons/applicable` (`till`): every live coupon of the swiped card's customer that
  applies to the basket, with its discount, so the till applies them with no code typed.
- `GET /api/customers/{customer_id}/decisions` (`agent`): every decision offers took for the
  customer (issued, held out, suppressed and why), what triggered it, the offer's state and
  its e-mail's outcome.

The card number travels in the body only and is hashed with `CRM_CARD_KEY` at once.
"""

# No `from __future__ import annotations`: FastAPI resolves the routes' Annotated
# dependencies, which name local variables, at definition time.

import datetime as dt
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from services.offers.domain import OfferRecord, check_code, discount_for, normalize_code
from services.offers.service import OffersService
from services.offers.settings import OffersSettings
from services.offers.store import OffersRepository, customer_export
from shared.auth import Principal, TokenTable, require
from shared.basket import basket_lines, normalize_line
from shared.events import BasketLine, OfferKind, OfferTrigger, RejectionReason
from shared.export import export_router
from shared.logging import get_logger
from shared.privacy import InvalidCardNumber, card_id
from shared.raw import RawLine
from shared.settings import Settings
from shared.skeleton import NotStarted, ServiceApp

log = get_logger(__name__)

MAX_LINES = 1000
BASKET_BODY_LIMIT = 128 * 1024
"""Bytes of a till request's body: a basket of up to `MAX_LINES` lines (about 100 bytes each)."""


class _Basket(BaseModel):
    model_config = ConfigDict(extra="forbid")

    card_number: str = Field(
        min_length=1, max_length=64, description="Card number, digits with spaces or dashes."
    )
    store_id: str = Field(min_length=1, max_length=64, description="Store of the sale.")
    lines: list[RawLine] = Field(
        min_length=1, max_length=MAX_LINES, description="The basket, as a raw checkout's lines."
    )


class ValidateRequest(_Basket):
    """A code the customer handed over, the card and the basket, before the sale."""

    code: str = Field(min_length=1, max_length=64, description="The coupon code, any spelling.")
    reserve: bool = Field(
        default=False, description="Hold the coupon for this lane if it is valid."
    )
    lane: str = Field(
        default="till", min_length=1, max_length=64, description="The lane (till) asking."
    )


class Validation(BaseModel):
    valid: bool = Field(description="Whether the code may be used on this basket now.")
    reason: RejectionReason | None = Field(description="Why not; null when valid.")
    discount: Decimal = Field(description="Money the coupon takes off this basket.")
    offer_id: str | None = Field(default=None, description="The offer, when it is the customer's.")
    held_until: AwareDatetime | None = Field(
        default=None, description="Until when it is held for this lane (with `reserve`)."
    )


class ApplicableRequest(_Basket):
    """A swiped card and the basket: which of the customer's coupons apply."""


class ApplicableCoupon(BaseModel):
    code: str = Field(description="The coupon code (to list at the checkout).")
    offer_id: str = Field(description="The offer.")
    kind: OfferKind = Field(description="Rule that issued it.")
    discount: Decimal = Field(description="Money it takes off this basket.")


class Applicable(BaseModel):
    coupons: list[ApplicableCoupon] = Field(description="Every live coupon that applies.")


class DecisionView(BaseModel):
    key: str = Field(description="Rule and what it is about.")
    kind: OfferKind = Field(description="Rule.")
    at: AwareDatetime = Field(description="Event time of the trigger.")
    outcome: str = Field(description="issued, held_out or suppressed.")
    reason: str | None = Field(description="Why it was suppressed (or held out).")
    campaign_id: str | None = Field(default=None, description="The campaign deciding.")
    variant: str | None = Field(default=None, description="Its A/B arm, if any.")
    trigger: OfferTrigger = Field(description="The checkouts or the calendar day.")
    offer_id: str = Field(description="The offer (it exists when issued).")
    coupon_code: str | None = Field(description="Its code, when issued.")
    state: str | None = Field(description="issued, redeemed, expired or revoked.")
    delivery: str | None = Field(description="Its e-mail's outcome, when known.")


class Decisions(BaseModel):
    customer_id: str = Field(description="Pseudonymous customer id.")
    decisions: list[DecisionView] = Field(description="Newest first.")


class TillApi:
    """The routes' dependencies: the running service's store, the keys and the clock."""

    def __init__(
        self,
        settings: Settings,
        *,
        app: ServiceApp[OffersService] | None = None,
        repository: OffersRepository | None = None,
        hold: dt.timedelta | None = None,
    ) -> None:
        self.settings = settings
        self._app = app
        self._repository = repository
        self.hold = hold or dt.timedelta(seconds=OffersSettings().till_hold_s)

    def repository(self) -> OffersRepository:
        if self._repository is not None:
            return self._repository
        if self._app is None:
            raise RuntimeError("no offers repository")
        try:
            return self._app.service.repository
        except NotStarted as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "not started") from exc

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    async def customer(self, body: _Basket) -> str | None:
        try:
            card = card_id(
                body.card_number, self.settings.privacy.card_key.get_secret_value().encode()
            )
        except InvalidCardNumber as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from None
        return await self.repository().customer_of_card(card)

    def spent(self, offer: OfferRecord | None) -> bool:
        """Whether the offer's campaign has used up its budget (its coupons redeem no more)."""
        if offer is None or offer.issued.campaign_id is None or self._app is None:
            return False
        try:
            return offer.issued.campaign_id in self._app.service.book.spent
        except NotStarted:
            return False

    def day(self, store_id: str) -> dt.date:
        return (
            self.now().astimezone(self.settings.calendar.zone_of(store_id.strip().upper())).date()
        )


def _lines(body: _Basket) -> tuple[BasketLine, ...]:
    return basket_lines(normalize_line(line) for line in body.lines)


def build_router(api: TillApi, tokens: TokenTable) -> APIRouter:
    router = APIRouter(tags=["coupons"])
    till = require(tokens, "till")
    agent = require(tokens, "agent")

    @router.post(
        "/api/coupons/validate", response_model=Validation, max_body_size=BASKET_BODY_LIMIT
    )
    async def validate(
        body: ValidateRequest, principal: Annotated[Principal, Depends(till)]
    ) -> Validation:
        """Whether a coupon is good for this customer and basket, and its discount."""
        repository = api.repository()
        code = normalize_code(body.code)
        offer = await repository.offer_by_code(code) if code else None
        customer = await api.customer(body)
        owners = {customer} if customer is not None else set()
        reason, discount = check_code(
            offer,
            customer_id=customer,
            owners=owners,
            day=api.day(body.store_id),
            lines=_lines(body),
        )
        if reason is None and api.spent(offer):
            reason, discount = "budget_spent", Decimal(0)
        held_until = None
        if reason is None and offer is not None and body.reserve:
            now = api.now()
            held_until = now + api.hold
            if not await repository.reserve(code, body.lane, held_until, now):
                reason, discount, held_until = "already_redeemed", Decimal(0), None
        log.info(
            "coupon_validated",
            valid=reason is None,
            reason=reason,
            role=principal.role,
            token_id=principal.token_id,
            lane=body.lane,
        )
        mine = offer is not None and reason != "foreign_code" and reason != "unknown_code"
        return Validation(
            valid=reason is None,
            reason=reason,
            discount=discount,
            offer_id=offer.offer_id if mine and offer is not None else None,
            held_until=held_until,
        )

    @router.post(
        "/api/coupons/applicable", response_model=Applicable, max_body_size=BASKET_BODY_LIMIT
    )
    async def applicable(
        body: ApplicableRequest, _: Annotated[Principal, Depends(till)]
    ) -> Applicable:
        """Every live coupon of the swiped card's customer that applies to this basket."""
        customer = await api.customer(body)
        if customer is None:
            return Applicable(coupons=[])
        day = api.day(body.store_id)
        lines = _lines(body)
        found = []
        for offer in await api.repository().offers_of(customer):
            reason, discount = check_code(
                offer, customer_id=customer, owners={customer}, day=day, lines=lines
            )
            if reason is None and not api.spent(offer):
                found.append(
                    ApplicableCoupon(
                        code=offer.coupon_code,
                        offer_id=offer.offer_id,
                        kind=offer.kind,
                        discount=discount,
                    )
                )
        found.sort(key=lambda c: (-c.discount, c.code))
        return Applicable(coupons=found)

    @router.get("/api/customers/{customer_id}/decisions", response_model=Decisions)
    async def decisions(customer_id: str, _: Annotated[Principal, Depends(agent)]) -> Decisions:
        """Why the customer did or did not get each coupon: offers' decisions, newest first."""
        repository = api.repository()
        ledgers = await repository.ledgers([customer_id])
        ledger = ledgers.get(customer_id)
        if ledger is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such customer")
        offers: dict[str, OfferRecord] = await repository.offers_of_customers([customer_id])
        views = []
        for d in sorted(ledger.decisions.values(), key=lambda d: (d.at, d.key), reverse=True):
            offer = offers.get(d.offer_id)
            views.append(
                DecisionView(
                    key=d.key,
                    kind=d.kind,
                    at=d.at,
                    outcome=d.outcome,
                    reason=d.reason,
                    trigger=d.trigger,
                    campaign_id=d.campaign_id,
                    variant=d.variant,
                    offer_id=d.offer_id,
                    coupon_code=offer.coupon_code if offer is not None else None,
                    state=offer.state if offer is not None else None,
                    delivery=offer.delivery if offer is not None else None,
                )
            )
        return Decisions(customer_id=customer_id, decisions=views)

    async def export(customer_id: str) -> dict[str, object]:
        return await customer_export(api.repository(), customer_id)

    router.include_router(export_router("offers", tokens, export))
    return router


def till_routes(app: ServiceApp[OffersService]) -> APIRouter:
    """The till's and the agents' routes of a running offers service (served by `crm run`)."""
    settings = app.settings
    tokens = TokenTable.parse(
        settings.http.api_tokens.get_secret_value() if settings.http.api_tokens else None
    )
    return build_router(TillApi(settings, app=app), tokens)


__all__ = ["TillApi", "build_router", "discount_for", "till_routes"]
