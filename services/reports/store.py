"""The reports' read model: the port the service and the reports use, the facts' codec, and how
the store opens.

One table (collection) of facts keyed by kind and id: purchases, campaigns (offers issued or
held out), redemptions, deliveries, revocations, erasures, opinions (an interaction's
sentiment about a brand or category), and campaign definitions (one fact
per change of a campaign, keyed by its id and the length of its history, so the newest is the
one with the longest history whatever order they arrive in). A fact is written once (a
redelivered event changes nothing); a delivery's latest state wins, and so does a revocation's.

Erasing a customer unlinks every fact of theirs (purchases, offers issued or held out,
redemptions, deliveries, revocations), and those of the customers a card link merged into them
(`alias` facts): their customer ids are replaced by one random token (`shared.erasure`), so the
figures and the lift still add up and nothing leads back to the card. The erasure itself is kept as the customer id's one-way mark, so a fact of the customer
that arrives after the erasure (another topic, another partition) is unlinked too. Two
adapters hold one contract (tests/integration/test_reports_store.py): `store_sqlite.py` and
`store_mongo.py`.

Revocations follow the offers service's corrections in the order they arrive: `offer_revoked`
writes the offer's revocation; an `offer_issued` of an offer already known (a re-issue by a
later correction, same id) clears it. An `offer_issued` that is the first fact of its offer
clears nothing: a revocation stored before it came from another partition and withdraws it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, Protocol

from services.reports.domain import (
    Campaign,
    CampaignDefinition,
    Facts,
    Line,
    Purchase,
    Redemption,
)
from services.reports.sentiment import Opinion
from shared.campaigns import CampaignChanged
from shared.erasure import erasure_mark, is_unlinked
from shared.settings import StoreSettings
from shared.storage import open_store

FactKind = Literal[
    "purchase",
    "campaign",
    "redemption",
    "delivery",
    "revocation",
    "erased",
    "definition",
    "alias",
    "opinion",
]
LATEST_KINDS: frozenset[str] = frozenset({"delivery", "revocation"})
"""Kinds whose latest write wins; every other fact is written once."""


@dataclass(frozen=True, slots=True)
class Fact:
    """One stored fact: `doc` holds its figures in short keys (the read model holds many)."""

    kind: FactKind
    id: str
    customer_id: str | None
    doc: dict[str, Any]

    @property
    def latest_wins(self) -> bool:
        return self.kind in LATEST_KINDS

    @property
    def issues(self) -> bool:
        """An offer issued: if its campaign fact is already there, this is a re-issue, which
        clears the offer's revocation."""
        return self.kind == "campaign" and not self.doc["h"]


class ReportsRepository(Protocol):
    """The reports' read model."""

    async def add(self, facts: Sequence[Fact]) -> None:
        """Write a batch's facts at once, in order: the first write of a fact wins, a
        delivery's or a revocation's latest state replaces the one before, an issued offer
        whose campaign fact was there already clears its revocation. An erasure, and any fact
        of a customer erased before, unlinks all the customer's facts to a random token."""
        ...

    async def facts_of_customer(self, customer_id: str) -> list[Fact]:
        """Every fact still linked to this customer (right of access)."""
        ...

    async def load(self) -> Facts:
        """Every fact, for the reports."""
        ...

    async def close(self) -> None: ...


def open_repository(store: StoreSettings) -> AbstractAsyncContextManager[ReportsRepository]:
    """The repository `CRM_STORE_URL` names, closed when the context ends."""
    from services.reports.store_mongo import MongoReportsRepository
    from services.reports.store_sqlite import SqliteReportsRepository

    return open_store(store, sqlite=SqliteReportsRepository.open, mongo=MongoReportsRepository.open)


async def customer_export(repository: ReportsRepository, customer_id: str) -> dict[str, Any]:
    """What the reports keep of one customer (right of access): every fact under their id
    (purchases, offers issued or held out, redemptions, deliveries, revocations)."""
    facts = await repository.facts_of_customer(customer_id)
    return {"facts": [{"kind": f.kind, "id": f.id, "figures": f.doc} for f in facts]}


def erased_ids(facts: Iterable[Fact]) -> list[str]:
    """The customers a batch erases, whose facts the adapters unlink after writing it."""
    return sorted({f.customer_id for f in facts if f.kind == "erased" and f.customer_id})


def linked_ids(facts: Iterable[Fact]) -> dict[str, str]:
    """Erasure mark -> customer id of every customer a batch's facts name (an erasure found
    under one of these marks unlinks the new facts too)."""
    return {
        erasure_mark(f.customer_id): f.customer_id
        for f in facts
        if f.kind != "erased" and f.customer_id and not is_unlinked(f.customer_id)
    }


def stored_row(fact: Fact) -> tuple[str, str, str | None, dict[str, Any]]:
    """(kind, id, customer id, doc) as stored: an erasure keeps its mark only."""
    if fact.kind == "erased":
        return (fact.kind, fact.id, None, fact.doc)
    return (fact.kind, fact.id, fact.customer_id, fact.doc)


# ---------------------------------------------------------------- codec


def purchase_fact(p: Purchase) -> Fact:
    doc = {
        "c": p.customer_id,
        "s": p.store_id,
        "at": p.at.isoformat(),
        "d": p.day.isoformat(),
        "t": str(p.total),
        "l": [[x.sku, x.category, str(x.quantity), str(x.amount)] for x in p.lines],
    }
    return Fact("purchase", p.event_id, p.customer_id, doc)


