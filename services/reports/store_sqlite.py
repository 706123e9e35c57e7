"""The reports' facts in SQLite: one row per fact, its figures as JSON text."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import orjson

from services.reports.domain import Facts
from services.reports.store import Fact, erased_ids, facts_of
from shared.storage import IN_LIST, SqliteStore, in_list

_UNLINK = (
    "UPDATE facts SET customer_id = NULL, doc = json_set(doc, '$.c', NULL) "  # noqa: S608
    f"WHERE kind = 'purchase' AND customer_id IN {IN_LIST}"
)
"""Unlinks the purchases of the customers in the list parameter (an erasure)."""


class SqliteReportsRepository(SqliteStore):
    """Table `facts`, keyed by kind and id; each batch in one transaction."""

    SERVICE = "reports"
    SCHEMA = """
    CREATE TABLE IF NOT EXISTS facts (
        kind TEXT NOT NULL,
        id TEXT NOT NULL,
        customer_id TEXT,
        doc TEXT NOT NULL,
        PRIMARY KEY (kind, id)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS facts_customer ON facts(customer_id);
    """

    async def add(self, facts: Sequence[Fact]) -> None:
        rows = [(f.kind, f.id, f.customer_id, orjson.dumps(f.doc).decode()) for f in facts]
        once = [row for row in rows if row[0] != "delivery"]
        deliveries = [row for row in rows if row[0] == "delivery"]
        erased = erased_ids(facts)

        def work(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO facts (kind, id, customer_id, doc) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (kind, id) DO NOTHING",
                once,
            )
            # In batch order, so the latest state of a delivery wins.
            db.executemany(
                "INSERT INTO facts (kind, id, customer_id, doc) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (kind, id) DO UPDATE SET doc = excluded.doc",
                deliveries,
            )
            if erased:
                db.execute(_UNLINK, (in_list(erased),))

        if rows:
            await self.write(work)

    async def load(self) -> Facts:
        def work(db: sqlite3.Connection) -> Facts:
            rows = db.execute("SELECT kind, id, doc FROM facts").fetchall()
            return facts_of((kind, fact_id, orjson.loads(doc)) for kind, fact_id, doc in rows)

        return await self.read(work)
