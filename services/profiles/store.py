"""Where profiles are kept: one document per customer, SQLite or MongoDB, written per batch.

Both implementations hold the same contract (tests/integration/test_profiles_store.py):
`get_many` / `save_many` for the batch path, and look-ups for the call-centre API and the
offer rules (by card, by birthday, by first/last purchase day).

Every write is guarded by the document's `version`: a document saved with version `n` must
be stored with version `n - 1` (or be new when `n == 1`). Another consumer that changed the
document meanwhile (a merge from a profile on another partition) makes the batch fail with
`ConcurrentUpdateError`, and the batch is retried on fresh documents.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from collections.abc import Collection, Sequence
from typing import Any, Literal, Protocol

import orjson
from pymongo import IndexModel, ReplaceOne
from pymongo.errors import BulkWriteError

from services.profiles.domain import CustomerProfile
from shared.settings import StoreSettings
from shared.store import StoreLocation, open_mongo, open_sqlite

SERVICE = "profiles"
COLLECTION = "profiles"

_CHUNK = 500
"""Ids per `IN (...)` query: far below SQLite's variable limit."""

_DUPLICATE_KEY = 11000
"""MongoDB's error code when an upsert meets a document of another version."""

Kind = Literal["profile", "alias", "erased"]


class ConcurrentUpdateError(RuntimeError):
    """A document changed in the store since it was read: retry the batch."""


class ProfilesRepository(Protocol):
    """The profiles' store, batch-oriented."""

    async def get_many(self, customer_ids: Collection[str]) -> dict[str, CustomerProfile]:
        """The stored documents of these customers (profiles, aliases, tombstones)."""
        ...

    async def save_many(self, profiles: Sequence[CustomerProfile]) -> None:
        """Write these documents at once (each `version` one above the stored one)."""
        ...

    async def get(self, customer_id: str) -> CustomerProfile | None:
        """One stored document, as is (an alias is not followed)."""
        ...

    async def find_by_card(self, card_id: str) -> CustomerProfile | None:
        """The live profile a card feeds."""
        ...

    async def count(self) -> int:
        """Live profiles (neither aliases nor erased)."""
        ...

    async def export(self, customer_id: str) -> dict[str, Any]:
        """Everything stored of a customer, JSON-able (empty `document` when unknown)."""
        ...

    async def ids_by_birthday(self, month_day: str) -> list[str]:
        """Live profiles born on `MM-DD`, sorted."""
        ...

    async def ids_by_first_purchase(self, day: dt.date) -> list[str]:
        """Live profiles whose first purchase was on `day` (UTC), sorted."""
        ...

    async def ids_by_last_purchase(self, start: dt.date, end: dt.date) -> list[str]:
        """Live profiles whose last purchase was from `start` to `end` inclusive, sorted."""
        ...

    async def close(self) -> None: ...


def kind_of(profile: CustomerProfile) -> Kind:
    if profile.merged_into is not None:
        return "alias"
    if profile.erased:
        return "erased"
    return "profile"


def _text(value: object, what: str) -> str:
    """Look-up values must be plain strings: a dict such as `{"$gt": ""}` is refused."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string")
    return value


def _md(value: object) -> str:
    text = _text(value, "month_day")
    if len(text) != 5 or text[2] != "-" or not (text[:2] + text[3:]).isdigit():
        raise ValueError("month_day must be MM-DD")
    return text


# ---------------------------------------------------------------- SQLite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS profiles (
    customer_id TEXT PRIMARY KEY NOT NULL,
    version INTEGER NOT NULL,
    kind TEXT NOT NULL,
    merged_into TEXT,
    birth_md TEXT,
    first_purchase_on TEXT,
    last_purchase_on TEXT,
    doc TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS profiles_kind ON profiles(kind);
CREATE INDEX IF NOT EXISTS profiles_merged_into ON profiles(merged_into);
CREATE INDEX IF NOT EXISTS profiles_birth_md ON profiles(birth_md);
CREATE INDEX IF NOT EXISTS profiles_first_purchase_on ON profiles(first_purchase_on);
CREATE INDEX IF NOT EXISTS profiles_last_purchase_on ON profiles(last_purchase_on);
CREATE TABLE IF NOT EXISTS profile_cards (
    card_id TEXT PRIMARY KEY NOT NULL,
    customer_id TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS profile_cards_customer ON profile_cards(customer_id);
"""

_UPSERT = """
INSERT INTO profiles (
    customer_id, version, kind, merged_into, birth_md, first_purchase_on, last_purchase_on, doc
) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (customer_id) DO UPDATE SET
    version = excluded.version,
    kind = excluded.kind,
    merged_into = excluded.merged_into,
    birth_md = excluded.birth_md,
    first_purchase_on = excluded.first_purchase_on,
    last_purchase_on = excluded.last_purchase_on,
    doc = excluded.doc
WHERE profiles.version = excluded.version - 1
"""

