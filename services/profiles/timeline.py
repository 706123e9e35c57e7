"""The customer journey: one timeline entry per thing that happened to a customer, pure code.

An entry is derived from one event alone (a normalized event of `crm.events`, an offer event
of `crm.offers`, an e-mail outcome of `crm.deliveries`) and keyed by the customer and an id
derived from that event (`entry_id`), so the timeline is a set: the same events in any order,
redelivered or not, give the same entries. The service writes them as it folds the events and
deletes a customer's entries when it applies their erasure; the API reads them newest first,
by (time, entry id), a page at a time behind an opaque cursor.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from decimal import Decimal
from typing import Literal, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shared.events import (
    CardLinked,
    ConsentChanged,
    CustomerSignedUp,
    CustomerUpdated,
    DeliveryRecorded,
    InteractionRecorded,
    NormalizedEvent,
    NoteAdded,
    OfferEvent,
    OfferExpired,
    OfferIssued,
    OfferRedeemed,
    OfferRevoked,
    PurchaseRecorded,
)

EntryType = Literal[
    "signup",
    "update",
    "consent",
    "card_linked",
    "purchase",
    "interaction",
    "offer_issued",
    "offer_redeemed",
    "offer_expired",
    "offer_revoked",
    "email",
    "note",
]
ENTRY_TYPES: tuple[EntryType, ...] = get_args(EntryType)

Value = str | int | float | bool | None
Details = dict[str, Value]


class TimelineEntry(BaseModel):
    """One thing that happened to a customer, as stored (no card number, no address)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    customer_id: str = Field(description="The customer whose timeline holds it.")
    entry_id: str = Field(description="`<type>/<id of the event it comes from>`: its key.")
    at: AwareDatetime = Field(description="When it happened (UTC).")
    type: EntryType = Field(description="What happened.")
    store_id: str | None = Field(default=None, description="Store it happened at, if any.")
    details: Details = Field(default_factory=dict, description="What the agent sees of it.")


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _entry(
    customer_id: str,
    kind: EntryType,
    source_id: str,
    at: dt.datetime,
    details: Details,
    store_id: str | None = None,
) -> TimelineEntry:
    return TimelineEntry(
        customer_id=customer_id,
        entry_id=f"{kind}/{source_id}",
        at=at.astimezone(dt.UTC),
        type=kind,
        store_id=store_id,
        details={k: v for k, v in details.items() if v is not None},
    )


def _consent(event: CustomerSignedUp | CustomerUpdated | ConsentChanged) -> Details:
    return {
        "marketing_consent": event.marketing_consent,
        "source": event.source,
        "channel": event.channel,
        "consent_text_version": event.consent_text_version,
    }


def entry_of_event(customer_id: str, event: NormalizedEvent) -> TimelineEntry | None:
    """The entry of a normalized event folded into `customer_id`'s profile (an erasure has
    none: it deletes the entries)."""
    at, eid = event.occurred_at, event.event_id
    match event:
        case PurchaseRecorded():
            details: Details = {
                "total": _money(event.total),
                "currency": event.currency,
                "lines": len(event.lines),
                "coupons": len(event.coupons) or None,
            }
            return _entry(customer_id, "purchase", eid, at, details, event.store_id)
        case CustomerSignedUp():
            return _entry(customer_id, "signup", eid, at, _consent(event), event.store_id)
        case CustomerUpdated():
            changed = [
                name
                for name in ("email", "first_name", "birth_date", "store_id")
                if getattr(event, name) is not None
            ]
            details = {"changed": ", ".join(changed) or None}
            if event.marketing_consent is not None:
                details |= _consent(event)
            return _entry(customer_id, "update", eid, at, details)
        case ConsentChanged():
            return _entry(customer_id, "consent", eid, at, _consent(event))
        case CardLinked():
            return _entry(customer_id, "card_linked", eid, at, {})
        case InteractionRecorded():
            details = {"interaction_type": event.interaction_type, "channel": event.channel}
            details |= {f"detail_{k}": v for k, v in sorted(event.details.items())}
            return _entry(customer_id, "interaction", eid, at, details)
        case NoteAdded():
            return _entry(
                customer_id, "note", eid, at, {"text": event.text, "author": event.author}
            )
    return None


def entry_of_offer(customer_id: str, event: OfferEvent) -> TimelineEntry | None:
    """The entry of an offer event (issued, redeemed, expired, revoked); None for the others."""
    match event:
        case OfferIssued():
            details: Details = {
                "offer_id": event.offer_id,
                "kind": event.kind,
                "coupon_code": event.coupon_code,
                "discount_percent": _money(event.discount_percent),
                "sku": event.sku,
                "product_name": event.product_name,
                "category": event.category,
                "valid_until": event.valid_until.isoformat(),
                "campaign_id": event.campaign_id,
            }
            return _entry(customer_id, "offer_issued", event.offer_id, event.issued_at, details)
        case OfferRedeemed():
            details = {
                "offer_id": event.offer_id,
                "kind": event.kind,
                "coupon_code": event.coupon_code,
                "discount": _money(event.discount),
                "basket_total": _money(event.basket_total),
            }
            return _entry(
                customer_id,
                "offer_redeemed",
                event.offer_id,
                event.redeemed_at,
                details,
                event.store_id,
            )
        case OfferExpired():
            at = dt.datetime.combine(event.expired_on, dt.time(), dt.UTC)
            details = {
                "offer_id": event.offer_id,
                "kind": event.kind,
                "coupon_code": event.coupon_code,
                "valid_until": event.valid_until.isoformat(),
            }
            return _entry(customer_id, "offer_expired", event.offer_id, at, details)
        case OfferRevoked():
            details = {
                "offer_id": event.offer_id,
                "kind": event.kind,
                "coupon_code": event.coupon_code,
                "reason": event.reason,
            }
            return _entry(customer_id, "offer_revoked", event.offer_id, event.revoked_at, details)
    return None


def entry_of_delivery(customer_id: str, event: DeliveryRecorded) -> TimelineEntry:
    """The entry of an e-mail's outcome: one per offer and state (sent, then bounced...)."""
    details: Details = {
        "offer_id": event.offer_id,
        "state": event.state,
        "attempts": event.attempts,
        "reason": event.reason,
    }
    source = f"{event.offer_id}/{event.state}"
    return _entry(customer_id, "email", source, event.recorded_at, details)


# ---------------------------------------------------------------- order and pages

Position = tuple[str, str]
"""Where an entry sorts: its time as `stored_time`, then its entry id."""


def stored_time(at: dt.datetime) -> str:
    """A time as stored and compared: UTC, fixed width, so text order is time order."""
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def position(entry: TimelineEntry) -> Position:
    return (stored_time(entry.at), entry.entry_id)


def cursor_of(entry: TimelineEntry) -> str:
    """An opaque, stable cursor: the entries after it are those older than this one."""
    at, entry_id = position(entry)
    return base64.urlsafe_b64encode(f"{at}|{entry_id}".encode()).decode().rstrip("=")


class BadCursor(ValueError):
    """A `before` cursor that this API did not give out."""


def parse_cursor(cursor: str) -> Position:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, entry_id = raw.split("|", 1)
        dt.datetime.strptime(at + "+0000", "%Y-%m-%dT%H:%M:%S.%fZ%z")
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise BadCursor("not a cursor of this timeline") from exc
    return (at, entry_id)


def newest_first(entries: list[TimelineEntry]) -> list[TimelineEntry]:
    return sorted(entries, key=position, reverse=True)
