"""Ingest's state in SQLite: seen event keys with their time, and the card -> customer links."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Collection, Mapping

from shared.storage import IN_LIST, SqliteStore, in_list


class SqliteIngestRepository(SqliteStore):
    """Tables `seen_events` and `card_links`; each `record` is one transaction."""

    SERVICE = "ingest"
    SCHEMA = """
    CREATE TABLE IF NOT EXISTS seen_events (
        key TEXT PRIMARY KEY, seen_at TEXT NOT NULL) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS seen_events_at ON seen_events (seen_at);
    CREATE TABLE IF NOT EXISTS card_links (
        card_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS card_links_customer ON card_links (customer_id);
    """

    async def seen(self, keys: Collection[str]) -> set[str]:
        values = in_list(keys)

        def work(db: sqlite3.Connection) -> set[str]:
            rows = db.execute(f"SELECT key FROM seen_events WHERE key IN {IN_LIST}", (values,))  # noqa: S608
            return {row[0] for row in rows}

        return await self.read(work) if keys else set()

    async def customers_of_cards(self, cards: Collection[str]) -> dict[str, str]:
        values = in_list(cards)

        def work(db: sqlite3.Connection) -> dict[str, str]:
            rows = db.execute(
                f"SELECT card_id, customer_id FROM card_links WHERE card_id IN {IN_LIST}",  # noqa: S608
                (values,),
            )
            return {card: customer for card, customer in rows}

        return await self.read(work) if cards else {}

    async def cards_of_customer(self, customer_id: str) -> list[str]:
        def work(db: sqlite3.Connection) -> list[str]:
            rows = db.execute(
                "SELECT card_id FROM card_links WHERE customer_id = ?", (str(customer_id),)
            )
            return [row[0] for row in rows]

        return await self.read(work)

    async def record(
        self, keys: Collection[str], links: Mapping[str, str], at: dt.datetime
    ) -> None:
        stamp = at.isoformat()
        seen_rows = [(str(key), stamp) for key in keys]
        link_rows = [(str(card), str(customer)) for card, customer in links.items()]

        def work(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR IGNORE INTO seen_events (key, seen_at) VALUES (?, ?)", seen_rows
            )
            db.executemany(
                "INSERT INTO card_links (card_id, customer_id) VALUES (?, ?) "
                "ON CONFLICT (card_id) DO UPDATE SET customer_id = excluded.customer_id",
                link_rows,
            )

        if seen_rows or link_rows:
            await self.write(work)

    async def forget_before(self, cutoff: dt.datetime) -> int:
        def work(db: sqlite3.Connection) -> int:
            cursor = db.execute("DELETE FROM seen_events WHERE seen_at < ?", (cutoff.isoformat(),))
            return cursor.rowcount

        return await self.write(work)