_UPSERT_CARD = """
INSERT INTO profile_cards (card_id, customer_id) VALUES (?, ?)
ON CONFLICT (card_id) DO UPDATE SET customer_id = excluded.customer_id
WHERE profile_cards.customer_id <> excluded.customer_id
"""


class SqliteProfilesRepository:
    """Profiles in SQLite: the document as JSON text, the looked-up keys as indexed columns."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        conn.executescript(_SCHEMA)

    @classmethod
    def open(cls, location: StoreLocation) -> SqliteProfilesRepository:
        return cls(open_sqlite(location, SERVICE))

    # -- batch path (runs in a worker thread, one batch at a time)

    def _get_many(self, ids: list[str]) -> dict[str, CustomerProfile]:
        found: dict[str, CustomerProfile] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            # Only placeholders are formatted into the statement; the ids are parameters.
            marks = ",".join("?" * len(chunk))
            rows = self._conn.execute(
                f"SELECT customer_id, doc FROM profiles WHERE customer_id IN ({marks})",  # noqa: S608
                chunk,
            )
            for customer_id, doc in rows:
                found[customer_id] = CustomerProfile.model_validate_json(doc)
        return found

    def _save_many(self, profiles: Sequence[CustomerProfile]) -> None:
        rows = []
        cards: list[tuple[str, str]] = []
        dropped: list[tuple[str]] = []
        for p in profiles:
            kind = kind_of(p)
            rows.append(
                (
                    p.customer_id,
                    p.version,
                    kind,
                    p.merged_into,
                    p.birth_md(),
                    p.first_purchase_on(),
                    p.last_purchase_on(),
                    p.model_dump_json(),
                )
            )
            if kind == "profile":
                cards.extend((card, p.customer_id) for card in p.card_ids)
            else:
                dropped.append((p.customer_id,))
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            before = conn.total_changes
            conn.executemany(_UPSERT, rows)
            if conn.total_changes - before != len(rows):
                raise ConcurrentUpdateError("a profile changed in the store since it was read")
            conn.executemany("DELETE FROM profile_cards WHERE customer_id = ?", dropped)
            conn.executemany(_UPSERT_CARD, cards)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async def get_many(self, customer_ids: Collection[str]) -> dict[str, CustomerProfile]:
        ids = [_text(i, "customer_id") for i in customer_ids]
        if not ids:
            return {}
        async with self._lock:
            return await asyncio.to_thread(self._get_many, ids)

    async def save_many(self, profiles: Sequence[CustomerProfile]) -> None:
        if not profiles:
            return
        async with self._lock:
            await asyncio.to_thread(self._save_many, profiles)

    # -- look-ups (small, indexed: run inline)

    def _one(self, sql: str, *params: object) -> CustomerProfile | None:
        row = self._conn.execute(sql, params).fetchone()
        return CustomerProfile.model_validate_json(row[0]) if row else None

    def _ids(self, sql: str, *params: object) -> list[str]:
        return [row[0] for row in self._conn.execute(sql, params)]

    async def get(self, customer_id: str) -> CustomerProfile | None:
        return self._one(
            "SELECT doc FROM profiles WHERE customer_id = ?", _text(customer_id, "customer_id")
        )

    async def find_by_card(self, card_id: str) -> CustomerProfile | None:
        return self._one(
            "SELECT p.doc FROM profile_cards c JOIN profiles p ON p.customer_id = c.customer_id"
            " WHERE c.card_id = ? AND p.kind = 'profile'",
            _text(card_id, "card_id"),
        )

    async def count(self) -> int:
        row = self._conn.execute("SELECT count(*) FROM profiles WHERE kind = 'profile'").fetchone()
        return int(row[0])

    async def export(self, customer_id: str) -> dict[str, Any]:
        customer_id = _text(customer_id, "customer_id")
        profile = await self.get(customer_id)
        aliases = self._ids(
            "SELECT customer_id FROM profiles WHERE merged_into = ? ORDER BY customer_id",
            customer_id,
        )
        return _export(customer_id, profile, aliases)

    async def ids_by_birthday(self, month_day: str) -> list[str]:
        return self._ids(
            "SELECT customer_id FROM profiles WHERE birth_md = ? AND kind = 'profile'"
            " ORDER BY customer_id",
            _md(month_day),
        )

    async def ids_by_first_purchase(self, day: dt.date) -> list[str]:
        return self._ids(
            "SELECT customer_id FROM profiles WHERE first_purchase_on = ? AND kind = 'profile'"
            " ORDER BY customer_id",
            day.isoformat(),
        )

    async def ids_by_last_purchase(self, start: dt.date, end: dt.date) -> list[str]:
        return self._ids(
            "SELECT customer_id FROM profiles WHERE last_purchase_on BETWEEN ? AND ?"
            " AND kind = 'profile' ORDER BY customer_id",
            start.isoformat(),
            end.isoformat(),
        )

    async def close(self) -> None:
        async with self._lock:
            self._conn.close()


def _export(
    customer_id: str, profile: CustomerProfile | None, aliases: list[str]
) -> dict[str, Any]:
    document = profile.model_dump(mode="json") if profile is not None else None
    export: dict[str, Any] = {
        "customer_id": customer_id,
        "document": document,
        "aliases": aliases,
    }
    # Round-trip through JSON so the caller gets plain JSON types only.
    result: dict[str, Any] = orjson.loads(orjson.dumps(export))
    return result


# ---------------------------------------------------------------- MongoDB


def _to_mongo(profile: CustomerProfile) -> dict[str, Any]:
    doc = profile.model_dump(mode="json")
    doc["_id"] = profile.customer_id
    doc["kind"] = kind_of(profile)
    doc["birth_md"] = profile.birth_md()
    doc["first_purchase_on"] = profile.first_purchase_on()
    doc["last_purchase_on"] = profile.last_purchase_on()
    return doc


def _from_mongo(doc: dict[str, Any]) -> CustomerProfile:
    return CustomerProfile.model_validate(doc)


class MongoProfilesRepository:
    """Profiles in MongoDB: one document per customer, `_id` = customer id."""

    def __init__(self, database: Any, *, client: Any = None) -> None:
        """`database`: a PyMongo `AsyncDatabase` (or the emulator's); `client` is closed on close."""
        self._collection = database[COLLECTION]
        self._client = client

    async def ensure_indexes(self) -> None:
        await self._collection.create_indexes(
            [
                IndexModel("card_ids", name="card_ids"),
                IndexModel("kind", name="kind"),
                IndexModel("merged_into", name="merged_into", sparse=True),
                IndexModel("birth_md", name="birth_md", sparse=True),
                IndexModel("first_purchase_on", name="first_purchase_on", sparse=True),
                IndexModel("last_purchase_on", name="last_purchase_on", sparse=True),
            ]
        )

    async def get_many(self, customer_ids: Collection[str]) -> dict[str, CustomerProfile]:
        ids = [_text(i, "customer_id") for i in customer_ids]
        if not ids:
            return {}
        found: dict[str, CustomerProfile] = {}
        async for doc in self._collection.find({"_id": {"$in": ids}}):
            found[doc["_id"]] = _from_mongo(doc)
        return found

    async def save_many(self, profiles: Sequence[CustomerProfile]) -> None:
        if not profiles:
            return
        ops = [
            ReplaceOne({"_id": p.customer_id, "version": p.version - 1}, _to_mongo(p), upsert=True)
            for p in profiles
        ]
        try:
            await self._collection.bulk_write(ops, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if errors and all(e.get("code") == _DUPLICATE_KEY for e in errors):
                raise ConcurrentUpdateError(
                    "a profile changed in the store since it was read"
                ) from exc
            raise

    async def get(self, customer_id: str) -> CustomerProfile | None:
        doc = await self._collection.find_one({"_id": _text(customer_id, "customer_id")})
        return _from_mongo(doc) if doc else None

    async def find_by_card(self, card_id: str) -> CustomerProfile | None:
        doc = await self._collection.find_one(
            {"card_ids": _text(card_id, "card_id"), "kind": "profile"}
        )
        return _from_mongo(doc) if doc else None

    async def count(self) -> int:
        return int(await self._collection.count_documents({"kind": "profile"}))

    async def _ids(self, query: dict[str, Any]) -> list[str]:
        ids = [doc["_id"] async for doc in self._collection.find(query, {"_id": 1})]
        return sorted(ids)

    async def export(self, customer_id: str) -> dict[str, Any]:
        customer_id = _text(customer_id, "customer_id")
        profile = await self.get(customer_id)
        aliases = await self._ids({"merged_into": customer_id})
        return _export(customer_id, profile, aliases)

    async def ids_by_birthday(self, month_day: str) -> list[str]:
        return await self._ids({"birth_md": _md(month_day), "kind": "profile"})

    async def ids_by_first_purchase(self, day: dt.date) -> list[str]:
        return await self._ids({"first_purchase_on": day.isoformat(), "kind": "profile"})

    async def ids_by_last_purchase(self, start: dt.date, end: dt.date) -> list[str]:
        return await self._ids(
            {
                "last_purchase_on": {"$gte": start.isoformat(), "$lte": end.isoformat()},
                "kind": "profile",
            }
        )

    async def close(self) -> None:
        if self._client is not None:
            result = self._client.close()
            if asyncio.iscoroutine(result):
                await result


async def open_repository(store: StoreSettings) -> ProfilesRepository:
    """The repository `CRM_STORE_URL` names (MongoDB with its indexes, or SQLite)."""
    location = StoreLocation.parse(store.store_url)
    if location.kind == "mongodb":
        client, database = open_mongo(location, store.mongo_database)
        repository = MongoProfilesRepository(database, client=client)
        await repository.ensure_indexes()
        return repository
    return SqliteProfilesRepository.open(location)
