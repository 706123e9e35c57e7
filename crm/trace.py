"""`crm trace --card-file F`: the chain from a customer's swipes to their e-mails.

For each swipe of the card (read from `crm.checkouts.raw`, matched by the card number, which
never leaves this process): its normalized event on `crm.events` (or the dead letter that
refused it), the profile change it made on `crm.profiles.changed`, every offer decision it
triggered as the offers service keeps them (issued, held out, or not made and why), what
`crm.offers` said of each offer since (redeemed, expired, revoked), and the e-mail's outcome on
`crm.deliveries`. Calendar decisions (birthday, anniversary, win-back) follow, by day.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson

from crm.traffic import read_topic
from services.ingest.store import open_repository as open_ingest
from services.offers.ledger import Decision
from services.offers.store import open_repository as open_offers
from shared.privacy import InvalidCardNumber, canonical_card, card_id, customer_id_for_card
from shared.settings import Settings
from shared.topics import (
    CHECKOUTS_RAW,
    DEADLETTER,
    DELIVERIES,
    EVENTS,
    OFFERS,
    PROFILES_CHANGED,
)


@dataclass(slots=True)
class Swipe:
    event_id: str
    occurred_at: str
    store_id: str
    normalized: bool = False
    dead_letter: str | None = None
    profile_change: dict[str, Any] | None = None
    decisions: list[Decision] = field(default_factory=list)


@dataclass(slots=True)
class Trace:
    """Everything the chain of a customer's swipes shows, JSON-able."""

    customer_id: str
    swipes: list[Swipe] = field(default_factory=list)
    calendar: list[Decision] = field(default_factory=list)
    offer_events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    deliveries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        def decision(d: Decision) -> dict[str, Any]:
            return {
                **d.model_dump(
                    mode="json", include={"kind", "outcome", "reason", "offer_id", "at"}
                ),
                "offer": [e["type"] for e in self.offer_events.get(d.offer_id, [])],
                "e-mail": self.deliveries.get(d.offer_id),
            }

        return {
            "customer_id": self.customer_id,
            "swipes": [
                {
                    "event_id": s.event_id,
                    "occurred_at": s.occurred_at,
                    "store_id": s.store_id,
                    "normalized": s.normalized,
                    "dead_letter": s.dead_letter,
                    "profile_change": s.profile_change,
                    "decisions": [decision(d) for d in s.decisions],
                }
                for s in self.swipes
            ],
            "calendar": [decision(d) for d in self.calendar],
        }


def _card_of(document: dict[str, Any]) -> str | None:
    number = document.get("card_number")
    if not isinstance(number, str):
        return None
    try:
        return canonical_card(number)
    except InvalidCardNumber:
        return None


