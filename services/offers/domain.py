"""Offers' building blocks, pure: ids and codes, the offer record, discounts and the till's check.

No I/O here. Offer ids and coupon codes are deterministic (the same trigger gives the same
offer), a coupon's discount is a function of its scope and the basket, and a code is valid at
the till, or redeems at a checkout, by the same `check_code` (one rule, two doors).
"""

from __future__ import annotations

import base64
import calendar
import datetime as dt
import hashlib
import hmac
import re
import uuid
from collections.abc import Iterable
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.events import (
    BasketLine,
    OfferExpired,
    OfferIssued,
    OfferKind,
    OfferRedeemed,
    OfferRevoked,
    RejectionReason,
)

OfferState = Literal["issued", "redeemed", "expired", "revoked"]

OFFER_NAMESPACE = uuid.UUID("5f0c6b1e-3a51-5d47-9f43-6d0c1f2e7a10")
"""Namespace of the deterministic offer and rejection ids (uuid5); never change it."""

_DAY = dt.timedelta(days=1)
_CENT = Decimal("0.01")
_HUNDRED = Decimal(100)


# ---------------------------------------------------------------- ids and codes


def offer_id_for(kind: OfferKind, customer_id: str, rule_key: str, trigger: str) -> str:
    """Deterministic offer id: the same kind, customer, rule key and trigger give the same id."""
    return str(uuid.uuid5(OFFER_NAMESPACE, f"{kind}|{customer_id}|{rule_key}|{trigger}"))


def rejection_id_for(checkout_event_id: str, code: str) -> str:
    """Deterministic id of a rejected redemption: the checkout and the code listed."""
    return str(uuid.uuid5(OFFER_NAMESPACE, f"{checkout_event_id}|{code}"))


def coupon_code_for(offer_id: str, key: bytes) -> str:
    """Three groups of four base32 characters (`K7QX-M2PA-9FHT`): HMAC-SHA-256 of the offer id;
    unguessable without the key."""
    digest = hmac.new(key, offer_id.encode(), hashlib.sha256).digest()
    text = base64.b32encode(digest).decode()[:12]
    return f"{text[:4]}-{text[4:8]}-{text[8:]}"


_NOT_CODE = re.compile(r"[^A-Z0-9]")
MAX_CODE_LENGTH = 64


def normalize_code(code: str) -> str:
    """A code as a till may type it (lower case, no dashes, spaces) in its canonical form."""
    compact = _NOT_CODE.sub("", code.upper())
    if len(compact) == 12:
        return f"{compact[:4]}-{compact[4:8]}-{compact[8:]}"
    return compact[:MAX_CODE_LENGTH]


def is_held_out(customer_id: str, kind: str, period: str, percent: Decimal) -> bool:
    """Whether a customer is in the hold-out group of a campaign for a period (`kind`: the
    offer kind of a built-in campaign, which keeps the draws of the fixed rules; else the
    campaign id).

    A uniform draw from SHA-256 of customer, kind and period: the same on every run and every
    replica, independent between periods (a customer is not held out of every campaign).
    """
    if percent <= 0:
        return False
    digest = hashlib.sha256(f"holdout|{kind}|{period}|{customer_id}".encode()).digest()
    draw = int.from_bytes(digest[:8], "big") % 1_000_000
    return Decimal(draw) < percent * 10_000


# ---------------------------------------------------------------- calendar


def one_year_after(day: dt.date) -> dt.date:
    """The same day a year later; 29 February becomes 28 February."""
    if day.month == 2 and day.day == 29:
        return dt.date(day.year + 1, 2, 28)
    return day.replace(year=day.year + 1)


def birthday_month_days(day: dt.date) -> tuple[str, ...]:
    """Birthdays (`MM-DD`) celebrated on `day`: 29 February counts as 28 February in other years."""
    month_day = f"{day.month:02d}-{day.day:02d}"
    if month_day == "02-28" and not calendar.isleap(day.year):
        return (month_day, "02-29")
    return (month_day,)


def would_exceed_cap(
    day: dt.date, issued_days: Iterable[dt.date], *, most: int, window: int
) -> bool:
    """Whether one more offer on `day` would make more than `most` in the `window` days ending
    on it. Decisions are taken in event-time order, so the offers before it are all there is."""
    first = day - (window - 1) * _DAY
    return sum(1 for d in issued_days if first <= d <= day) >= most


# ---------------------------------------------------------------- the offer and its lifecycle


class OfferRecord(BaseModel):
    """An offer and its lifecycle: issued, then redeemed, expired or revoked."""

    model_config = ConfigDict(frozen=True)

    issued: OfferIssued
    rule_key: str = Field(
        description="SKU, year, date or `once`: what a repetition limit is about."
    )
    state: OfferState = "issued"
    redemption: OfferRedeemed | None = None
    expired_on: dt.date | None = None
    revocation: OfferRevoked | None = None
    delivery: str | None = Field(default=None, description="Its e-mail's outcome, if known.")
    message_id: str | None = Field(default=None, description="Its e-mail's Message-ID.")

    @property
    def offer_id(self) -> str:
        return self.issued.offer_id

    @property
    def customer_id(self) -> str:
        return self.issued.customer_id

    @property
    def kind(self) -> OfferKind:
        return self.issued.kind

    @property
    def coupon_code(self) -> str:
        return self.issued.coupon_code

    @property
    def valid_from(self) -> dt.date:
        return self.issued.valid_from

    @property
    def valid_until(self) -> dt.date:
        return self.issued.valid_until

    def expired_event(self) -> OfferExpired:
        if self.expired_on is None:
            raise ValueError(f"offer {self.offer_id} has not expired")
        return OfferExpired(
            offer_id=self.offer_id,
            customer_id=self.customer_id,
            kind=self.kind,
            coupon_code=self.coupon_code,
            valid_until=self.valid_until,
            expired_on=self.expired_on,
        )


# ---------------------------------------------------------------- discounts and the till's check


def discount_for(offer: OfferIssued, lines: Iterable[BasketLine]) -> Decimal | None:
    """The money a coupon takes off this basket, to the cent (half up); None when the basket
    holds nothing it applies to (a product coupon without that product)."""
    basket = list(lines)
    if offer.scope == "sku":
        base = [line.amount for line in basket if line.sku == offer.sku]
    elif offer.scope == "category":
        base = [line.amount for line in basket if line.category == offer.category]
    else:
        base = [line.amount for line in basket]
    if not base:
        return None
    amount = sum(base, Decimal(0)) * offer.discount_percent / _HUNDRED
    return amount.quantize(_CENT, rounding=ROUND_HALF_UP)


def check_code(
    offer: OfferRecord | None,
    *,
    customer_id: str | None,
    owners: Iterable[str],
    day: dt.date,
    lines: Iterable[BasketLine],
) -> tuple[RejectionReason | None, Decimal]:
    """Whether a coupon may be used by this customer on this basket on this (store-local) day:
    (None, discount) or (the reason, 0). `owners` are the ids whose coupons the customer may
    use (the customer and the customers merged into it by a card link)."""
    if offer is None:
        return "unknown_code", Decimal(0)
    if customer_id is None or offer.customer_id not in set(owners):
        return "foreign_code", Decimal(0)
    if offer.state == "revoked":
        return "revoked", Decimal(0)
    if offer.state == "redeemed":
        return "already_redeemed", Decimal(0)
    if offer.state == "expired" or day > offer.valid_until or day < offer.valid_from:
        return "expired", Decimal(0)
    discount = discount_for(offer.issued, lines)
    if discount is None:
        return "not_in_basket", Decimal(0)
    return None, discount
