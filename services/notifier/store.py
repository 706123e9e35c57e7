"""The notifier's repository: contacts and deliveries, in SQLite or MongoDB.

Both implementations take whole batches: a few reads per batch, one write (`apply`) per
batch in one transaction (SQLite) or one unordered bulk write per collection (MongoDB).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from pymongo import DeleteOne, ReplaceOne, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase

from services.notifier.domain import Contact, Delivery, DeliveryStatus
from shared.events import OfferIssued
from shared.settings import StoreSettings
from shared.store import StoreLocation, open_mongo, open_sqlite

SERVICE = "notifier"
_CHUNK = 500


@dataclass(slots=True)
class StoreChanges:
    """Everything one batch (or one poll) writes."""

    contacts: Sequence[Contact] = ()
    erased: Collection[str] = ()
    """Customer ids whose contact is deleted (right to be forgotten)."""
    deliveries: Sequence[Delivery] = ()
    bounced: Sequence[tuple[str, str]] = field(default_factory=list)
    """(customer id, address): that contact's address bounced, if it is still the same one."""

    def __bool__(self) -> bool:
        return bool(self.contacts or self.erased or self.deliveries or self.bounced)


class NotifierRepository(Protocol):
    """What the notifier keeps: contacts and one delivery per offer id."""

    async def get_contacts(self, customer_ids: Collection[str]) -> dict[str, Contact]:
        """Known contacts among these customers."""
        ...

    async def get_deliveries(self, offer_ids: Collection[str]) -> dict[str, Delivery]:
        """Stored deliveries of these offers."""
        ...

    async def open_deliveries(self, customer_ids: Collection[str]) -> list[Delivery]:
        """Not-yet-final deliveries (waiting_contact, pending, sending) of these customers."""
        ...

    async def due_deliveries(self, now: dt.datetime, limit: int) -> list[Delivery]:
        """`pending` deliveries whose `not_before` has passed, and `sending` ones, oldest first."""
        ...

    async def apply(self, changes: StoreChanges) -> None:
        """Write a batch's changes at once."""
        ...

    async def close(self) -> None: ...


# ---------------------------------------------------------------- (de)serialization


def _ts(value: dt.datetime | None) -> str | None:
    """Fixed-width UTC text, so that SQLite compares times as strings."""
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds")


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _offer(text: str | bytes | None) -> OfferIssued | None:
    return None if text is None else OfferIssued.model_validate_json(text)


def _chunks(values: Collection[str]) -> Iterator[list[str]]:
    items = [str(v) for v in dict.fromkeys(values)]
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


