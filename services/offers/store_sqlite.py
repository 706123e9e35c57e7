"""Offers in SQLite: customers, offers and rejections as rows, one transaction per batch."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Collection, Iterable
from typing import Any

from services.offers.domain import Changes, CustomerQuery, CustomerRecord, OfferRecord, Snapshot
from services.offers.store import date_of, iso
from shared.events import OfferIssued, OfferRedeemed, RedemptionRejected
from shared.storage import IN_LIST, SqliteStore, in_list

_CUSTOMER_COLUMNS = (
    "customer_id, marketing_consent, has_email, erased, birth_md, first_purchase_date, "
    "last_visit_date, visits, home_store_id"
)
_OFFER_COLUMNS = "rule_key, state, expired_on, issued, redemption"


def _customer_row(row: tuple[Any, ...]) -> CustomerRecord:
    return CustomerRecord(
        customer_id=row[0],
        marketing_consent=bool(row[1]),
        has_email=bool(row[2]),
        erased=bool(row[3]),
        birth_md=row[4],
        first_purchase_date=date_of(row[5]),
        last_visit_date=date_of(row[6]),
        visits=row[7],
        home_store_id=row[8],
    )


def _offer_row(row: tuple[Any, ...]) -> OfferRecord:
    return OfferRecord(
        issued=OfferIssued.model_validate_json(row[3]),
        rule_key=row[0],
        state=row[1],
        expired_on=date_of(row[2]),
        redemption=OfferRedeemed.model_validate_json(row[4]) if row[4] else None,
    )


def _snapshot(customers: Iterable[tuple[Any, ...]], offers: Iterable[tuple[Any, ...]]) -> Snapshot:
    snapshot = Snapshot(customers={row[0]: _customer_row(row) for row in customers})
    for row in offers:
        offer = _offer_row(row)
        snapshot.offers[offer.offer_id] = offer
    return snapshot


class SqliteOffersRepository(SqliteStore):
    """Tables `customers`, `offers` and `rejections`; every statement parameterized."""

    SERVICE = "offers"
    SCHEMA = """
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
    CREATE TABLE IF NOT EXISTS rejections (
        rejection_id TEXT PRIMARY KEY,
        customer_id TEXT NOT NULL,
        reason TEXT NOT NULL,
        doc TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS rejections_customer ON rejections (customer_id);
    """

    async def load(self, customer_ids: Collection[str], codes: Collection[str]) -> Snapshot:
        ids = in_list(sorted(customer_ids))
        code_list = in_list(sorted(codes))

        def work(db: sqlite3.Connection) -> Snapshot:
            customers = db.execute(
                f"SELECT {_CUSTOMER_COLUMNS} FROM customers WHERE customer_id IN {IN_LIST}",  # noqa: S608
                (ids,),
            ).fetchall()
            offers = db.execute(
                f"SELECT {_OFFER_COLUMNS} FROM offers WHERE customer_id IN {IN_LIST} "  # noqa: S608
                f"UNION SELECT {_OFFER_COLUMNS} FROM offers WHERE coupon_code IN {IN_LIST}",
                (ids, code_list),
            ).fetchall()
            return _snapshot(customers, offers)

        return await self.read(work)

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
                iso(c.first_purchase_date),
                iso(c.anniversary_date),
                iso(c.last_visit_date),
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
                iso(o.expired_on),
                o.issued.model_dump_json(),
                o.redemption.model_dump_json() if o.redemption else None,
            )
            for o in changes.new_offers.values()
        ]
        redeemed = [
            (o.redemption.model_dump_json() if o.redemption else None, o.offer_id)
            for o in changes.redeemed.values()
        ]
        expired = [(iso(o.expired_on), o.offer_id) for o in changes.expired.values()]
        rejections = [
            (r.rejection_id, r.customer_id, r.reason, r.model_dump_json())
            for r in changes.rejections.values()
        ]

        def work(db: sqlite3.Connection) -> None:
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

        await self.write(work)

    async def customers_for_day(
        self, query: CustomerQuery, *, after: str | None, limit: int
    ) -> Snapshot:
        # Fixed SQL per query kind; only values are parameters. `+customer_id` keeps SQLite on the
        # rule's index (the key range would otherwise tempt it into a primary-key scan).
        if query.kind == "birthday":
            where = f"birth_md IN {IN_LIST}"
            params: tuple[Any, ...] = (in_list(query.month_days),)
        elif query.kind == "anniversary":
            where = "anniversary_date = ?"
            params = (iso(query.on_date),)
        else:
            # Bounded on both sides: SQLite's planner takes a one-sided range for a full scan.
            where = "last_visit_date > '' AND last_visit_date <= ? AND visits >= ?"
            params = (iso(query.on_date), query.min_visits)
        sql = (
            f"SELECT {_CUSTOMER_COLUMNS} FROM customers WHERE {where} "  # noqa: S608
            "AND erased = 0 AND +customer_id > ? ORDER BY customer_id LIMIT ?"
        )

        def work(db: sqlite3.Connection) -> Snapshot:
            customers = db.execute(sql, (*params, after or "", limit)).fetchall()
            offers = db.execute(
                f"SELECT {_OFFER_COLUMNS} FROM offers WHERE customer_id IN {IN_LIST}",  # noqa: S608
                (in_list(row[0] for row in customers),),
            ).fetchall()
            return _snapshot(customers, offers)

        return await self.read(work)

    async def offers_to_expire(
        self, day: dt.date, *, after: str | None, limit: int
    ) -> list[OfferRecord]:
        on = day.isoformat()

        def work(db: sqlite3.Connection) -> list[OfferRecord]:
            rows = db.execute(
                f"SELECT offer_id, {_OFFER_COLUMNS} FROM offers "  # noqa: S608
                "WHERE state = 'issued' AND valid_until < ? AND offer_id > ? "
                f"UNION SELECT offer_id, {_OFFER_COLUMNS} FROM offers "
                "WHERE expired_on = ? AND state = 'expired' AND offer_id > ? "
                "ORDER BY offer_id LIMIT ?",
                (on, after or "", on, after or "", limit),
            ).fetchall()
            return [_offer_row(row[1:]) for row in rows]

        return await self.read(work)

    async def offers_of(self, customer_id: str) -> list[OfferRecord]:
        def work(db: sqlite3.Connection) -> list[OfferRecord]:
            rows = db.execute(
                f"SELECT {_OFFER_COLUMNS} FROM offers WHERE customer_id = ? "  # noqa: S608
                "ORDER BY valid_from, offer_id",
                (str(customer_id),),
            )
            return [_offer_row(row) for row in rows]

        return await self.read(work)

    async def rejections(self, customer_id: str) -> list[RedemptionRejected]:
        def work(db: sqlite3.Connection) -> list[RedemptionRejected]:
            rows = db.execute(
                "SELECT doc FROM rejections WHERE customer_id = ? ORDER BY rejection_id",
                (str(customer_id),),
            )
            return [RedemptionRejected.model_validate_json(row[0]) for row in rows]

        return await self.read(work)