async def trace(settings: Settings, card_number: str) -> Trace:
    """The chain of one card's customer, from the topics and the offers store."""
    digits = canonical_card(card_number)
    key = settings.privacy.card_key.get_secret_value().encode()
    card = card_id(digits, key)
    async with open_ingest(settings.store) as ingest:
        links = await ingest.customers_of_cards([card])
    customer_id = links.get(card) or customer_id_for_card(card)
    result = Trace(customer_id)
    kafka = settings.kafka
    swipes: dict[str, Swipe] = {}
    for record in await read_topic(kafka, CHECKOUTS_RAW, within=60):
        try:
            document = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(document, dict) and _card_of(document) == digits:
            event_id = str(document.get("event_id"))
            swipes[event_id] = Swipe(
                event_id, str(document.get("occurred_at")), str(document.get("store_id"))
            )
    for record in await read_topic(kafka, EVENTS, within=60):
        event = orjson.loads(record.value)
        if event.get("event_id") in swipes and event.get("type") == "purchase_recorded":
            swipes[event["event_id"]].normalized = True
    for record in await read_topic(kafka, DEADLETTER, within=60):
        letter = orjson.loads(record.value)
        if letter.get("source_topic") != CHECKOUTS_RAW:
            continue
        refused = swipes.get(str(letter.get("fields", {}).get("event_id")))
        if refused is not None:
            refused.dead_letter = letter.get("reason")
    for record in await read_topic(kafka, PROFILES_CHANGED, within=60):
        change = orjson.loads(record.value)
        swipe = swipes.get(change.get("cause_event_id"))
        if swipe is not None:
            swipe.profile_change = {
                "customer_id": change["customer_id"],
                "visits": change.get("visits"),
                "marketing_consent": change.get("marketing_consent"),
            }
    async with open_offers(settings.store) as offers:
        ledger = (await offers.ledgers([customer_id])).get(customer_id)
    by_checkout: dict[str, list[Decision]] = defaultdict(list)
    for decision in (
        sorted(ledger.decisions.values(), key=lambda d: (d.at, d.key)) if ledger else []
    ):
        if decision.trigger.type == "purchase" and decision.trigger.event_ids:
            by_checkout[decision.trigger.event_ids[-1]].append(decision)
        else:
            result.calendar.append(decision)
    for event_id, swipe in swipes.items():
        swipe.decisions = by_checkout.get(event_id, [])
    wanted = {d.offer_id for decisions in by_checkout.values() for d in decisions}
    wanted |= {d.offer_id for d in result.calendar}
    for record in await read_topic(kafka, OFFERS, within=60):
        event = orjson.loads(record.value)
        if event.get("offer_id") in wanted:
            result.offer_events.setdefault(event["offer_id"], []).append(event)
    for record in await read_topic(kafka, DELIVERIES, within=60):
        delivery = orjson.loads(record.value)
        if delivery.get("offer_id") in wanted:
            result.deliveries[delivery["offer_id"]] = {
                "state": delivery["state"],
                "reason": delivery.get("reason"),
                "message_id": delivery.get("message_id"),
            }
    result.swipes = sorted(swipes.values(), key=lambda s: (s.occurred_at, s.event_id))
    return result


def lines(found: Trace) -> list[str]:
    """The chain as text, one swipe after the other."""
    out = [f"customer {found.customer_id}"]

    def decision_lines(decisions: list[Decision], indent: str) -> None:
        for d in decisions:
            why = f" ({d.reason})" if d.reason else ""
            out.append(f"{indent}decision {d.kind} {d.key.split('|')[1]}: {d.outcome}{why}")
            if d.outcome != "issued":
                continue
            states = " -> ".join(e["type"] for e in found.offer_events.get(d.offer_id, []))
            out.append(f"{indent}  offer {d.offer_id}: {states or 'not published yet'}")
            mail = found.deliveries.get(d.offer_id)
            if mail is None:
                out.append(f"{indent}  e-mail: no outcome yet")
            else:
                reason = f" ({mail['reason']})" if mail.get("reason") else ""
                out.append(f"{indent}  e-mail: {mail['state']}{reason} {mail['message_id']}")

    for swipe in found.swipes:
        out.append(f"swipe {swipe.event_id} at {swipe.occurred_at} in {swipe.store_id}")
        if swipe.dead_letter:
            out.append(f"  dead-lettered: {swipe.dead_letter}")
            continue
        out.append(f"  normalized: {'yes' if swipe.normalized else 'not (yet)'}")
        change = swipe.profile_change
        if change is None:
            out.append("  profile change: none (a duplicate, or not applied yet)")
        else:
            out.append(
                f"  profile change: {change['customer_id']}, visit {change['visits']}, "
                f"consent {change['marketing_consent']}"
            )
        decision_lines(swipe.decisions, "  ")
    if found.calendar:
        out.append("calendar")
        for d in found.calendar:
            day = d.trigger.day.isoformat() if d.trigger.day else dt.date.min.isoformat()
            out.append(f"  {day}")
            decision_lines([d], "    ")
    return out
