"""The offers repository: the customers' read model, the offers and the rejected redemptions.

Two implementations with one behaviour (held to it by one contract test suite): SQLite (embedded,
`sqlite:///DIR` or `memory://`) and MongoDB. Reads and writes are batch-sized: one `load` and
one `apply` per Kafka batch; the calendar queries page through an index.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, Protocol, TypeVar

import orjson
from pymongo import ASCENDING, ReplaceOne, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase

from services.offers.domain import (
    Changes,
    CustomerQuery,
    CustomerRecord,
    OfferRecord,
    Snapshot,
)
from shared.events import OfferIssued, OfferRedeemed, RedemptionRejected
from shared.settings import StoreSettings
from shared.store import StoreLocation, open_mongo, open_sqlite, ping_mongo

SERVICE = "offers"

T = TypeVar("T")


class OffersRepository(Protocol):
    """What the offers service asks of its store."""

    async def load(self, customer_ids: Collection[str], codes: Collection[str]) -> Snapshot:
        """The customers named, all their offers, and the offers with the codes named."""
        ...

    async def apply(self, changes: Changes) -> None:
        """Persist a batch's changes atomically (SQLite) or in one unordered bulk per collection
        (MongoDB). Idempotent: new offers are inserted only if absent, state changes apply only
        to offers still in the state they leave."""
        ...

    async def customers_for_day(
        self, query: CustomerQuery, *, after: str | None, limit: int
    ) -> Snapshot:
        """A page (by customer id, after `after`) of the customers a calendar query finds, with
        all their offers."""
        ...

    async def offers_to_expire(
        self, day: dt.date, *, after: str | None, limit: int
    ) -> list[OfferRecord]:
        """A page (by offer id) of issued offers whose last day is before `day`, and of those
        expired on `day` (to republish after a crash)."""
        ...

    async def open_offers(self, customer_id: str) -> list[OfferRecord]:
        """The customer's offers still issued (neither redeemed nor expired)."""
        ...

    async def used_offers(self, customer_id: str) -> list[OfferRecord]:
        """The customer's redeemed offers."""
        ...

    async def rejections(self, customer_id: str) -> list[RedemptionRejected]:
        """The customer's rejected redemptions."""
        ...

    async def summary(self) -> dict[str, Any]:
        """Counts for the demo: offers per kind and state, rejections per reason, customers."""
        ...

    async def close(self) -> None: ...


def _iso(day: dt.date | None) -> str | None:
    return day.isoformat() if day is not None else None


def _date(text: str | None) -> dt.date | None:
    return dt.date.fromisoformat(text) if text else None


def _sorted(offers: Iterable[OfferRecord]) -> list[OfferRecord]:
    return sorted(offers, key=lambda offer: (offer.valid_from, offer.offer_id))


def _summary(
    offer_counts: Iterable[tuple[str, str, int]],
    rejection_counts: Iterable[tuple[str, int]],
    customers: int,
) -> dict[str, Any]:
    offers: dict[str, dict[str, int]] = {}
    for kind, state, count in offer_counts:
        offers.setdefault(kind, {})[state] = count
    return {
        "offers": offers,
        "offers_total": sum(sum(states.values()) for states in offers.values()),
        "rejections": dict(rejection_counts),
        "customers": customers,
    }


# ---------------------------------------------------------------- SQLite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
    customer_id TEXT PRIMARY KEY,
    marketing_consent INTEGER NOT NULL,
    has_email INTEGER NOT NULL,
    erased INTEGER NOT NULL,
    birth_md TEXT,
    first_purchase_date TEXT,
    anniversary_date TEXT,
    last_visit_date TEXT,
    visits INTEGER NOT NULL,
    home_store_id TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS customers_birth_md ON customers (birth_md);
