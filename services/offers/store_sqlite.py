"""Offers in SQLite: ledgers and offers as JSON documents with indexed columns, one transaction
per batch, every statement parameterized."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from decimal import Decimal
from typing import ClassVar

from services.offers.domain import OfferRecord
from services.offers.engine import Days
from services.offers.ledger import Ledger
from services.offers.store import (
    Changes,
    Erasure,
    Spend,
    date_of,
    iso,
    sorted_offers,
    tally,
    text,
)
from shared.campaigns import Budget, CampaignChanged, CampaignCounts
from shared.erasure import erasure_mark
from shared.errors import Conflict
from shared.events import CONSUMER_EXTRA
from shared.storage import IN_LIST, SqliteStore, in_list


def _ts(moment: dt.datetime) -> str:
    """Fixed-width UTC text, so that times compare as strings."""
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")


def _offer_row(o: OfferRecord) -> tuple[str, str, str, str, str, str]:
    return (
        o.offer_id,
        o.customer_id,
        o.coupon_code,
        o.state,
        o.valid_until.isoformat(),
        o.model_dump_json(),
    )


def _erase(db: sqlite3.Connection, erasure: Erasure) -> None:
    """An erasure, inside the batch's transaction (see `OffersRepository.save`)."""
    if erasure.version:
        gone = db.execute(
            "DELETE FROM ledgers WHERE customer_id = ? AND version = ?",
            (erasure.customer_id, erasure.version),
        ).rowcount
    else:
        gone = (
            0
            if db.execute(
                "SELECT 1 FROM ledgers WHERE customer_id = ?", (erasure.customer_id,)
            ).fetchone()
            else 1
        )
    if gone != 1:
        raise Conflict("a ledger changed in the store since it was read")
    ids = in_list(erasure.customer_ids)
    db.execute(f"DELETE FROM ledgers WHERE customer_id IN {IN_LIST}", (ids,))  # noqa: S608
    db.execute(f"DELETE FROM offers WHERE customer_id IN {IN_LIST}", (ids,))  # noqa: S608
    db.execute(f"DELETE FROM cards WHERE customer_id IN {IN_LIST}", (ids,))  # noqa: S608
    db.execute(f"DELETE FROM reservations WHERE code IN {IN_LIST}", (in_list(erasure.codes),))  # noqa: S608
    db.executemany(
        "UPDATE budget_spends SET offer_id = ?, customer_id = ? WHERE offer_id = ?",
        [(new, erasure.token, old) for old, new in erasure.offer_ids.items()],
    )
    db.executemany(
        "INSERT OR IGNORE INTO erasures (mark) VALUES (?)",
        [(erasure_mark(c),) for c in erasure.customer_ids],
    )
    db.executemany(
        "INSERT INTO offers (offer_id, customer_id, coupon_code, state, valid_until, doc)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [_offer_row(o) for o in erasure.offers],
    )
    if erasure.ledger is not None:
        db.execute(
            "INSERT INTO ledgers (customer_id, version, doc) VALUES (?, ?, ?)",
            (erasure.ledger.customer_id, erasure.ledger.version, erasure.ledger.model_dump_json()),
        )


