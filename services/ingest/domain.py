"""Normalizing what tills and channels send: pure functions, no I/O.

`decode` turns raw bytes into a tolerant wire model or raises `shared.errors.Rejected` with a
reason code (the edge dead-letters the record with it); `normalize_*` turn wire models into
the normalized events of `shared.events`. Card numbers are replaced by their keyed hash here
and never leave this module in clear.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from shared.basket import clean_text, normalize_line
from shared.errors import Rejected
from shared.events import (
    CardLinked,
    ConsentChanged,
    CustomerErased,
    CustomerSignedUp,
    CustomerUpdated,
    InteractionRecorded,
    PurchaseRecorded,
)
from shared.privacy import InvalidCardNumber, card_id, mask_card_numbers
from shared.raw import (
    MAX_MESSAGE_BYTES,
    RawCheckout,
    RawCustomerEvent,
    RawInteraction,
)
from shared.topics import CHECKOUTS_RAW, CUSTOMERS_RAW, INTERACTIONS_RAW

RawEvent = RawCheckout | RawCustomerEvent | RawInteraction
CustomerEvent = CustomerSignedUp | CustomerUpdated | ConsentChanged | CardLinked | CustomerErased

_MODELS: Final[dict[str, type[RawEvent]]] = {
    CHECKOUTS_RAW: RawCheckout,
    CUSTOMERS_RAW: RawCustomerEvent,
    INTERACTIONS_RAW: RawInteraction,
}
_EMAIL: Final = re.compile(
    r"^[^@\s<>\"',;]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251})\.[A-Za-z]{2,}$"
)
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
MONEY_PLACES: Final = Decimal("0.01")

# Pydantic error locations that the contract names as their own dead-letter reasons.
_CONTRACT_REASONS: Final[dict[tuple[str, str], str]] = {
    ("lines", "too_short"): "no_lines",
    ("lines", "too_long"): "too_many_lines",
    ("quantity", "greater_than_equal"): "negative_quantity",
    ("unit_price", "greater_than_equal"): "negative_price",
    ("discount", "greater_than_equal"): "negative_discount",
}


def decode(topic: str, value: bytes | None) -> RawEvent:
    """Parse one raw message into its wire model, or raise Rejected with the reason."""
    if value is None or not value.strip():
        raise Rejected("empty_message", "the message has no payload")
    if len(value) > MAX_MESSAGE_BYTES:
        raise Rejected("oversized", f"{len(value)} bytes is over the 1 MiB limit")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected("invalid_utf8", f"not UTF-8 at byte {exc.start}") from None
    try:
        # Decimal for every JSON number with a fraction: money never passes through float.
        document = json.loads(text, parse_float=Decimal)
    except RecursionError:
        raise Rejected("too_deep", "JSON nested too deeply") from None
    except ValueError as exc:
        raise Rejected("invalid_json", str(exc)[:200]) from None
    if not isinstance(document, dict):
        raise Rejected("not_an_object", f"expected a JSON object, got {type(document).__name__}")
    try:
        return _MODELS[topic].model_validate(document)
    except ValidationError as exc:
        raise _rejection(exc) from None
    except RecursionError:
        raise Rejected("too_deep", "JSON nested too deeply") from None


def _rejection(exc: ValidationError) -> Rejected:
    first = exc.errors(include_url=False, include_input=False)[0]
    loc = [str(part) for part in first["loc"]]
    field = loc[-1] if loc and not loc[-1].isdigit() else (loc[0] if loc else "")
    reason = _CONTRACT_REASONS.get((field, first["type"]), "invalid_field")
    where = ".".join(loc) or "(document)"
    return Rejected(reason, f"{where}: {first['msg']}"[:300], field=".".join(loc) or None)


def parse_time(text: str, zone: ZoneInfo) -> dt.datetime:
    """ISO-8601 with an offset, or without one (then in the store's zone); returns aware UTC."""
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise Rejected(
            "invalid_time", "occurred_at is not an ISO-8601 date-time", field="occurred_at"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.astimezone(dt.UTC)


def _card(card_number: str | None, key: bytes, *, field: str = "card_number") -> str | None:
    if card_number is None or not card_number.strip():
        return None
    try:
        return card_id(card_number, key)
    except InvalidCardNumber as exc:
        raise Rejected("invalid_card", f"{field}: {exc}", field=field) from None


def _text(value: str | None, limit: int = 200) -> str | None:
    return clean_text(value, limit)


def normalize_checkout(
    raw: RawCheckout, *, key: bytes, zone: ZoneInfo, resolve: Callable[[str], str]
) -> PurchaseRecorded:
    """A raw checkout as a normalized purchase; `resolve` maps a card id to its customer id."""
    occurred_at = parse_time(raw.occurred_at, zone)
    card = _card(raw.card_number, key)
    lines = [normalize_line(line) for line in raw.lines]
    return PurchaseRecorded(
        event_id=raw.event_id,
        occurred_at=occurred_at,
        customer_id=resolve(card) if card else None,
        card_id=card,
        store_id=raw.store_id.strip().upper(),
        currency=raw.currency.upper(),
        lines=tuple(lines),
        total=sum((line.amount for line in lines), Decimal("0.00")),
        coupons=tuple(dict.fromkeys(c.strip().upper() for c in raw.coupons if c.strip())),
    )


def _email(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    address = value.strip().lower()
    if not _EMAIL.match(address):
        raise Rejected("invalid_email", "email is not an e-mail address", field="email")
    return address


def _birth_date(value: str | None, today: dt.date) -> dt.date | None:
    if value is None or not value.strip():
        return None
    try:
        born = dt.date.fromisoformat(value.strip())
    except ValueError:
        raise Rejected(
            "invalid_birth_date", "birth_date is not YYYY-MM-DD", field="birth_date"
        ) from None
    if born > today or born.year < 1900:
        raise Rejected(
            "invalid_birth_date", "birth_date is not a plausible date of birth", field="birth_date"
        )
    return born


@dataclass(frozen=True, slots=True)
class LinkRequest:
    """A link_card event needs the store's card table; ingest's service resolves it."""

    event_id: str
    occurred_at: dt.datetime
    card: str
    other_card: str


def normalize_customer_event(
    raw: RawCustomerEvent, *, key: bytes, zone: ZoneInfo, resolve: Callable[[str], str]
) -> CustomerEvent | LinkRequest:
    """A raw customer event as a normalized one (link_card needs the caller to finish it)."""
    occurred_at = parse_time(raw.occurred_at, zone)
    card = _card(raw.card_number, key)
    if card is None:
        raise Rejected(
            "missing_card", f"a {raw.type} event needs a card_number", field="card_number"
        )
    event_id = f"customer:{raw.event_id}"
    customer_id = resolve(card)
    common: dict[str, Any] = {
        "event_id": event_id,
        "occurred_at": occurred_at,
        "customer_id": customer_id,
    }
    today = occurred_at.date()
    store_id = raw.store_id.strip().upper() if raw.store_id else None
    if raw.type == "signup":
        return CustomerSignedUp(
            **common,
            card_id=card,
            email=_email(raw.email),
            first_name=_text(raw.first_name, 100),
            birth_date=_birth_date(raw.birth_date, today),
            marketing_consent=bool(raw.marketing_consent),
            store_id=store_id,
        )
    if raw.type == "update":
        return CustomerUpdated(
            **common,
            email=_email(raw.email),
            first_name=_text(raw.first_name, 100),
            birth_date=_birth_date(raw.birth_date, today),
            marketing_consent=raw.marketing_consent,
            store_id=store_id,
        )
    if raw.type == "consent":
        if raw.marketing_consent is None:
            raise Rejected(
                "missing_field",
                "a consent event needs marketing_consent",
                field="marketing_consent",
            )
        return ConsentChanged(**common, marketing_consent=raw.marketing_consent)
    if raw.type == "erase":
        return CustomerErased(**common)
    other = _card(raw.other_card_number, key, field="other_card_number")
    if other is None:
        raise Rejected(
            "missing_card", "a link_card event needs other_card_number", field="other_card_number"
        )
    if other == card:
        raise Rejected(
            "invalid_field", "other_card_number is the same card", field="other_card_number"
        )
    return LinkRequest(event_id=event_id, occurred_at=occurred_at, card=card, other_card=other)


def normalize_interaction(
    raw: RawInteraction, *, key: bytes, zone: ZoneInfo, resolve: Callable[[str], str]
) -> InteractionRecorded | None:
    """A raw interaction as a normalized one; None when it names no card (anonymous)."""
    occurred_at = parse_time(raw.occurred_at, zone)
    card = _card(raw.card_number, key)
    if card is None:
        return None
    details = {
        _CONTROL.sub("", str(k))[:64]: (_text(v, 500) if isinstance(v, str) else v)
        for k, v in raw.details.items()
    }
    return InteractionRecorded(
        event_id=f"interaction:{raw.event_id}",
        occurred_at=occurred_at,
        customer_id=resolve(card),
        interaction_type=raw.type.strip().lower()[:64],
        channel=_text(raw.channel, 64),
        details=_mask_details(details),
    )


def _mask_details(details: Mapping[str, Any]) -> dict[str, str | int | float | bool | None]:
    """Details are free text: a card number typed into a ticket must not travel on."""
    return {
        key: mask_card_numbers(value) if isinstance(value, str) else value
        for key, value in details.items()
    }
