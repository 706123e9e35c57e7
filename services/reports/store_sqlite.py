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
_ONCE = (
    "INSERT INTO facts (kind, id, customer_id, doc) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (kind, id) DO NOTHING"
)
_LATEST = (
    "INSERT INTO facts (kind, id, customer_id, doc) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (kind, id) DO UPDATE SET doc = excluded.doc"
)
_REISSUE = (
    "DELETE FROM facts WHERE kind = 'revocation' AND id = ? "
    "AND EXISTS (SELECT 1 FROM facts WHERE kind = 'campaign' AND id = ?)"
)
"""Clears the revocation of an offer issued again (its campaign fact is there already)."""


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
        rows = [(f, (f.kind, f.id, f.customer_id, orjson.dumps(f.doc).decode())) for f in facts]
        # Offers' facts depend on their order (a revocation, then a re-issue); the rest (most
        # of a batch: purchases) do not, and go in one statement.
        ordered = [(f, row) for f, row in rows if f.kind == "campaign" or f.latest_wins]
        plain = [row for f, row in rows if not (f.kind == "campaign" or f.latest_wins)]
        erased = erased_ids(facts)

        def work(db: sqlite3.Connection) -> None:
            db.executemany(_ONCE, plain)
            for fact, row in ordered:
                if fact.latest_wins:
                    db.execute(_LATEST, row)
                    continue
                if fact.issues:
                    db.execute(_REISSUE, (fact.id, fact.id))
                db.execute(_ONCE, row)
            if erased:
                db.execute(_UNLINK, (in_list(erased),))

        if rows:
            await self.write(work)

    async def load(self) -> Facts:
        def work(db: sqlite3.Connection) -> Facts:
            rows = db.execute("SELECT kind, id, doc FROM facts").fetchall()
            return facts_of((kind, fact_id, orjson.loads(doc)) for kind, fact_id, doc in rows)

        return await self.read(work)