class SqliteOffersRepository(SqliteStore):
    """Tables `ledgers`, `offers`, `cards`, `days`, `reservations`, `campaigns`,
    `budget_spends` and `erasures` (the erased customers' one-way marks)."""

    SERVICE = "offers"
    SCHEMA = """
    CREATE TABLE IF NOT EXISTS ledgers (
        customer_id TEXT PRIMARY KEY NOT NULL,
        version INTEGER NOT NULL,
        merged_into TEXT,
        birth_md TEXT,
        anniversary_date TEXT,
        win_back_due TEXT,
        doc TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS ledgers_birth_md ON ledgers (birth_md);
    CREATE INDEX IF NOT EXISTS ledgers_anniversary ON ledgers (anniversary_date);
    CREATE INDEX IF NOT EXISTS ledgers_win_back_due ON ledgers (win_back_due);
    CREATE TABLE IF NOT EXISTS offers (
        offer_id TEXT PRIMARY KEY NOT NULL,
        customer_id TEXT NOT NULL,
        coupon_code TEXT NOT NULL,
        state TEXT NOT NULL,
        valid_until TEXT NOT NULL,
        doc TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX IF NOT EXISTS offers_coupon_code ON offers (coupon_code);
    CREATE INDEX IF NOT EXISTS offers_customer ON offers (customer_id);
    CREATE INDEX IF NOT EXISTS offers_state_until ON offers (state, valid_until);
    CREATE TABLE IF NOT EXISTS cards (
        card_id TEXT PRIMARY KEY NOT NULL,
        customer_id TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS days (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        first_day TEXT NOT NULL,
        last_day TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS reservations (
        code TEXT PRIMARY KEY NOT NULL,
        lane TEXT NOT NULL,
        until TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS campaigns (
        campaign_id TEXT PRIMARY KEY NOT NULL,
        changes INTEGER NOT NULL,
        doc TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS budget_spends (
        offer_id TEXT PRIMARY KEY NOT NULL,
        campaign_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        store_day TEXT NOT NULL,
        discount TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS budget_by_customer ON budget_spends (campaign_id, customer_id);
    CREATE INDEX IF NOT EXISTS budget_by_store_day ON budget_spends (campaign_id, store_day);
    CREATE TABLE IF NOT EXISTS erasures (mark TEXT PRIMARY KEY NOT NULL) WITHOUT ROWID;
    """
    ADDED_COLUMNS: ClassVar[Mapping[str, Mapping[str, str]]] = {"ledgers": {"last_fact_at": "TEXT"}}
    LATE_SCHEMA = "CREATE INDEX IF NOT EXISTS ledgers_last_fact ON ledgers (last_fact_at);"

    async def ledgers(self, customer_ids: Collection[str]) -> dict[str, Ledger]:
        ids = in_list(text(i, "customer_id") for i in customer_ids)

        def work(db: sqlite3.Connection) -> dict[str, Ledger]:
            rows = db.execute(f"SELECT doc FROM ledgers WHERE customer_id IN {IN_LIST}", (ids,))  # noqa: S608
            found = (Ledger.model_validate_json(doc) for (doc,) in rows)
            return {ledger.customer_id: ledger for ledger in found}

        return await self.read(work) if customer_ids else {}

    async def offers_of_customers(self, customer_ids: Collection[str]) -> dict[str, OfferRecord]:
        ids = in_list(text(i, "customer_id") for i in customer_ids)

        def work(db: sqlite3.Connection) -> dict[str, OfferRecord]:
            rows = db.execute(f"SELECT doc FROM offers WHERE customer_id IN {IN_LIST}", (ids,))  # noqa: S608
            found = (OfferRecord.model_validate_json(doc) for (doc,) in rows)
            return {offer.offer_id: offer for offer in found}

        return await self.read(work) if customer_ids else {}

    async def owners(self, codes: Collection[str]) -> dict[str, str]:
        values = in_list(text(c, "code") for c in codes)

        def work(db: sqlite3.Connection) -> dict[str, str]:
            sql = f"SELECT coupon_code, customer_id FROM offers WHERE coupon_code IN {IN_LIST}"  # noqa: S608
            return dict(db.execute(sql, (values,)).fetchall())

        return await self.read(work) if codes else {}

    async def days(self) -> Days:
        def work(db: sqlite3.Connection) -> Days:
            row = db.execute("SELECT first_day, last_day FROM days WHERE id = 1").fetchone()
            return Days(date_of(row[0]), date_of(row[1])) if row else Days()

        return await self.read(work)

    async def candidates(
        self, day: dt.date, month_days: Sequence[str], *, after: str | None, limit: int
    ) -> list[str]:
        iso_day = day.isoformat()
        # One indexed look-up per reason, merged: SQLite keeps each on its own index
        # (`+customer_id` keeps the range on its index instead of a primary-key scan).
        sql = (
            f"SELECT customer_id FROM ledgers WHERE birth_md IN {IN_LIST} AND merged_into IS NULL"  # noqa: S608
            " AND customer_id > ?"
            " UNION SELECT customer_id FROM ledgers WHERE anniversary_date = ?"
            " AND merged_into IS NULL AND customer_id > ?"
            " UNION SELECT customer_id FROM ledgers WHERE win_back_due > '' AND win_back_due <= ?"
            " AND merged_into IS NULL AND +customer_id > ?"
            " UNION SELECT customer_id FROM offers WHERE state = 'issued' AND valid_until < ?"
            " AND customer_id > ?"
            " ORDER BY customer_id LIMIT ?"
        )
        start = after or ""
        params = (in_list(month_days), start, iso_day, start, iso_day, start, iso_day, start, limit)

        def work(db: sqlite3.Connection) -> list[str]:
            return [row[0] for row in db.execute(sql, params)]

        return await self.read(work)

    async def save(self, changes: Changes) -> None:
        if not changes:
            return
        ledgers = [
            (
                row.ledger.customer_id,
                row.ledger.version,
                row.ledger.merged_into,
                row.birth_md,
                iso(row.anniversary_date),
                iso(row.win_back_due),
                _ts(row.last_fact_at) if row.last_fact_at is not None else None,
                row.ledger.model_dump_json(),
            )
            for row in changes.ledgers
        ]
        cards = [
            (card, row.ledger.customer_id)
            for row in changes.ledgers
            if not row.ledger.is_alias()
            for card in row.ledger.cards
        ]
        offers = [
            (
                o.offer_id,
                o.customer_id,
                o.coupon_code,
                o.state,
                o.valid_until.isoformat(),
                o.model_dump_json(),
            )
            for o in changes.offers
        ]
        days = changes.days
        erasures = changes.erasures

        def work(db: sqlite3.Connection) -> None:
            before = db.total_changes
            db.executemany(
                "INSERT INTO ledgers (customer_id, version, merged_into, birth_md,"
                " anniversary_date, win_back_due, last_fact_at, doc)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (customer_id) DO UPDATE SET version = excluded.version,"
                " merged_into = excluded.merged_into, birth_md = excluded.birth_md,"
                " anniversary_date = excluded.anniversary_date,"
                " win_back_due = excluded.win_back_due, last_fact_at = excluded.last_fact_at,"
                " doc = excluded.doc"
                " WHERE ledgers.version = excluded.version - 1",
                ledgers,
            )
            if db.total_changes - before != len(ledgers):
                raise Conflict("a ledger changed in the store since it was read")
            db.executemany(
                "INSERT INTO offers (offer_id, customer_id, coupon_code, state, valid_until, doc)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (offer_id) DO UPDATE SET"
                " state = excluded.state, valid_until = excluded.valid_until, doc = excluded.doc",
                offers,
            )
            db.executemany(
                "INSERT INTO cards (card_id, customer_id) VALUES (?, ?)"
                " ON CONFLICT (card_id) DO UPDATE SET customer_id = excluded.customer_id",
                cards,
            )
            if days is not None and days.first is not None and days.last is not None:
                db.execute(
                    "INSERT INTO days (id, first_day, last_day) VALUES (1, ?, ?)"
                    " ON CONFLICT (id) DO UPDATE SET first_day = excluded.first_day,"
                    " last_day = excluded.last_day",
                    (days.first.isoformat(), days.last.isoformat()),
                )
            db.executemany(
                "DELETE FROM reservations WHERE code = ?", [(c,) for c in changes.released]
            )
            for erasure in erasures:
                _erase(db, erasure)

        await self.write(work, erasure=bool(erasures))

    async def erased(self, customer_ids: Collection[str]) -> set[str]:
        marks = {erasure_mark(text(i, "customer_id")): i for i in customer_ids}

        def work(db: sqlite3.Connection) -> set[str]:
            sql = f"SELECT mark FROM erasures WHERE mark IN {IN_LIST}"  # noqa: S608
            return {marks[mark] for (mark,) in db.execute(sql, (in_list(marks),))}

        return await self.read(work) if marks else set()

    async def offer_by_code(self, code: str) -> OfferRecord | None:
        def work(db: sqlite3.Connection) -> OfferRecord | None:
            row = db.execute(
                "SELECT doc FROM offers WHERE coupon_code = ?", (text(code, "code"),)
            ).fetchone()
            return OfferRecord.model_validate_json(row[0]) if row else None

        return await self.read(work)

    async def customer_of_card(self, card_id: str) -> str | None:
        def work(db: sqlite3.Connection) -> str | None:
            row = db.execute(
                "SELECT customer_id FROM cards WHERE card_id = ?", (text(card_id, "card_id"),)
            ).fetchone()
            return str(row[0]) if row else None

        return await self.read(work)

    async def offers_of(self, customer_id: str) -> list[OfferRecord]:
        found = await self.offers_of_customers([customer_id])
        return sorted_offers(found.values())

    async def reserve(self, code: str, lane: str, until: dt.datetime, now: dt.datetime) -> bool:
        params = (text(code, "code"), text(lane, "lane"), _ts(until), _ts(now))

        def work(db: sqlite3.Connection) -> bool:
            before = db.total_changes
            db.execute(
                "INSERT INTO reservations (code, lane, until) VALUES (?1, ?2, ?3)"
                " ON CONFLICT (code) DO UPDATE SET lane = excluded.lane, until = excluded.until"
                " WHERE reservations.until < ?4 OR reservations.lane = excluded.lane",
                params,
            )
            return db.total_changes - before == 1

        return await self.write(work)

    async def record_deliveries(self, outcomes: Mapping[str, tuple[str, str]]) -> None:
        rows = [(state, message_id, offer_id) for offer_id, (state, message_id) in outcomes.items()]

        def work(db: sqlite3.Connection) -> None:
            db.executemany(
                "UPDATE offers SET doc = json_set(doc, '$.delivery', ?, '$.message_id', ?)"
                " WHERE offer_id = ?",
                rows,
            )

        if rows:
            await self.write(work)

    async def decision_counts(self) -> Counter[tuple[str, str, str | None]]:
        def work(db: sqlite3.Connection) -> Counter[tuple[str, str, str | None]]:
            rows = db.execute(
                "SELECT json_extract(d.value, '$.kind'), json_extract(d.value, '$.outcome'),"
                " json_extract(d.value, '$.reason'), count(*)"
                " FROM ledgers, json_each(ledgers.doc, '$.decisions') AS d GROUP BY 1, 2, 3"
            )
            return Counter({(kind, outcome, reason): n for kind, outcome, reason, n in rows})

        return await self.read(work)

    # ---------------------------------------------------------------- campaigns and budgets

    async def campaigns(self) -> dict[str, CampaignChanged]:
        def work(db: sqlite3.Connection) -> dict[str, CampaignChanged]:
            rows = db.execute("SELECT doc FROM campaigns ORDER BY campaign_id")
            found = (
                CampaignChanged.model_validate_json(doc, extra=CONSUMER_EXTRA) for (doc,) in rows
            )
            return {c.campaign_id: c for c in found}

        return await self.read(work)

    async def save_campaign(self, record: CampaignChanged) -> bool:
        row = (record.campaign_id, len(record.history), record.model_dump_json())

        def work(db: sqlite3.Connection) -> bool:
            before = db.total_changes
            db.execute(
                "INSERT INTO campaigns (campaign_id, changes, doc) VALUES (?, ?, ?)"
                " ON CONFLICT (campaign_id) DO UPDATE SET changes = excluded.changes,"
                " doc = excluded.doc WHERE campaigns.changes < excluded.changes",
                row,
            )
            return db.total_changes > before

        return await self.write(work)

    async def spend(self, spend: Spend, budget: Budget) -> bool:
        store_day = f"{spend.store_id}|{spend.day.isoformat()}"
        cid = text(spend.campaign_id, "campaign_id")

        def work(db: sqlite3.Connection) -> bool:
            if db.execute(
                "SELECT 1 FROM budget_spends WHERE offer_id = ?", (spend.offer_id,)
            ).fetchone():
                return True  # charged before (the batch is processed again)
            rows = db.execute(
                "SELECT discount FROM budget_spends WHERE campaign_id = ?", (cid,)
            ).fetchall()
            if budget.max_redemptions is not None and len(rows) >= budget.max_redemptions:
                return False
            spent = sum((Decimal(d) for (d,) in rows), Decimal(0))
            if budget.max_discount is not None and spent + spend.discount > budget.max_discount:
                return False
            if budget.max_per_customer is not None:
                (n,) = db.execute(
                    "SELECT count(*) FROM budget_spends WHERE campaign_id = ? AND customer_id = ?",
                    (cid, spend.customer_id),
                ).fetchone()
                if n >= budget.max_per_customer:
                    return False
            if budget.max_per_store_day is not None:
                (n,) = db.execute(
                    "SELECT count(*) FROM budget_spends WHERE campaign_id = ? AND store_day = ?",
                    (cid, store_day),
                ).fetchone()
                if n >= budget.max_per_store_day:
                    return False
            db.execute(
                "INSERT INTO budget_spends (offer_id, campaign_id, customer_id, store_day,"
                " discount) VALUES (?, ?, ?, ?, ?)",
                (spend.offer_id, cid, spend.customer_id, store_day, str(spend.discount)),
            )
            return True

        return await self.write(work)

    async def budget_usage(self) -> dict[str, tuple[int, Decimal]]:
        def work(db: sqlite3.Connection) -> dict[str, tuple[int, Decimal]]:
            usage: dict[str, tuple[int, Decimal]] = {}
            for cid, discount in db.execute("SELECT campaign_id, discount FROM budget_spends"):
                n, total = usage.get(cid, (0, Decimal(0)))
                usage[cid] = (n + 1, total + Decimal(discount))
            return usage

        return await self.read(work)

    async def customers_since(
        self, moment: dt.datetime, *, after: str | None, limit: int
    ) -> list[str]:
        def work(db: sqlite3.Connection) -> list[str]:
            rows = db.execute(
                "SELECT customer_id FROM ledgers WHERE last_fact_at >= ? AND merged_into IS NULL"
                " AND +customer_id > ? ORDER BY customer_id LIMIT ?",
                (_ts(moment), after or "", limit),
            )
            return [row[0] for row in rows]

        return await self.read(work)

    async def ledger_page(self, *, after: str | None, limit: int) -> list[Ledger]:
        def work(db: sqlite3.Connection) -> list[Ledger]:
            rows = db.execute(
                "SELECT doc FROM ledgers WHERE customer_id > ? ORDER BY customer_id LIMIT ?",
                (after or "", limit),
            )
            return [Ledger.model_validate_json(doc) for (doc,) in rows]

        return await self.read(work)

    async def set_win_back_due(self, dues: Mapping[str, dt.date | None]) -> None:
        rows = [(iso(due), customer_id) for customer_id, due in dues.items()]

        def work(db: sqlite3.Connection) -> None:
            db.executemany("UPDATE ledgers SET win_back_due = ? WHERE customer_id = ?", rows)

        if rows:
            await self.write(work)

    async def campaign_counts(self) -> dict[tuple[str, str | None], CampaignCounts]:
        def work(db: sqlite3.Connection) -> dict[tuple[str, str | None], CampaignCounts]:
            offers = db.execute(
                "SELECT json_extract(doc, '$.issued.campaign_id'), json_extract(doc,"
                " '$.issued.kind'), json_extract(doc, '$.issued.variant'), state,"
                " json_extract(doc, '$.redemption.discount') FROM offers"
            ).fetchall()
            held = db.execute(
                "SELECT json_extract(d.value, '$.campaign_id'), json_extract(d.value, '$.kind'),"
                " json_extract(d.value, '$.variant')"
                " FROM ledgers, json_each(ledgers.doc, '$.decisions') AS d"
                " WHERE json_extract(d.value, '$.outcome') = 'held_out'"
            ).fetchall()
            return tally(offers, held)

        return await self.read(work)
