"""Normalizing what tills and channels send: pure functions, no I/O.

`decode` turns raw bytes into a tolerant wire model or raises `shared.errors.Rejected` with a
reason code (the edge dead-letters the record with it); `normalize_*` turn wire models into
the normalized events of `shared.events`. Card numbers are replaced by their keyed hash here
and never leave this module in clear; so are the e-mail addresses that name a lead (a sign-up
without a card), whose customer id is the keyed hash of the normalised address.
"""

from __future__ import annotations

import datetime as dt
import json
import math
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
    LABEL_MAX,
    CardLinked,
    ConsentChanged,
    CustomerErased,
    CustomerSignedUp,
    CustomerUpdated,
    InteractionRecorded,
    PurchaseRecorded,
    Sentiment,
)
from shared.privacy import InvalidCardNumber, card_id, lead_id, mask_card_numbers
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


def _label(value: str | None) -> str | None:
    """A short label such as a consent source or channel: trimmed, lower-cased."""
    text = _text(value, 64)
    return text.lower() if text else None


def _email(value: str | None) -> str | None:
    """The address trimmed and lower-cased (None when absent); an invalid one is rejected."""
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
    """A link_card event needs the store's card table; ingest's service resolves it. It links
    `other_card`, or the lead `lead` (named by its e-mail address), to `card`'s customer."""

    event_id: str
    occurred_at: dt.datetime
    card: str
    other_card: str | None
    lead: str | None = None


def lead_of(raw: RawCustomerEvent, key: bytes) -> str | None:
    """The lead a customer event without a card names by its e-mail address (its keyed hash),
    or that a sign-up or link_card with a card matches; None without a valid address."""
    try:
        address = _email(raw.email)
    except Rejected:
        return None
    return lead_id(address, key) if address else None


def _lead(raw: RawCustomerEvent, key: bytes) -> str:
    """A customer event without a card is a lead's: its e-mail address names it."""
    address = _email(raw.email)
    if address is None:
        raise Rejected(
            "missing_card",
            f"a {raw.type} event needs a card_number, or an email for a lead (no card)",
            field="card_number",
        )
    return lead_id(address, key)


def normalize_customer_event(
    raw: RawCustomerEvent, *, key: bytes, zone: ZoneInfo, resolve: Callable[[str], str]
) -> CustomerEvent | LinkRequest:
    """A raw customer event as a normalized one (link_card needs the caller to finish it).

    Without a card, the event is a lead's, named by its e-mail address: `resolve` maps a card
    id or a lead id to the customer it feeds. A lead's sign-up addressed to a customer who
    took its address over says so (`merged_customer_id`), as the customer's own sign-up
    would have."""
    occurred_at = parse_time(raw.occurred_at, zone)
    card = _card(raw.card_number, key)
    if card is None and raw.type == "link_card":
        raise Rejected("missing_card", "a link_card event needs a card_number", field="card_number")
    lead = _lead(raw, key) if card is None else None
    event_id = f"customer:{raw.event_id}"
    customer_id = resolve(card or str(lead))
    common: dict[str, Any] = {
        "event_id": event_id,
        "occurred_at": occurred_at,
        "customer_id": customer_id,
    }
    today = occurred_at.date()
    store_id = raw.store_id.strip().upper() if raw.store_id else None
    # Where consent was stated (GDPR art. 7(1): consent must be demonstrable); optional.
    record = {
        "source": _label(raw.source),
        "channel": _label(raw.channel),
        "consent_text_version": _text(raw.consent_text_version, 64),
    }
    if raw.type == "signup":
        return CustomerSignedUp(
            **common,
            card_id=card,
            merged_customer_id=lead if lead is not None and lead != customer_id else None,
            email=_email(raw.email),
            first_name=_text(raw.first_name, 100),
            birth_date=_birth_date(raw.birth_date, today),
            marketing_consent=bool(raw.marketing_consent),
            store_id=store_id,
            **record,
        )
    if raw.type == "update":
        return CustomerUpdated(
            **common,
            email=_email(raw.email),
            first_name=_text(raw.first_name, 100),
            birth_date=_birth_date(raw.birth_date, today),
            marketing_consent=raw.marketing_consent,
            store_id=store_id,
            **record,
        )
    if raw.type == "consent":
        if raw.marketing_consent is None:
            raise Rejected(
                "missing_field",
                "a consent event needs marketing_consent",
                field="marketing_consent",
            )
        return ConsentChanged(**common, marketing_consent=raw.marketing_consent, **record)
    if raw.type == "erase":
        return CustomerErased(**common)
    if card is None:  # a link_card without a card is rejected above
        raise Rejected("missing_card", "a link_card event needs a card_number", field="card_number")
    other = _card(raw.other_card_number, key, field="other_card_number")
    if other is None:
        address = _email(raw.email)
        if address is None:
            raise Rejected(
                "missing_card",
                "a link_card event needs other_card_number, or the email of a lead",
                field="other_card_number",
            )
        return LinkRequest(
            event_id=event_id,
            occurred_at=occurred_at,
            card=card,
            other_card=None,
            lead=lead_id(address, key),
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
        **opinion_of(raw.type, raw.details),
    )