# ---------------------------------------------------------------- SQLite

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS contacts (
        customer_id TEXT PRIMARY KEY,
        email TEXT,
        first_name TEXT,
        marketing_consent INTEGER NOT NULL,
        home_store_id TEXT,
        bounced INTEGER NOT NULL DEFAULT 0,
        changed_at TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS deliveries (
        offer_id TEXT PRIMARY KEY,
        customer_id TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        message_id TEXT NOT NULL,
        offer TEXT,
        updated_at TEXT NOT NULL,
        not_before TEXT,
        last_error TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS deliveries_customer_state ON deliveries (customer_id, state)",
    "CREATE INDEX IF NOT EXISTS deliveries_state_not_before ON deliveries (state, not_before)",
)
_DELIVERY_COLUMNS = (
    "offer_id, customer_id, state, attempts, message_id, offer, updated_at, not_before, last_error"
)


def _delivery_row(row: tuple[Any, ...]) -> Delivery:
    offer_id, customer_id, state, attempts, message_id, offer, updated_at, not_before, error = row
    return Delivery(
        offer_id=offer_id,
        customer_id=customer_id,
        state=cast(DeliveryStatus, state),
        attempts=int(attempts),
        message_id=message_id,
        offer=_offer(offer),
        updated_at=dt.datetime.fromisoformat(updated_at),
        not_before=dt.datetime.fromisoformat(not_before) if not_before else None,
        last_error=error,
    )


def _contact_row(row: tuple[Any, ...]) -> Contact:
    customer_id, email, first_name, consent, home_store_id, bounced, changed_at = row
    return Contact(
        customer_id=customer_id,
        email=email,
        first_name=first_name,
        marketing_consent=bool(consent),
        home_store_id=home_store_id,
        bounced=bool(bounced),
        changed_at=dt.datetime.fromisoformat(changed_at) if changed_at else None,
    )


class SqliteNotifierRepository:
    """SQLite (a file per service, or memory); calls run in a worker thread, one at a time."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection
        self._lock = asyncio.Lock()
        for statement in _SCHEMA:
            self._db.execute(statement)

    @classmethod
    def open(cls, location: StoreLocation) -> SqliteNotifierRepository:
        return cls(open_sqlite(location, SERVICE))

    async def _run(self, fn: Any, *args: Any) -> Any:
        async with self._lock:
            return await asyncio.to_thread(fn, *args)

    def _select(self, sql: str, keys: Collection[str]) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        for chunk in _chunks(keys):
            marks = ",".join("?" * len(chunk))
            rows.extend(self._db.execute(sql.format(marks=marks), chunk).fetchall())
        return rows

    async def get_contacts(self, customer_ids: Collection[str]) -> dict[str, Contact]:
        sql = (
            "SELECT customer_id, email, first_name, marketing_consent, home_store_id, bounced, "
            "changed_at FROM contacts WHERE customer_id IN ({marks})"
        )
        rows = await self._run(self._select, sql, customer_ids)
        return {c.customer_id: c for c in map(_contact_row, rows)}

    async def get_deliveries(self, offer_ids: Collection[str]) -> dict[str, Delivery]:
        sql = f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE offer_id IN ({{marks}})"  # noqa: S608  # only placeholders are formatted in
        rows = await self._run(self._select, sql, offer_ids)
        return {d.offer_id: d for d in map(_delivery_row, rows)}

    async def open_deliveries(self, customer_ids: Collection[str]) -> list[Delivery]:
        sql = (
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE customer_id IN ({{marks}}) "  # noqa: S608  # only placeholders are formatted in
            "AND state IN ('waiting_contact', 'pending', 'sending') ORDER BY updated_at, offer_id"
        )
        rows = await self._run(self._select, sql, customer_ids)
        return [_delivery_row(r) for r in rows]

    def _due(self, now: str, limit: int) -> list[tuple[Any, ...]]:
        sql = (
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries "  # noqa: S608  # constant column list
            "WHERE state = 'sending' OR (state = 'pending' AND not_before <= ?) "
            "ORDER BY updated_at, offer_id LIMIT ?"
        )
        return self._db.execute(sql, (now, limit)).fetchall()

    async def due_deliveries(self, now: dt.datetime, limit: int) -> list[Delivery]:
        rows = await self._run(self._due, _ts(now), limit)
        return [_delivery_row(r) for r in rows]

    def _apply(self, changes: StoreChanges) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "DELETE FROM contacts WHERE customer_id = ?", [(c,) for c in changes.erased]
            )
            db.executemany(
                "INSERT OR REPLACE INTO contacts (customer_id, email, first_name, "
                "marketing_consent, home_store_id, bounced, changed_at) VALUES (?,?,?,?,?,?,?)",
                [
                    (
                        c.customer_id,
                        c.email,
                        c.first_name,
                        int(c.marketing_consent),
                        c.home_store_id,
                        int(c.bounced),
                        _ts(c.changed_at),
                    )
                    for c in changes.contacts
                ],
            )
            db.executemany(
                "UPDATE contacts SET bounced = 1 WHERE customer_id = ? AND email = ?",
                list(changes.bounced),
            )
            db.executemany(
                f"INSERT OR REPLACE INTO deliveries ({_DELIVERY_COLUMNS}) "  # noqa: S608  # constant column list
                "VALUES (?,?,?,?,?,?,?,?,?)",
                [
                    (
                        d.offer_id,
                        d.customer_id,
                        d.state,
                        d.attempts,
                        d.message_id,
                        d.offer.model_dump_json() if d.offer is not None else None,
                        _ts(d.updated_at),
                        _ts(d.not_before),
                        d.last_error,
                    )
                    for d in changes.deliveries
                ],
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    async def apply(self, changes: StoreChanges) -> None:
        if changes:
            await self._run(self._apply, changes)

    async def close(self) -> None:
        async with self._lock:
            self._db.close()


# ---------------------------------------------------------------- MongoDB


def _contact_doc(contact: Contact) -> dict[str, Any]:
    return {
        "_id": contact.customer_id,
        "email": contact.email,
        "first_name": contact.first_name,
        "marketing_consent": contact.marketing_consent,
        "home_store_id": contact.home_store_id,
        "bounced": contact.bounced,
        "changed_at": contact.changed_at,
    }


def _contact_from_doc(doc: dict[str, Any]) -> Contact:
    return Contact(
        customer_id=str(doc["_id"]),
        email=doc.get("email"),
        first_name=doc.get("first_name"),
        marketing_consent=bool(doc.get("marketing_consent")),
        home_store_id=doc.get("home_store_id"),
        bounced=bool(doc.get("bounced")),
        changed_at=_aware(doc.get("changed_at")),
    )


def _delivery_doc(delivery: Delivery) -> dict[str, Any]:
    offer = delivery.offer
    return {
        "_id": delivery.offer_id,
        "customer_id": delivery.customer_id,
        "state": delivery.state,
        "attempts": delivery.attempts,
        "message_id": delivery.message_id,
        # The offer's JSON as text: Decimal stays exact, dates stay ISO.
        "offer": offer.model_dump_json() if offer is not None else None,
        "updated_at": delivery.updated_at,
        "not_before": delivery.not_before,
        "last_error": delivery.last_error,
    }


def _delivery_from_doc(doc: dict[str, Any]) -> Delivery:
    updated_at = _aware(doc["updated_at"])
    if updated_at is None:
        raise ValueError(f"delivery {doc['_id']!r} has no updated_at")
    return Delivery(
        offer_id=str(doc["_id"]),
        customer_id=str(doc["customer_id"]),
        state=cast(DeliveryStatus, doc["state"]),
        attempts=int(doc.get("attempts", 0)),
        message_id=str(doc["message_id"]),
        offer=_offer(doc.get("offer")),
        updated_at=updated_at,
        not_before=_aware(doc.get("not_before")),
        last_error=doc.get("last_error"),
    )


class MongoNotifierRepository:
    """MongoDB: collections `notifier_contacts` and `notifier_deliveries`, keyed by `_id`.

    Filters are built from typed strings only, so an id like `{"$gt": ""}` stays data.
    """

    def __init__(
        self, database: AsyncDatabase[dict[str, Any]] | Any, *, client: Any = None
    ) -> None:
        self._contacts = database["notifier_contacts"]
        self._deliveries = database["notifier_deliveries"]
        self._client = client

    async def ensure_indexes(self) -> None:
        await self._deliveries.create_index([("customer_id", 1), ("state", 1)])
        await self._deliveries.create_index([("state", 1), ("not_before", 1)])

    async def get_contacts(self, customer_ids: Collection[str]) -> dict[str, Contact]:
        found: dict[str, Contact] = {}
        for chunk in _chunks(customer_ids):
            async for doc in self._contacts.find({"_id": {"$in": chunk}}):
                contact = _contact_from_doc(doc)
                found[contact.customer_id] = contact
        return found

    async def get_deliveries(self, offer_ids: Collection[str]) -> dict[str, Delivery]:
        found: dict[str, Delivery] = {}
        for chunk in _chunks(offer_ids):
            async for doc in self._deliveries.find({"_id": {"$in": chunk}}):
                delivery = _delivery_from_doc(doc)
                found[delivery.offer_id] = delivery
        return found

    async def open_deliveries(self, customer_ids: Collection[str]) -> list[Delivery]:
        found: list[Delivery] = []
        for chunk in _chunks(customer_ids):
            query = {
                "customer_id": {"$in": chunk},
                "state": {"$in": ["waiting_contact", "pending", "sending"]},
            }
            async for doc in self._deliveries.find(query).sort([("updated_at", 1), ("_id", 1)]):
                found.append(_delivery_from_doc(doc))
        return found

    async def due_deliveries(self, now: dt.datetime, limit: int) -> list[Delivery]:
        query = {
            "$or": [
                {"state": "sending"},
                {"state": "pending", "not_before": {"$lte": now.astimezone(dt.UTC)}},
            ]
        }
        cursor = self._deliveries.find(query).sort([("updated_at", 1), ("_id", 1)]).limit(limit)
        return [_delivery_from_doc(doc) async for doc in cursor]

    async def apply(self, changes: StoreChanges) -> None:
        contact_ops: list[Any] = [DeleteOne({"_id": str(c)}) for c in changes.erased]
        contact_ops += [
            ReplaceOne({"_id": c.customer_id}, _contact_doc(c), upsert=True)
            for c in changes.contacts
        ]
        contact_ops += [
            UpdateOne({"_id": str(cid), "email": str(addr)}, {"$set": {"bounced": True}})
            for cid, addr in changes.bounced
        ]
        if contact_ops:
            # A batch's plan names each customer at most once among erased and upserted ids.
            await self._contacts.bulk_write(contact_ops, ordered=False)
        delivery_ops = [
            ReplaceOne({"_id": d.offer_id}, _delivery_doc(d), upsert=True)
            for d in changes.deliveries
        ]
        if delivery_ops:
            await self._deliveries.bulk_write(delivery_ops, ordered=False)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


async def open_repository(store: StoreSettings) -> NotifierRepository:
    """The repository `CRM_STORE_URL` names."""
    location = StoreLocation.parse(store.store_url)
    if location.kind == "mongodb":
        client, database = open_mongo(location, store.mongo_database)
        repository = MongoNotifierRepository(database, client=client)
        await repository.ensure_indexes()
        return repository
    return SqliteNotifierRepository.open(location)