CREATE INDEX IF NOT EXISTS customers_anniversary ON customers (anniversary_date);
CREATE INDEX IF NOT EXISTS customers_last_visit ON customers (last_visit_date);
CREATE TABLE IF NOT EXISTS offers (
    offer_id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    rule_key TEXT NOT NULL,
    coupon_code TEXT NOT NULL,
    valid_from TEXT NOT NULL,
    valid_until TEXT NOT NULL,
    state TEXT NOT NULL,
    expired_on TEXT,
    issued TEXT NOT NULL,
    redemption TEXT
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS offers_coupon_code ON offers (coupon_code);
CREATE INDEX IF NOT EXISTS offers_customer ON offers (customer_id);
CREATE INDEX IF NOT EXISTS offers_state_until ON offers (state, valid_until);
CREATE INDEX IF NOT EXISTS offers_expired_on ON offers (expired_on);
CREATE INDEX IF NOT EXISTS offers_kind_state ON offers (kind, state);
CREATE TABLE IF NOT EXISTS rejections (
    rejection_id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    doc TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rejections_customer ON rejections (customer_id);
CREATE INDEX IF NOT EXISTS rejections_reason ON rejections (reason);
"""

_CUSTOMER_COLUMNS = (
    "customer_id, marketing_consent, has_email, erased, birth_md, first_purchase_date, "
    "last_visit_date, visits, home_store_id"
)
_OFFER_COLUMNS = "rule_key, state, expired_on, issued, redemption"
# A list parameter travels as one JSON array: `IN (SELECT value FROM json_each(?))`.
_IN_LIST = "(SELECT value FROM json_each(?))"


def _customer_row(row: tuple[Any, ...]) -> CustomerRecord:
    return CustomerRecord(
        customer_id=row[0],
        marketing_consent=bool(row[1]),
        has_email=bool(row[2]),
        erased=bool(row[3]),
        birth_md=row[4],
        first_purchase_date=_date(row[5]),
        last_visit_date=_date(row[6]),
        visits=row[7],
        home_store_id=row[8],
    )


def _offer_row(row: tuple[Any, ...]) -> OfferRecord:
    return OfferRecord(
        issued=OfferIssued.model_validate_json(row[3]),
        rule_key=row[0],
        state=row[1],
        expired_on=_date(row[2]),
        redemption=OfferRedeemed.model_validate_json(row[4]) if row[4] else None,
    )


class SqliteOffersRepository:
    """SQLite: one transaction per batch, every statement parameterized."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection
        self._lock = asyncio.Lock()
        self._db.executescript(_SCHEMA)

    async def _run(self, work: Callable[[], T]) -> T:
        # One batch at a time in a worker thread, so the event loop keeps serving Kafka.
        async with self._lock:
            return await asyncio.to_thread(work)

    async def load(self, customer_ids: Collection[str], codes: Collection[str]) -> Snapshot:
        ids = orjson.dumps(sorted(customer_ids)).decode()
        code_list = orjson.dumps(sorted(codes)).decode()

        def work() -> Snapshot:
            customers = self._db.execute(
                f"SELECT {_CUSTOMER_COLUMNS} FROM customers WHERE customer_id IN {_IN_LIST}",  # noqa: S608
                (ids,),
            ).fetchall()
            offers = self._db.execute(
                f"SELECT {_OFFER_COLUMNS} FROM offers WHERE customer_id IN {_IN_LIST} "  # noqa: S608
                f"UNION SELECT {_OFFER_COLUMNS} FROM offers WHERE coupon_code IN {_IN_LIST}",
                (ids, code_list),
            ).fetchall()
            return _snapshot(customers, offers)

        return await self._run(work)

    async def apply(self, changes: Changes) -> None:
        if not changes:
            return
        customers = [
            (
                c.customer_id,
                int(c.marketing_consent),
                int(c.has_email),
                int(c.erased),
                c.birth_md,
                _iso(c.first_purchase_date),
                _iso(c.anniversary_date),
                _iso(c.last_visit_date),
                c.visits,
                c.home_store_id,
            )
            for c in changes.customers.values()
        ]
        new_offers = [
            (
                o.offer_id,
                o.customer_id,
                o.kind,
                o.rule_key,
                o.coupon_code,
                o.valid_from.isoformat(),
                o.valid_until.isoformat(),
                o.state,
                _iso(o.expired_on),
                o.issued.model_dump_json(),
                o.redemption.model_dump_json() if o.redemption else None,
            )
            for o in changes.new_offers.values()
        ]
        redeemed = [
            (o.redemption.model_dump_json() if o.redemption else None, o.offer_id)
            for o in changes.redeemed.values()
        ]
        expired = [(_iso(o.expired_on), o.offer_id) for o in changes.expired.values()]
        rejections = [
            (r.rejection_id, r.customer_id, r.reason, r.model_dump_json())
            for r in changes.rejections.values()
        ]

        def work() -> None:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT INTO customers (customer_id, marketing_consent, has_email, erased, "
                    "birth_md, first_purchase_date, anniversary_date, last_visit_date, visits, "
                    "home_store_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (customer_id) DO UPDATE SET "
                    "marketing_consent = excluded.marketing_consent, "
                    "has_email = excluded.has_email, erased = excluded.erased, "
                    "birth_md = excluded.birth_md, "
                    "first_purchase_date = excluded.first_purchase_date, "
                    "anniversary_date = excluded.anniversary_date, "
                    "last_visit_date = excluded.last_visit_date, visits = excluded.visits, "
                    "home_store_id = excluded.home_store_id",
                    customers,
                )
                db.executemany(
                    "INSERT INTO offers (offer_id, customer_id, kind, rule_key, coupon_code, "
                    "valid_from, valid_until, state, expired_on, issued, redemption) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (offer_id) DO NOTHING",
                    new_offers,
                )
                db.executemany(
                    "UPDATE offers SET state = 'redeemed', redemption = ? "
                    "WHERE offer_id = ? AND state IN ('issued', 'expired')",
                    redeemed,
                )
                db.executemany(
                    "UPDATE offers SET state = 'expired', expired_on = ? "
                    "WHERE offer_id = ? AND state = 'issued'",
                    expired,
                )
                db.executemany(
                    "INSERT INTO rejections (rejection_id, customer_id, reason, doc) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (rejection_id) DO NOTHING",
                    rejections,
                )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

        await self._run(work)

    async def customers_for_day(
        self, query: CustomerQuery, *, after: str | None, limit: int
    ) -> Snapshot:
        # Fixed SQL per query kind; only values are parameters. `+customer_id` keeps SQLite on the
        # rule's index (the key range would otherwise tempt it into a primary-key scan).
        if query.kind == "birthday":
            where = f"birth_md IN {_IN_LIST}"
            params: tuple[Any, ...] = (orjson.dumps(list(query.month_days)).decode(),)
        elif query.kind == "anniversary":
            where = "anniversary_date = ?"
            params = (_iso(query.on_date),)
        else:
            # Bounded on both sides: SQLite's planner takes a one-sided range for a full scan.
            where = "last_visit_date > '' AND last_visit_date <= ? AND visits >= ?"
            params = (_iso(query.on_date), query.min_visits)
        sql = (
            f"SELECT {_CUSTOMER_COLUMNS} FROM customers WHERE {where} "  # noqa: S608
            "AND erased = 0 AND +customer_id > ? ORDER BY customer_id LIMIT ?"
        )

        def work() -> Snapshot:
            customers = self._db.execute(sql, (*params, after or "", limit)).fetchall()
            ids = orjson.dumps([row[0] for row in customers]).decode()
            offers = self._db.execute(
                f"SELECT {_OFFER_COLUMNS} FROM offers WHERE customer_id IN {_IN_LIST}",  # noqa: S608
                (ids,),
            ).fetchall()
            return _snapshot(customers, offers)

        return await self._run(work)

    async def offers_to_expire(
        self, day: dt.date, *, after: str | None, limit: int
    ) -> list[OfferRecord]:
        iso = day.isoformat()

        def work() -> list[OfferRecord]:
            rows = self._db.execute(
                f"SELECT offer_id, {_OFFER_COLUMNS} FROM offers "  # noqa: S608
                "WHERE state = 'issued' AND valid_until < ? AND offer_id > ? "
                f"UNION SELECT offer_id, {_OFFER_COLUMNS} FROM offers "
                "WHERE expired_on = ? AND state = 'expired' AND offer_id > ? "
                "ORDER BY offer_id LIMIT ?",
                (iso, after or "", iso, after or "", limit),
            ).fetchall()
            return [_offer_row(row[1:]) for row in rows]

        return await self._run(work)

    async def _offers_in_state(self, customer_id: str, state: str) -> list[OfferRecord]:
        def work() -> list[OfferRecord]:
            rows = self._db.execute(
                f"SELECT {_OFFER_COLUMNS} FROM offers WHERE customer_id = ? AND state = ?",  # noqa: S608
                (customer_id, state),
            ).fetchall()
            return _sorted(_offer_row(row) for row in rows)

        return await self._run(work)

    async def open_offers(self, customer_id: str) -> list[OfferRecord]:
        return await self._offers_in_state(customer_id, "issued")

    async def used_offers(self, customer_id: str) -> list[OfferRecord]:
        return await self._offers_in_state(customer_id, "redeemed")

    async def rejections(self, customer_id: str) -> list[RedemptionRejected]:
        def work() -> list[RedemptionRejected]:
            rows = self._db.execute(
                "SELECT doc FROM rejections WHERE customer_id = ? ORDER BY rejection_id",
                (customer_id,),
            ).fetchall()
            return [RedemptionRejected.model_validate_json(row[0]) for row in rows]

        return await self._run(work)

    async def summary(self) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            offers = self._db.execute(
                "SELECT kind, state, COUNT(*) FROM offers GROUP BY kind, state"
            ).fetchall()
            rejections = self._db.execute(
                "SELECT reason, COUNT(*) FROM rejections GROUP BY reason"
            ).fetchall()
            (customers,) = self._db.execute("SELECT COUNT(*) FROM customers").fetchone()
            return _summary(offers, rejections, customers)

        return await self._run(work)

    async def close(self) -> None:
        async with self._lock:
            self._db.close()


def _snapshot(customers: Iterable[tuple[Any, ...]], offers: Iterable[tuple[Any, ...]]) -> Snapshot:
    snapshot = Snapshot(customers={row[0]: _customer_row(row) for row in customers})
    for row in offers:
        offer = _offer_row(row)
        snapshot.offers[offer.offer_id] = offer
    return snapshot


# ---------------------------------------------------------------- MongoDB


def _customer_doc(c: CustomerRecord) -> dict[str, Any]:
    return {
        "_id": c.customer_id,
        "marketing_consent": c.marketing_consent,
        "has_email": c.has_email,
        "erased": c.erased,
        "birth_md": c.birth_md,
        "first_purchase_date": _iso(c.first_purchase_date),
        "anniversary_date": _iso(c.anniversary_date),
        "last_visit_date": _iso(c.last_visit_date),
        "visits": c.visits,
        "home_store_id": c.home_store_id,
    }


def _customer_from_doc(doc: Mapping[str, Any]) -> CustomerRecord:
    return CustomerRecord(
        customer_id=str(doc["_id"]),
        marketing_consent=bool(doc["marketing_consent"]),
        has_email=bool(doc["has_email"]),
        erased=bool(doc["erased"]),
        birth_md=doc.get("birth_md"),
        first_purchase_date=_date(doc.get("first_purchase_date")),
        last_visit_date=_date(doc.get("last_visit_date")),
        visits=int(doc["visits"]),
        home_store_id=doc.get("home_store_id"),
    )


def _offer_doc(o: OfferRecord) -> dict[str, Any]:
    # Dates as ISO strings (they order correctly), money as strings (pydantic's JSON mode).
    return {
        "_id": o.offer_id,
        "customer_id": o.customer_id,
        "kind": o.kind,
        "rule_key": o.rule_key,
        "coupon_code": o.coupon_code,
        "valid_from": o.valid_from.isoformat(),
        "valid_until": o.valid_until.isoformat(),
        "state": o.state,
        "expired_on": _iso(o.expired_on),
        "issued": o.issued.model_dump(mode="json"),
        "redemption": o.redemption.model_dump(mode="json") if o.redemption else None,
    }


def _offer_from_doc(doc: Mapping[str, Any]) -> OfferRecord:
    redemption = doc.get("redemption")
    return OfferRecord(
        issued=OfferIssued.model_validate(doc["issued"]),
        rule_key=str(doc["rule_key"]),
        state=doc["state"],
        expired_on=_date(doc.get("expired_on")),
        redemption=OfferRedeemed.model_validate(redemption) if redemption else None,
    )


class MongoOffersRepository:
    """MongoDB: one unordered bulk write per collection and batch; filters built from typed
    values only (a string that looks like an operator stays a string)."""

    def __init__(
        self, database: AsyncDatabase[dict[str, Any]] | Any, *, client: Any | None = None
    ) -> None:
        self._client = client
        self._customers = database["offers_customers"]
        self._offers = database["offers"]
        self._rejections = database["offers_rejections"]

    async def ensure_indexes(self) -> None:
        await self._customers.create_index([("birth_md", ASCENDING)])
        await self._customers.create_index([("anniversary_date", ASCENDING)])
        await self._customers.create_index([("last_visit_date", ASCENDING)])
        await self._offers.create_index([("coupon_code", ASCENDING)], unique=True)
        await self._offers.create_index([("customer_id", ASCENDING)])
        await self._offers.create_index([("state", ASCENDING), ("valid_until", ASCENDING)])
        await self._offers.create_index([("expired_on", ASCENDING)])
        await self._offers.create_index([("kind", ASCENDING), ("state", ASCENDING)])
        await self._rejections.create_index([("customer_id", ASCENDING)])

    async def load(self, customer_ids: Collection[str], codes: Collection[str]) -> Snapshot:
        ids = [str(i) for i in customer_ids]
        code_list = [str(c) for c in codes]
        snapshot = Snapshot()
        async for doc in self._customers.find({"_id": {"$in": ids}}):
            customer = _customer_from_doc(doc)
            snapshot.customers[customer.customer_id] = customer
        offer_filter = {"$or": [{"customer_id": {"$in": ids}}, {"coupon_code": {"$in": code_list}}]}
        async for doc in self._offers.find(offer_filter):
            offer = _offer_from_doc(doc)
            snapshot.offers[offer.offer_id] = offer
        return snapshot

    async def apply(self, changes: Changes) -> None:
        customer_ops = [
            ReplaceOne({"_id": c.customer_id}, _customer_doc(c), upsert=True)
            for c in changes.customers.values()
        ]
        offer_ops: list[UpdateOne] = [
            UpdateOne({"_id": o.offer_id}, {"$setOnInsert": _offer_doc(o)}, upsert=True)
            for o in changes.new_offers.values()
        ]
        offer_ops += [
            UpdateOne(
                {"_id": o.offer_id, "state": {"$in": ["issued", "expired"]}},
                {
                    "$set": {
                        "state": "redeemed",
                        "redemption": o.redemption.model_dump(mode="json")
                        if o.redemption
                        else None,
                    }
                },
            )
            for o in changes.redeemed.values()
        ]
        offer_ops += [
            UpdateOne(
                {"_id": o.offer_id, "state": "issued"},
                {"$set": {"state": "expired", "expired_on": _iso(o.expired_on)}},
            )
            for o in changes.expired.values()
        ]
        rejection_ops = [
            UpdateOne(
                {"_id": r.rejection_id},
                {
                    "$setOnInsert": {
                        "customer_id": r.customer_id,
                        "reason": r.reason,
                        "doc": r.model_dump(mode="json"),
                    }
                },
                upsert=True,
            )
            for r in changes.rejections.values()
        ]
        # Customers first: a crash after it leaves offers to be (re)issued on the replay.
        if customer_ops:
            await self._customers.bulk_write(customer_ops, ordered=False)
        if offer_ops:
            await self._offers.bulk_write(offer_ops, ordered=False)
        if rejection_ops:
            await self._rejections.bulk_write(rejection_ops, ordered=False)

    async def customers_for_day(
        self, query: CustomerQuery, *, after: str | None, limit: int
    ) -> Snapshot:
        where: dict[str, Any]
        if query.kind == "birthday":
            where = {"birth_md": {"$in": list(query.month_days)}}
        elif query.kind == "anniversary":
            where = {"anniversary_date": _iso(query.on_date)}
        else:
            where = {
                "last_visit_date": {"$lte": _iso(query.on_date)},
                "visits": {"$gte": query.min_visits},
            }
        where["erased"] = False
        if after is not None:
            where["_id"] = {"$gt": after}
        snapshot = Snapshot()
        cursor = self._customers.find(where).sort("_id", ASCENDING).limit(limit)
        async for doc in cursor:
            customer = _customer_from_doc(doc)
            snapshot.customers[customer.customer_id] = customer
        if snapshot.customers:
            async for doc in self._offers.find({"customer_id": {"$in": list(snapshot.customers)}}):
                offer = _offer_from_doc(doc)
                snapshot.offers[offer.offer_id] = offer
        return snapshot

    async def offers_to_expire(
        self, day: dt.date, *, after: str | None, limit: int
    ) -> list[OfferRecord]:
        iso = day.isoformat()
        where: dict[str, Any] = {
            "$or": [
                {"state": "issued", "valid_until": {"$lt": iso}},
                {"state": "expired", "expired_on": iso},
            ]
        }
        if after is not None:
            where["_id"] = {"$gt": after}
        cursor = self._offers.find(where).sort("_id", ASCENDING).limit(limit)
        return [_offer_from_doc(doc) async for doc in cursor]

    async def _offers_in_state(self, customer_id: str, state: str) -> list[OfferRecord]:
        cursor = self._offers.find({"customer_id": str(customer_id), "state": state})
        return _sorted([_offer_from_doc(doc) async for doc in cursor])

    async def open_offers(self, customer_id: str) -> list[OfferRecord]:
        return await self._offers_in_state(customer_id, "issued")

    async def used_offers(self, customer_id: str) -> list[OfferRecord]:
        return await self._offers_in_state(customer_id, "redeemed")

    async def rejections(self, customer_id: str) -> list[RedemptionRejected]:
        cursor = self._rejections.find({"customer_id": str(customer_id)}).sort("_id", ASCENDING)
        return [RedemptionRejected.model_validate(doc["doc"]) async for doc in cursor]

    async def summary(self) -> dict[str, Any]:
        offer_counts = [
            (doc["_id"]["kind"], doc["_id"]["state"], int(doc["count"]))
            async for doc in await _aggregate(
                self._offers,
                [{"$group": {"_id": {"kind": "$kind", "state": "$state"}, "count": {"$sum": 1}}}],
            )
        ]
        rejection_counts = [
            (doc["_id"], int(doc["count"]))
            async for doc in await _aggregate(
                self._rejections, [{"$group": {"_id": "$reason", "count": {"$sum": 1}}}]
            )
        ]
        customers = int(await self._customers.count_documents({}))
        return _summary(offer_counts, rejection_counts, customers)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


async def _aggregate(collection: Any, pipeline: list[dict[str, Any]]) -> Any:
    # PyMongo's async `aggregate` is a coroutine returning a cursor; motor-shaped emulators
    # return the cursor directly.
    result = collection.aggregate(pipeline)
    if asyncio.iscoroutine(result):
        result = await result
    return result


async def open_repository(store: StoreSettings) -> OffersRepository:
    """The repository `CRM_STORE_URL` names: MongoDB, a SQLite file in a folder, or memory."""
    location = StoreLocation.parse(store.store_url)
    if location.kind == "mongodb":
        client, database = open_mongo(location, store.mongo_database)
        await ping_mongo(database)
        repository = MongoOffersRepository(database, client=client)
        await repository.ensure_indexes()
        return repository
    return SqliteOffersRepository(open_sqlite(location, SERVICE))
