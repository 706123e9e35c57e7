"""The reports' read model: the port the service and the reports use, the facts' codec, and how
the store opens.

One table (collection) of facts keyed by kind and id: purchases, campaigns (issued or held
out), redemptions, deliveries, erasures. A fact is written once (a redelivered event changes
nothing); a delivery's latest state wins. Erasing a customer unlinks their purchases (they still
count for stores and products, no longer for a person). Two adapters hold one contract
(tests/integration/test_reports_store.py): `store_sqlite.py` and `store_mongo.py`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, Protocol

from services.reports.domain import Campaign, Facts, Line, Purchase, Redemption
from shared.settings import StoreSettings
from shared.storage import open_store

FactKind = Literal["purchase", "campaign", "redemption", "delivery", "erased"]


@dataclass(frozen=True, slots=True)
class Fact:
    """One stored fact: `doc` holds its figures in short keys (the read model holds many)."""

    kind: FactKind
    id: str
    customer_id: str | None
    doc: dict[str, Any]


class ReportsRepository(Protocol):
    """The reports' read model."""

    async def add(self, facts: Sequence[Fact]) -> None:
        """Write a batch's facts at once: the first write of a fact wins, a delivery's latest
        state replaces the one before, an erasure unlinks the customer's purchases."""
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


def erased_ids(facts: Iterable[Fact]) -> list[str]:
    """The customers a batch erases, whose purchases the adapters unlink after writing it."""
    return sorted({f.id for f in facts if f.kind == "erased"})


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
    return Fact("campaign", c.offer_id, c.customer_id, doc)


def redemption_fact(r: Redemption, customer_id: str) -> Fact:
    doc = {"at": r.redeemed_at.isoformat(), "b": str(r.basket_total)}
    return Fact("redemption", r.offer_id, customer_id, doc)


def delivery_fact(offer_id: str, customer_id: str, state: str) -> Fact:
    return Fact("delivery", offer_id, customer_id, {"st": state})


def erased_fact(customer_id: str) -> Fact:
    return Fact("erased", customer_id, customer_id, {})


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
                )
            )
        elif kind == "redemption":
            facts.redemptions[fact_id] = Redemption(
                fact_id, dt.datetime.fromisoformat(d["at"]), Decimal(d["b"])
            )
        elif kind == "delivery":
            facts.deliveries[fact_id] = d["st"]
        elif kind == "erased":
            facts.erased.add(fact_id)
    facts.purchases.sort(key=lambda p: (p.at, p.event_id))
    facts.campaigns.sort(key=lambda c: (c.at, c.offer_id))
    return facts
