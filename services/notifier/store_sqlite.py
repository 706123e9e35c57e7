"""The notifier's contacts and deliveries in SQLite: one row each, times as fixed-width UTC text."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Collection
from typing import Any, cast

from services.notifier.domain import OPEN_STATES, Contact, Delivery, DeliveryStatus
from services.notifier.store import SendBudget, StoreChanges, unlinked_delivery
from shared.erasure import unlinked_token
from shared.events import CONSUMER_EXTRA, OfferIssued
from shared.storage import IN_LIST, SqliteStore, in_list

_CONTACT_COLUMNS = (
    "customer_id, email, first_name, marketing_consent, home_store_id, bounced, changed_at"
)
_DELIVERY_COLUMNS = (
    "offer_id, customer_id, state, attempts, message_id, offer, updated_at, not_before, last_error"
)


def _ts(value: dt.datetime | None) -> str | None:
    """Fixed-width UTC text, so that SQLite compares times as strings."""
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds")


def _time(text: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(text) if text else None


def _contact(row: tuple[Any, ...]) -> Contact:
    customer_id, email, first_name, consent, home_store_id, bounced, changed_at = row
    return Contact(
        customer_id=customer_id,
        email=email,
        first_name=first_name,
        marketing_consent=bool(consent),
        home_store_id=home_store_id,
        bounced=bool(bounced),
        changed_at=_time(changed_at),
    )


def _delivery(row: tuple[Any, ...]) -> Delivery:
    offer_id, customer_id, state, attempts, message_id, offer, updated_at, not_before, error = row
    return Delivery(
        offer_id=offer_id,
        customer_id=customer_id,
        state=cast(DeliveryStatus, state),
        attempts=int(attempts),
        message_id=message_id,
        offer=(
            OfferIssued.model_validate_json(offer, extra=CONSUMER_EXTRA)
            if offer is not None
            else None
        ),
        updated_at=dt.datetime.fromisoformat(updated_at),
        not_before=_time(not_before),
        last_error=error,
    )


def _contact_row(contact: Contact) -> tuple[Any, ...]:
    return (
        contact.customer_id,
        contact.email,
        contact.first_name,
        int(contact.marketing_consent),
        contact.home_store_id,
        int(contact.bounced),
        _ts(contact.changed_at),
    )


def _delivery_row(delivery: Delivery) -> tuple[Any, ...]:
    offer = delivery.offer
    return (
        delivery.offer_id,
        delivery.customer_id,
        delivery.state,
        delivery.attempts,
        delivery.message_id,
        # The offer's JSON as text: Decimal stays exact, dates stay ISO.
        offer.model_dump_json() if offer is not None else None,
        _ts(delivery.updated_at),
        _ts(delivery.not_before),
        delivery.last_error,
    )


def _budget_left(db: sqlite3.Connection, now: dt.datetime, budget: SendBudget) -> int:
    row = db.execute(
        "SELECT used FROM send_budget WHERE window_start = ?", (budget.window_key(now),)
    ).fetchone()
    return max(0, budget.per_window - (int(row[0]) if row else 0))


def _spend(db: sqlite3.Connection, now: dt.datetime, budget: SendBudget, units: int) -> None:
    """Count `units` against `now`'s window (inside the caller's write transaction) and drop
    the windows before it: the table holds a row or two."""
    key = budget.window_key(now)
    db.execute(
        "INSERT INTO send_budget (window_start, used) VALUES (?, ?) "
        "ON CONFLICT (window_start) DO UPDATE SET used = used + excluded.used",
        (key, units),
    )
    db.execute("DELETE FROM send_budget WHERE window_start < ?", (key,))


class SqliteNotifierRepository(SqliteStore):
    """Tables `contacts` and `deliveries` in the notifier's own file (or memory)."""

    SERVICE = "notifier"
    SCHEMA = """
    CREATE TABLE IF NOT EXISTS contacts (
        customer_id TEXT PRIMARY KEY,
        email TEXT,
        first_name TEXT,
        marketing_consent INTEGER NOT NULL,
        home_store_id TEXT,
        bounced INTEGER NOT NULL DEFAULT 0,
        changed_at TEXT
    );
    CREATE TABLE IF NOT EXISTS deliveries (
        offer_id TEXT PRIMARY KEY,
        customer_id TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        message_id TEXT NOT NULL,
        offer TEXT,
        updated_at TEXT NOT NULL,
        not_before TEXT,
        last_error TEXT
    );
    CREATE INDEX IF NOT EXISTS deliveries_customer_state ON deliveries (customer_id, state);
    CREATE INDEX IF NOT EXISTS deliveries_state_not_before ON deliveries (state, not_before);
    CREATE TABLE IF NOT EXISTS send_budget (
        window_start TEXT PRIMARY KEY,
        used INTEGER NOT NULL
    );
    """

    async def get_contacts(self, customer_ids: Collection[str]) -> dict[str, Contact]:
        ids = in_list(customer_ids)

        def work(db: sqlite3.Connection) -> dict[str, Contact]:
            rows = db.execute(
                f"SELECT {_CONTACT_COLUMNS} FROM contacts WHERE customer_id IN {IN_LIST}",  # noqa: S608
                (ids,),
            )
            return {c.customer_id: c for c in map(_contact, rows)}

        return await self.read(work) if customer_ids else {}

    async def get_deliveries(self, offer_ids: Collection[str]) -> dict[str, Delivery]:
        ids = in_list(offer_ids)

        def work(db: sqlite3.Connection) -> dict[str, Delivery]:
            rows = db.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE offer_id IN {IN_LIST}",  # noqa: S608
                (ids,),
            )
            return {d.offer_id: d for d in map(_delivery, rows)}

        return await self.read(work) if offer_ids else {}

    async def open_deliveries(self, customer_ids: Collection[str]) -> list[Delivery]:
        ids, states = in_list(customer_ids), in_list(sorted(OPEN_STATES))

        def work(db: sqlite3.Connection) -> list[Delivery]:
            rows = db.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM deliveries "  # noqa: S608
                f"WHERE customer_id IN {IN_LIST} AND state IN {IN_LIST} "
                "ORDER BY updated_at, offer_id",
                (ids, states),
            )
            return [_delivery(r) for r in rows]

        return await self.read(work) if customer_ids else []

    async def claim_due(
        self,
        now: dt.datetime,
        limit: int,
        lease: dt.timedelta,
        budget: SendBudget | None = None,
    ) -> list[Delivery]:
        def work(db: sqlite3.Connection) -> list[Delivery]:
            # One BEGIN IMMEDIATE transaction: no other writer between the read, the budget
            # and the claim.
            most = limit if budget is None else min(limit, _budget_left(db, now, budget))
            if most <= 0:
                return []
            rows = db.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM deliveries "  # noqa: S608
                "WHERE (state = 'sending' AND updated_at <= ?) "
                "OR (state = 'pending' AND not_before <= ?) "
                "ORDER BY updated_at, offer_id LIMIT ?",
                (_ts(now - lease), _ts(now), most),
            ).fetchall()
            due = [_delivery(r) for r in rows]
            db.executemany(
                "UPDATE deliveries SET state = 'sending', updated_at = ? WHERE offer_id = ?",
                [(_ts(now), d.offer_id) for d in due],
            )
            if budget is not None and due:
                _spend(db, now, budget, len(due))
            return due

        return await self.write(work)

    async def take_send_budget(self, now: dt.datetime, wanted: int, budget: SendBudget) -> int:
        def work(db: sqlite3.Connection) -> int:
            granted = max(0, min(wanted, _budget_left(db, now, budget)))
            if granted:
                _spend(db, now, budget, granted)
            return granted

        return await self.write(work)

    async def send_budget_left(self, now: dt.datetime, budget: SendBudget) -> int:
        return await self.read(lambda db: _budget_left(db, now, budget))

    async def deliveries_of(self, customer_id: str) -> list[Delivery]:
        def work(db: sqlite3.Connection) -> list[Delivery]:
            rows = db.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE customer_id = ? "  # noqa: S608
                "ORDER BY offer_id",
                (str(customer_id),),
            )
            return [_delivery(r) for r in rows]

        return await self.read(work)

    async def apply(self, changes: StoreChanges) -> None:
        erased = [(customer_id,) for customer_id in changes.erased]
        forgotten = sorted(changes.forgotten)
        contacts = [_contact_row(c) for c in changes.contacts]
        bounced = list(changes.bounced)
        deliveries = [_delivery_row(d) for d in changes.deliveries]

        def work(db: sqlite3.Connection) -> None:
            db.executemany("DELETE FROM contacts WHERE customer_id = ?", erased)
            db.executemany(
                f"INSERT OR REPLACE INTO contacts ({_CONTACT_COLUMNS}) VALUES (?,?,?,?,?,?,?)",  # noqa: S608
                contacts,
            )
            db.executemany(
                "UPDATE contacts SET bounced = 1 WHERE customer_id = ? AND email = ?", bounced
            )
            db.executemany(
                f"INSERT OR REPLACE INTO deliveries ({_DELIVERY_COLUMNS}) "  # noqa: S608
                "VALUES (?,?,?,?,?,?,?,?,?)",
                deliveries,
            )
            for customer_id in forgotten:
                token = unlinked_token()
                rows = db.execute(
                    f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE customer_id = ?",  # noqa: S608
                    (customer_id,),
                ).fetchall()
                db.executemany(
                    f"INSERT OR REPLACE INTO deliveries ({_DELIVERY_COLUMNS}) "  # noqa: S608
                    "VALUES (?,?,?,?,?,?,?,?,?)",
                    [_delivery_row(unlinked_delivery(_delivery(r), token)) for r in rows],
                )

        if changes:
            # An erasure checkpoints the WAL after it: the erased values do not linger there.
            await self.write(work, erasure=bool(erased or forgotten))