def campaign_fact(c: Campaign) -> Fact:
    doc = {
        "c": c.customer_id,
        "k": c.kind,
        "at": c.at.isoformat(),
        "vf": c.valid_from.isoformat(),
        "vu": c.valid_until.isoformat(),
        "h": c.held_out,
    }
    # Written only when set: facts from before campaigns existed have none of them.
    if c.campaign_id is not None:
        doc["cid"] = c.campaign_id
    if c.variant is not None:
        doc["v"] = c.variant
    if c.global_control:
        doc["g"] = True
    return Fact("campaign", c.offer_id, c.customer_id, doc)


def definition_fact(record: CampaignChanged) -> Fact:
    """What the reports keep of a campaign's record on `crm.campaigns`."""
    spec = record.spec
    doc = {
        "cid": record.campaign_id,
        "n": len(record.history),
        "name": spec.name,
        "t": spec.trigger.type,
        "s": spec.starts_on.isoformat() if spec.starts_on else None,
        "e": spec.ends_on.isoformat() if spec.ends_on else None,
        "v": [v.name for v in spec.variants],
        "h": [[c.at.isoformat(), c.status] for c in record.history],
    }
    return Fact("definition", f"{record.campaign_id}@{len(record.history)}", None, doc)


def redemption_fact(r: Redemption, customer_id: str) -> Fact:
    doc = {"at": r.redeemed_at.isoformat(), "b": str(r.basket_total), "d": str(r.discount)}
    return Fact("redemption", r.offer_id, customer_id, doc)


def revocation_fact(offer_id: str, customer_id: str, revoked_at: dt.datetime, reason: str) -> Fact:
    return Fact("revocation", offer_id, customer_id, {"at": revoked_at.isoformat(), "why": reason})


def delivery_fact(offer_id: str, customer_id: str, state: str) -> Fact:
    return Fact("delivery", offer_id, customer_id, {"st": state})


def alias_fact(merged_customer_id: str, customer_id: str) -> Fact:
    """A card link merged `merged_customer_id` into `customer_id`: erasing the customer unlinks
    the facts kept under the merged id too (those from before the link)."""
    return Fact("alias", merged_customer_id, customer_id, {})


def opinion_fact(o: Opinion) -> Fact:
    """An interaction's sentiment about a brand or category (no text, only the labels)."""
    doc = {"c": o.customer_id, "at": o.at.isoformat(), "s": o.sentiment}
    if o.brand is not None:
        doc["b"] = o.brand
    if o.category is not None:
        doc["g"] = o.category
    return Fact("opinion", o.event_id, o.customer_id, doc)


def erased_fact(customer_id: str) -> Fact:
    """The erasure, keyed by the customer id's one-way mark; the id itself is not stored."""
    return Fact("erased", erasure_mark(customer_id), customer_id, {})


def facts_of(rows: Iterable[tuple[str, str, dict[str, Any]]]) -> Facts:
    """Facts from stored (kind, id, doc) rows."""
    facts = Facts()
    for kind, fact_id, d in rows:
        if kind == "purchase":
            facts.purchases.append(
                Purchase(
                    event_id=fact_id,
                    customer_id=d["c"],
                    store_id=d["s"],
                    at=dt.datetime.fromisoformat(d["at"]),
                    day=dt.date.fromisoformat(d["d"]),
                    total=Decimal(d["t"]),
                    lines=tuple(Line(s, c, Decimal(q), Decimal(a)) for s, c, q, a in d["l"]),
                )
            )
        elif kind == "campaign":
            facts.campaigns.append(
                Campaign(
                    offer_id=fact_id,
                    customer_id=d["c"],
                    kind=d["k"],
                    at=dt.datetime.fromisoformat(d["at"]),
                    valid_from=dt.date.fromisoformat(d["vf"]),
                    valid_until=dt.date.fromisoformat(d["vu"]),
                    held_out=bool(d["h"]),
                    campaign_id=d.get("cid"),
                    variant=d.get("v"),
                    global_control=bool(d.get("g", False)),
                )
            )
        elif kind == "redemption":
            facts.redemptions[fact_id] = Redemption(
                fact_id,
                dt.datetime.fromisoformat(d["at"]),
                Decimal(d["b"]),
                # Facts written before discounts were published have none.
                Decimal(d.get("d", "0")),
            )
        elif kind == "delivery":
            facts.deliveries[fact_id] = d["st"]
        elif kind == "revocation":
            facts.revoked.add(fact_id)
        elif kind == "erased":
            facts.erased.add(fact_id)
        elif kind == "opinion":
            facts.opinions.append(
                Opinion(
                    event_id=fact_id,
                    customer_id=d["c"],
                    at=dt.datetime.fromisoformat(d["at"]),
                    sentiment=d["s"],
                    brand=d.get("b"),
                    category=d.get("g"),
                )
            )
        # "alias": for erasures only, no figure
        elif kind == "definition":
            definition = _definition(d)
            known = facts.definitions.get(definition.campaign_id)
            if known is None or definition.changes > known.changes:
                facts.definitions[definition.campaign_id] = definition
    facts.purchases.sort(key=lambda p: (p.at, p.event_id))
    facts.campaigns.sort(key=lambda c: (c.at, c.offer_id))
    facts.opinions.sort(key=lambda o: (o.at, o.event_id))
    return facts


def _definition(d: dict[str, Any]) -> CampaignDefinition:
    return CampaignDefinition(
        campaign_id=d["cid"],
        name=d["name"],
        changes=d["n"],
        trigger=d["t"],
        starts_on=dt.date.fromisoformat(d["s"]) if d["s"] else None,
        ends_on=dt.date.fromisoformat(d["e"]) if d["e"] else None,
        variants=tuple(d["v"]),
        history=tuple((dt.datetime.fromisoformat(at), status) for at, status in d["h"]),
    )
