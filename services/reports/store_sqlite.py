"""The reports' facts in SQLite: one row per fact, its figures as JSON text."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import cast

import orjson

from services.reports.domain import Facts
from services.reports.store import (
    Fact,
    FactKind,
    erased_ids,
    facts_of,
    linked_ids,
    stored_row,
)
from shared.erasure import erasure_mark, unlinked_token
from shared.storage import IN_LIST, SqliteStore, in_list

_UNLINK = (
    "UPDATE facts SET customer_id = ?1, doc = CASE WHEN json_type(doc, '$.c') IS NULL"
    " THEN doc ELSE json_set(doc, '$.c', ?1) END"
    " WHERE customer_id = ?2 AND kind NOT IN ('erased', 'alias')"
)
"""Unlinks every fact of one customer (an erasure): its id becomes the token, in the row and
in the figures."""
_ALIASES = "SELECT id FROM facts WHERE kind = 'alias' AND customer_id = ?"
_FORGET_ALIASES = "DELETE FROM facts WHERE kind = 'alias' AND customer_id = ?"
_MARK = (
    "INSERT INTO facts (kind, id, customer_id, doc) VALUES ('erased', ?, NULL, '{}')"
    " ON CONFLICT (kind, id) DO NOTHING"
)
_ERASED = f"SELECT id FROM facts WHERE kind = 'erased' AND id IN {IN_LIST}"  # noqa: S608
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


def _row(fact: Fact) -> tuple[str, str, str | None, str]:
    kind, fact_id, customer_id, doc = stored_row(fact)
    return (kind, fact_id, customer_id, orjson.dumps(doc).decode())


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
        rows = [(f, _row(f)) for f in facts]
        # Offers' facts depend on their order (a revocation, then a re-issue); the rest (most
        # of a batch: purchases) do not, and go in one statement.
        ordered = [(f, row) for f, row in rows if f.kind == "campaign" or f.latest_wins]
        plain = [row for f, row in rows if not (f.kind == "campaign" or f.latest_wins)]
        erased = erased_ids(facts)
        linked = linked_ids(facts)

        def work(db: sqlite3.Connection) -> bool:
            db.executemany(_ONCE, plain)
            for fact, row in ordered:
                if fact.latest_wins:
                    db.execute(_LATEST, row)
                    continue
                if fact.issues:
                    db.execute(_REISSUE, (fact.id, fact.id))
                db.execute(_ONCE, row)
            # Customers erased before whose facts came now, and customers erased now.
            found = db.execute(_ERASED, (in_list(linked),)).fetchall() if linked else []
            unlink = sorted({*erased, *(linked[mark] for (mark,) in found)})
            for customer_id in unlink:
                # The customers a card link merged into this one go with it, under its token;
                # their later facts are recognised by their own marks.
                merged = [row[0] for row in db.execute(_ALIASES, (customer_id,))]
                token = unlinked_token()
                for who in (customer_id, *merged):
                    db.execute(_UNLINK, (token, who))
                db.executemany(_MARK, [(erasure_mark(m),) for m in merged])
                db.execute(_FORGET_ALIASES, (customer_id,))
            return bool(unlink)

        if not rows:
            return
        unlinked: bool = await self.write(work)
        if unlinked:  # the WAL is checkpointed: no erased id lingers there
            await self.checkpoint()

    async def facts_of_customer(self, customer_id: str) -> list[Fact]:
        def work(db: sqlite3.Connection) -> list[Fact]:
            rows = db.execute(
                "SELECT kind, id, doc FROM facts WHERE customer_id = ? ORDER BY kind, id",
                (customer_id,),
            ).fetchall()
            return [
                Fact(cast(FactKind, kind), fact_id, customer_id, orjson.loads(doc))
                for kind, fact_id, doc in rows
            ]

        return await self.read(work)

    async def load(self) -> Facts:
        def work(db: sqlite3.Connection) -> Facts:
            rows = db.execute("SELECT kind, id, doc FROM facts").fetchall()
            return facts_of((kind, fact_id, orjson.loads(doc)) for kind, fact_id, doc in rows)

        return await self.read(work)