def _mask_details(details: Mapping[str, Any]) -> dict[str, str | int | float | bool | None]:
    """Details are free text: a card number typed into a ticket must not travel on."""
    return {
        key: mask_card_numbers(value) if isinstance(value, str) else value
        for key, value in details.items()
    }


# ---------------------------------------------------------------- an interaction's opinion

_POSITIVE: Final = frozenset(
    {"positive", "pos", "+", "+1", "good", "great", "happy", "satisfied", "like", "liked",
     "likes", "love", "loved", "thumbs_up", "thumbs-up", "thumbsup", "\N{THUMBS UP SIGN}", "promoter"}
)  # fmt: skip
_NEGATIVE: Final = frozenset(
    {"negative", "neg", "-", "-1", "bad", "poor", "unhappy", "angry", "dissatisfied",
     "unsatisfied", "dislike", "disliked", "dislikes", "hate", "thumbs_down", "thumbs-down",
     "thumbsdown",
     "\N{THUMBS DOWN SIGN}", "complaint", "detractor"}
)  # fmt: skip
_NEUTRAL: Final = frozenset(
    {"neutral", "neu", "0", "mixed", "ok", "okay", "indifferent", "passive"}
)
_TYPE_SENTIMENT: Final[Mapping[str, Sentiment]] = {
    "like": "positive",
    "social_like": "positive",
    "dislike": "negative",
    "social_dislike": "negative",
}
_NOT_A_LABEL: Final = re.compile(r"[@/\\<>:=]|\d{5}")
"""An e-mail address, a URL, markup or a long run of digits is free text, not a brand."""


def _spelling(value: str) -> str:
    """Lower-case, words joined by `_` (`Thumbs up` -> `thumbs_up`)."""
    return "_".join(value.casefold().split())


def sentiment_of(interaction_type: str, value: object) -> Sentiment | None:
    """`details.sentiment` normalised from its common spellings (words, +/-, thumbs, a score
    whose sign says it), else what a like or dislike type says; None when unknown."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        score: float = value
    elif isinstance(value, str):
        word = _spelling(value)
        if word in _POSITIVE:
            return "positive"
        if word in _NEGATIVE:
            return "negative"
        if word in _NEUTRAL:
            return "neutral"
        try:
            score = float(word)
        except ValueError:
            score = math.nan
    else:
        score = math.nan
    if math.isfinite(score):
        return "positive" if score > 0 else "negative" if score < 0 else "neutral"
    return _TYPE_SENTIMENT.get(_spelling(interaction_type).replace("-", "_"))


def opinion_label(value: object) -> str | None:
    """A brand or category as a short label: trimmed, inner spaces collapsed, lower-case, at
    most `LABEL_MAX` characters; None for anything else (free text stays sealed in details)."""
    if not isinstance(value, str):
        return None
    label = " ".join(_CONTROL.sub(" ", value).split()).casefold()
    if not label or len(label) > LABEL_MAX or _NOT_A_LABEL.search(label):
        return None
    return label


def opinion_of(interaction_type: str, details: Mapping[str, object]) -> dict[str, Any]:
    """The allow-listed part of an interaction's details that travels open on `crm.events`:
    its sentiment, brand and category (keys matched case-insensitively)."""
    found = {_spelling(str(k)): v for k, v in details.items()}
    return {
        "sentiment": sentiment_of(interaction_type, found.get("sentiment")),
        "brand": opinion_label(found.get("brand")),
        "category": opinion_label(found.get("category")),
    }
