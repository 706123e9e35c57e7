"""The reports' read model: facts taken from events, in the reports' own store (SQLite or MongoDB).

One table (collection) of facts keyed by kind and id: purchases, campaigns (issued or held
out), redemptions, deliveries, erasures. A fact is written once (a redelivered event changes
nothing); a delivery's latest state wins. Erasing a customer unlinks their purchases (they still
count for stores and products, no longer for a person).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, Protocol

import orjson
from pymongo import ReplaceOne, UpdateMany, UpdateOne

from services.reports.domain import Campaign, Facts, Line, Purchase, Redemption
from shared.settings import StoreSettings
from shared.store import StoreLocation, open_mongo, open_sqlite

SERVICE = "reports"
COLLECTION = "reports_facts"

FactKind = Literal["purchase", "campaign", "redemption", "delivery", "erased"]


@dataclass(frozen=True, slots=True)
class Fact:
    kind: FactKind
    id: str
    customer_id: str | None
    doc: dict[str, Any]


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


def facts_of(rows: Sequence[tuple[str, str, dict[str, Any]]]) -> Facts:
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


class ReportsRepository(Protocol):
    async def add(self, facts: Sequence[Fact]) -> None:
        """Write a batch's facts at once (first write of a fact wins; deliveries update)."""
        ...

    async def load(self) -> Facts:
        """Every fact, for the reports."""
        ...

    async def close(self) -> None: ...


# ---------------------------------------------------------------- SQLite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS facts (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    customer_id TEXT,
    doc TEXT NOT NULL,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS facts_customer ON facts(customer_id);
"""


class SqliteReportsRepository:
    """Facts in SQLite; each batch in one transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        conn.executescript(_SCHEMA)

    def _add(self, facts: Sequence[Fact]) -> None:
        conn = self._conn
        conn.execute("BEGIN")
        try:
            for f in facts:
                doc = orjson.dumps(f.doc).decode()
                if f.kind == "delivery":
                    conn.execute(
                        "INSERT INTO facts VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (kind, id) DO UPDATE SET doc = excluded.doc",
                        (f.kind, f.id, f.customer_id, doc),
                    )
                    continue
                conn.execute(
                    "INSERT INTO facts VALUES (?, ?, ?, ?) ON CONFLICT (kind, id) DO NOTHING",
                    (f.kind, f.id, f.customer_id, doc),
                )
                if f.kind == "erased":
                    conn.execute(
                        "UPDATE facts SET customer_id = NULL, doc = json_set(doc, '$.c', NULL) "
                        "WHERE kind = 'purchase' AND customer_id = ?",
                        (f.id,),
                    )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def add(self, facts: Sequence[Fact]) -> None:
        if facts:
            async with self._lock:
                await asyncio.to_thread(self._add, facts)

    def _load(self) -> Facts:
        rows = self._conn.execute("SELECT kind, id, doc FROM facts").fetchall()
        return facts_of([(k, i, orjson.loads(d)) for k, i, d in rows])

    async def load(self) -> Facts:
        async with self._lock:
            return await asyncio.to_thread(self._load)

    async def close(self) -> None:
        self._conn.close()


# ---------------------------------------------------------------- MongoDB


class MongoReportsRepository:
    """Facts in one MongoDB collection, `_id` = `kind:id`; one unordered bulk write per batch."""

    def __init__(self, database: Any, client: Any) -> None:
        self._collection = database[COLLECTION]
        self._client = client

    async def add(self, facts: Sequence[Fact]) -> None:
        operations: list[Any] = []
        for f in facts:
            key = f"{f.kind}:{f.id}"
            document = {"kind": f.kind, "id": f.id, "customer_id": f.customer_id, "doc": f.doc}
            if f.kind == "delivery":
                operations.append(ReplaceOne({"_id": key}, document, upsert=True))
                continue
            operations.append(UpdateOne({"_id": key}, {"$setOnInsert": document}, upsert=True))
            if f.kind == "erased":
                operations.append(
                    UpdateMany(
                        {"kind": "purchase", "customer_id": f.id},
                        {"$set": {"customer_id": None, "doc.c": None}},
                    )
                )
        if operations:
            await self._collection.bulk_write(operations, ordered=True)

    async def load(self) -> Facts:
        rows = [
            (d["kind"], d["id"], d["doc"])
            async for d in self._collection.find({}, {"kind": 1, "id": 1, "doc": 1})
        ]
        return facts_of(rows)

    async def close(self) -> None:
        await self._client.close()


async def open_repository(store: StoreSettings) -> ReportsRepository:
    """The repository `CRM_STORE_URL` names."""
    location = StoreLocation.parse(store.store_url)
    if location.kind == "mongodb":
        client, database = open_mongo(location, store.mongo_database)
        await database.command("ping")
        collection = database[COLLECTION]
        await collection.create_index("customer_id")
        return MongoReportsRepository(database, client)
    return SqliteReportsRepository(open_sqlite(location, SERVICE))
