"""Ingest's state: event ids already seen (duplicate detection) and which customer each card feeds.

Two implementations of one small repository: SQLite (embedded default) and MongoDB through
PyMongo's async API. Both answer per batch, never per message.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from collections.abc import Collection, Mapping
from typing import Any, Protocol

from pymongo import UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from shared.settings import StoreSettings
from shared.store import StoreLocation, open_mongo, open_sqlite, ping_mongo

SERVICE = "ingest"


class IngestRepository(Protocol):
    """What ingest keeps between batches."""

    async def seen(self, keys: Collection[str]) -> set[str]:
        """The subset of `keys` recorded before."""

    async def customers_of_cards(self, cards: Collection[str]) -> dict[str, str]:
        """card id -> customer id, for the cards that are linked or known."""

    async def cards_of_customer(self, customer_id: str) -> list[str]:
        """Card ids currently feeding a customer."""

    async def record(
        self, keys: Collection[str], links: Mapping[str, str], at: dt.datetime
    ) -> None:
        """Remember the event keys and the card -> customer links, in one durable step."""

    async def forget_before(self, cutoff: dt.datetime) -> int:
        """Forget event keys seen before `cutoff`; returns how many."""

    async def close(self) -> None: ...


class SqliteIngestRepository:
    """SQLite: one file per service; each `record` is one transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        conn.executescript(
            """
            CREATE TABLE IF NOT EXISTS seen_events (
                key TEXT PRIMARY KEY, seen_at TEXT NOT NULL) WITHOUT ROWID;
            CREATE INDEX IF NOT EXISTS seen_events_at ON seen_events (seen_at);
            CREATE TABLE IF NOT EXISTS card_links (
                card_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL) WITHOUT ROWID;
            CREATE INDEX IF NOT EXISTS card_links_customer ON card_links (customer_id);
            """
        )

    @classmethod
    def open(cls, location: StoreLocation) -> SqliteIngestRepository:
        return cls(open_sqlite(location, SERVICE))

    def _in(self, sql: str, values: Collection[str]) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        items = list(values)
        for start in range(0, len(items), 500):
            chunk = items[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows.extend(self._conn.execute(sql.format(marks=marks), chunk).fetchall())
        return rows

    async def seen(self, keys: Collection[str]) -> set[str]:
        rows = self._in("SELECT key FROM seen_events WHERE key IN ({marks})", keys)
        return {row[0] for row in rows}

    async def customers_of_cards(self, cards: Collection[str]) -> dict[str, str]:
        sql = "SELECT card_id, customer_id FROM card_links WHERE card_id IN ({marks})"
        return {row[0]: row[1] for row in self._in(sql, cards)}

    async def cards_of_customer(self, customer_id: str) -> list[str]:
        rows = self._conn.execute(
            "SELECT card_id FROM card_links WHERE customer_id = ?", (customer_id,)
        ).fetchall()
        return [row[0] for row in rows]

    async def record(
        self, keys: Collection[str], links: Mapping[str, str], at: dt.datetime
    ) -> None:
        stamp = at.isoformat()
        async with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT OR IGNORE INTO seen_events (key, seen_at) VALUES (?, ?)",
                    [(key, stamp) for key in keys],
                )
                self._conn.executemany(
                    "INSERT INTO card_links (card_id, customer_id) VALUES (?, ?) "
                    "ON CONFLICT (card_id) DO UPDATE SET customer_id = excluded.customer_id",
                    list(links.items()),
                )
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    async def forget_before(self, cutoff: dt.datetime) -> int:
        cursor = self._conn.execute(
            "DELETE FROM seen_events WHERE seen_at < ?", (cutoff.isoformat(),)
        )
        return cursor.rowcount

    async def close(self) -> None:
        self._conn.close()


class MongoIngestRepository:
    """MongoDB: `ingest_seen` (TTL-indexed) and `ingest_cards`; one bulk write per batch."""

    def __init__(self, database: AsyncDatabase[dict[str, Any]], *, dedup_days: int = 30) -> None:
        self._seen = database["ingest_seen"]
        self._cards = database["ingest_cards"]
        self._dedup_days = dedup_days

    async def ensure_indexes(self) -> None:
        await self._seen.create_index(
            "seen_at", expireAfterSeconds=self._dedup_days * 86_400, name="seen_ttl"
        )
        await self._cards.create_index("customer_id", name="cards_by_customer")

    async def seen(self, keys: Collection[str]) -> set[str]:
        cursor = self._seen.find({"_id": {"$in": [str(k) for k in keys]}}, {"_id": 1})
        return {doc["_id"] for doc in await cursor.to_list(None)}

    async def customers_of_cards(self, cards: Collection[str]) -> dict[str, str]:
        cursor = self._cards.find({"_id": {"$in": [str(c) for c in cards]}})
        return {doc["_id"]: doc["customer_id"] for doc in await cursor.to_list(None)}

    async def cards_of_customer(self, customer_id: str) -> list[str]:
        cursor = self._cards.find({"customer_id": str(customer_id)}, {"_id": 1})
        return [doc["_id"] for doc in await cursor.to_list(None)]

    async def record(
        self, keys: Collection[str], links: Mapping[str, str], at: dt.datetime
    ) -> None:
        # Links first: a key recorded without its link would hide the link on a retry.
        if links:
            await self._cards.bulk_write(
                [
                    UpdateOne(
                        {"_id": str(card)}, {"$set": {"customer_id": str(customer)}}, upsert=True
                    )
                    for card, customer in links.items()
                ],
                ordered=False,
            )
        if keys:
            try:
                await self._seen.bulk_write(
                    [
                        UpdateOne({"_id": str(key)}, {"$setOnInsert": {"seen_at": at}}, upsert=True)
                        for key in keys
                    ],
                    ordered=False,
                )
            except BulkWriteError as exc:  # concurrent upserts of one key: the key is there
                if any(err.get("code") != 11000 for err in exc.details.get("writeErrors", [])):
                    raise

    async def forget_before(self, cutoff: dt.datetime) -> int:
        result = await self._seen.delete_many({"seen_at": {"$lt": cutoff}})
        return result.deleted_count

    async def close(self) -> None:
        return None


async def open_repository(store: StoreSettings, *, dedup_days: int = 30) -> IngestRepository:
    """The repository `CRM_STORE_URL` names."""
    location = StoreLocation.parse(store.store_url)
    if location.kind == "mongodb":
        client, database = open_mongo(location, store.mongo_database)
        await ping_mongo(database)
        repository = _OwningMongoIngestRepository(database, client, dedup_days=dedup_days)
        await repository.ensure_indexes()
        return repository
    return SqliteIngestRepository.open(location)


class _OwningMongoIngestRepository(MongoIngestRepository):
    """A Mongo repository that closes its own client."""

    def __init__(
        self, database: AsyncDatabase[dict[str, Any]], client: Any, *, dedup_days: int
    ) -> None:
        super().__init__(database, dedup_days=dedup_days)
        self._client = client

    async def close(self) -> None:
        await self._client.close()
