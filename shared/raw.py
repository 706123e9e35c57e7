"""Wire models of what stores and channels send on the raw topics (see the README's contract section).

These are deliberately tolerant: they accept every spelling the contract allows and leave
normalization (card pseudonymization, time zones, SKU case) to ingest. Unknown fields are ignored.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

MAX_LINES = 1000
"""A checkout with more lines than this is dead-lettered."""
MAX_MESSAGE_BYTES = 1024 * 1024
"""Any raw message larger than 1 MiB is dead-lettered before it is parsed."""


def _tolerant_decimal(value: Any) -> Any:
    """Accept JSON numbers and strings with `.` or `,` as the decimal separator; refuse booleans."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not an amount")
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        if "," in text and "." not in text:
            text = text.replace(",", ".")
        try:
            return Decimal(text)
        except InvalidOperation as exc:
            raise ValueError("not a number") from exc  # never the value: it may be personal
    if isinstance(value, float):
        # Only reached when a caller parsed JSON without parse_float=Decimal; repr is exact
        # for the short decimal literals tills send.
        return Decimal(repr(value))
    return value


def _tolerant_text(value: Any) -> Any:
    """Accept numbers where text is expected (store ids and SKUs are sometimes sent as numbers)."""
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        return str(value)
    return value


MAX_AMOUNT = Decimal(10) ** 9
"""No quantity or price reaches a billion; the bound also keeps Decimal arithmetic in range.
(A plain bound: pydantic's max_digits/decimal_places checks cost a quarter of ingest's time.)"""

Amount = Annotated[
    Decimal,
    BeforeValidator(_tolerant_decimal),
    Field(allow_inf_nan=False, le=MAX_AMOUNT),
]
Text = Annotated[str, BeforeValidator(_tolerant_text)]
CardNumber = Annotated[str | None, BeforeValidator(_tolerant_text)]


class _Raw(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class RawLine(_Raw):
    """One basket line as a till sends it."""

    sku: Text = Field(min_length=1, max_length=64, description="Stock keeping unit, any case.")
    name: str | None = Field(default=None, max_length=200, description="Product name.")
    category: str | None = Field(default=None, max_length=100, description="Product category.")
    quantity: Amount = Field(ge=0, description="Units, or a decimal weight for weighed goods.")
    unit_price: Amount = Field(ge=0, description="Price per unit, `.` or `,` as separator.")
    discount: Amount = Field(default=Decimal(0), ge=0, description="Money taken off this line.")


class RawCheckout(_Raw):
    """A card swipe (or an anonymous sale) with its basket, on `crm.checkouts.raw`."""

    event_id: Text = Field(min_length=1, max_length=128, description="Idempotency key.")
    store_id: Text = Field(min_length=1, max_length=64, description="Store that made the sale.")
    occurred_at: str = Field(max_length=64, description="ISO-8601, with or without an offset.")
    card_number: CardNumber = Field(default=None, description="Loyalty card; absent = anonymous.")
    currency: str = Field(default="EUR", pattern=r"^[A-Za-z]{3}$", description="ISO 4217 code.")
    lines: list[RawLine] = Field(min_length=1, max_length=MAX_LINES, description="Basket lines.")
    coupons: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list, max_length=50, description="Coupon codes redeemed at this checkout."
    )


CustomerEventType = Literal["signup", "update", "consent", "erase", "link_card"]


class RawCustomerEvent(_Raw):
    """A customer event from store desks, web sign-up or admin tools, on `crm.customers.raw`."""

    event_id: Text = Field(min_length=1, max_length=128, description="Idempotency key.")
    type: CustomerEventType = Field(description="What happened to the customer.")
    occurred_at: str = Field(max_length=64, description="ISO-8601, with or without an offset.")
    card_number: CardNumber = Field(
        default=None,
        description="The card the event is about; absent for a lead (a sign-up without a "
        "card), whose events name its `email` instead.",
    )
    other_card_number: CardNumber = Field(
        default=None, description="For link_card: the card linked."
    )
    store_id: Text | None = Field(default=None, max_length=64, description="Store, if any.")
    email: str | None = Field(
        default=None,
        max_length=254,
        description="E-mail address; without a card_number it names a lead (for link_card: "
        "the lead to link the card to).",
    )
    first_name: str | None = Field(default=None, max_length=100, description="First name.")
    birth_date: str | None = Field(default=None, max_length=32, description="YYYY-MM-DD.")
    marketing_consent: bool | None = Field(default=None, description="Opt-in to marketing.")
    source: str | None = Field(
        default=None,
        max_length=64,
        description="Extension: where consent was stated (till, desk, web, admin...).",
    )
    channel: str | None = Field(
        default=None, max_length=64, description="Extension: the channel consent is for (email)."
    )
    consent_text_version: str | None = Field(
        default=None, max_length=64, description="Extension: version of the consent wording."
    )


class RawInteraction(_Raw):
    """A support ticket, e-mail open, web visit... on `crm.interactions.raw`."""

    event_id: Text = Field(min_length=1, max_length=128, description="Idempotency key.")
    type: str = Field(min_length=1, max_length=64, description="Free text: support_ticket, ...")
    occurred_at: str = Field(max_length=64, description="ISO-8601, with or without an offset.")
    card_number: CardNumber = Field(default=None, description="Card of the customer, if known.")
    channel: str | None = Field(default=None, max_length=64, description="phone, email, web...")
    store_id: Text | None = Field(default=None, max_length=64, description="Store, if any.")
    details: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict, max_length=50, description="Flat key/value details."
    )
