"""Profiles in SQLite: the document as JSON text, the looked-up keys as indexed columns."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Collection, Sequence
from typing import Any

from services.profiles.domain import Coupon, CustomerProfile
from services.profiles.store import MembershipWrites, export_of, kind_of, sorted_coupons, text
from services.profiles.timeline import Position, TimelineEntry, position, stored_time
from shared.campaigns import SegmentDefined
from shared.errors import Conflict
from shared.events import CONSUMER_EXTRA
from shared.storage import IN_LIST, SqliteStore, in_list

CLOCK_DAY = "clock_day"
"""The `profile_meta` key of the latest clock day evaluated."""
_MEMBERSHIPS_OF = f"SELECT customer_id, segment, entered_at FROM segment_members WHERE customer_id IN {IN_LIST} ORDER BY customer_id, segment"  # noqa: S608
_SEGMENT_COUNTS = (
    f"SELECT segment, count(*) FROM segment_members WHERE segment IN {IN_LIST} GROUP BY segment"  # noqa: S608
)


class SqliteProfilesRepository(SqliteStore):
    """One row per customer (`doc` is the profile's JSON), one per card, one per coupon, one
    per (segment, customer), one per segment definition and one per timeline entry."""

    SERVICE = "profiles"
    SCHEMA = """
    CREATE TABLE IF NOT EXISTS profiles (
        customer_id TEXT PRIMARY KEY NOT NULL,
        version INTEGER NOT NULL,
        kind TEXT NOT NULL,
        merged_into TEXT,
        doc TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS profiles_kind ON profiles(kind);
    CREATE INDEX IF NOT EXISTS profiles_merged_into ON profiles(merged_into);
    CREATE TABLE IF NOT EXISTS profile_cards (
        card_id TEXT PRIMARY KEY NOT NULL,
        customer_id TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS profile_cards_customer ON profile_cards(customer_id);
    CREATE TABLE IF NOT EXISTS coupons (
        offer_id TEXT PRIMARY KEY NOT NULL,
        customer_id TEXT NOT NULL,
        doc TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS coupons_customer ON coupons(customer_id);
    CREATE TABLE IF NOT EXISTS segment_members (
        segment TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        entered_at TEXT NOT NULL,
        PRIMARY KEY (segment, customer_id)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS segment_members_customer ON segment_members(customer_id);
    CREATE TABLE IF NOT EXISTS segment_definitions (
        name TEXT PRIMARY KEY NOT NULL,
        doc TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS profile_meta (
        key TEXT PRIMARY KEY NOT NULL,
        value TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS timeline (
        customer_id TEXT NOT NULL,
        entry_id TEXT NOT NULL,
        at TEXT NOT NULL,
        type TEXT NOT NULL,
        doc TEXT NOT NULL,
        PRIMARY KEY (customer_id, entry_id)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS timeline_order ON timeline(customer_id, at, entry_id);
    """

    async def get_many(self, customer_ids: Collection[str]) -> dict[str, CustomerProfile]:
        ids = in_list(text(i, "customer_id") for i in customer_ids)

        def work(db: sqlite3.Connection) -> dict[str, CustomerProfile]:
            rows = db.execute(
                f"SELECT customer_id, doc FROM profiles WHERE customer_id IN {IN_LIST}",  # noqa: S608
                (ids,),
            )
            return {cid: CustomerProfile.model_validate_json(doc) for cid, doc in rows}

        return await self.read(work) if customer_ids else {}

    async def get_coupons(self, offer_ids: Collection[str]) -> dict[str, Coupon]:
        ids = in_list(offer_ids)

        def work(db: sqlite3.Connection) -> dict[str, Coupon]:
            rows = db.execute(f"SELECT doc FROM coupons WHERE offer_id IN {IN_LIST}", (ids,))  # noqa: S608
            return {c.offer_id: c for c in (Coupon.model_validate_json(r[0]) for r in rows)}

        return await self.read(work) if offer_ids else {}

    async def save_many(
        self,
        profiles: Sequence[CustomerProfile],
        coupons: Sequence[Coupon] = (),
        *,
        memberships: MembershipWrites | None = None,
        clock_day: dt.date | None = None,
    ) -> None:
        rows = [
            (p.customer_id, p.version, kind_of(p), p.merged_into, p.model_dump_json())
            for p in profiles
        ]
        cards = [
            (card, p.customer_id)
            for p in profiles
            if kind_of(p) == "profile"
            for card in p.card_ids
        ]
        dropped = [(p.customer_id,) for p in profiles if kind_of(p) != "profile"]
        coupon_rows = [(c.offer_id, c.customer_id, c.model_dump_json()) for c in coupons]
        owners = in_list({c.customer_id for c in coupons} | {p.customer_id for p in profiles})
        entered = [
            (segment, customer, at.astimezone(dt.UTC).isoformat())
            for (segment, customer), at in (memberships or {}).items()
            if at is not None
        ]
        left = [key for key, at in (memberships or {}).items() if at is None]

        def work(db: sqlite3.Connection) -> None:
            before = db.total_changes
            db.executemany(
                "INSERT INTO profiles (customer_id, version, kind, merged_into, doc) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (customer_id) DO UPDATE SET "
                "version = excluded.version, kind = excluded.kind, "
                "merged_into = excluded.merged_into, doc = excluded.doc "
                "WHERE profiles.version = excluded.version - 1",
                rows,
            )
            if db.total_changes - before != len(rows):
                raise Conflict("a profile changed in the store since it was read")
            db.executemany("DELETE FROM profile_cards WHERE customer_id = ?", dropped)
            db.executemany(
                "INSERT INTO profile_cards (card_id, customer_id) VALUES (?, ?) "
                "ON CONFLICT (card_id) DO UPDATE SET customer_id = excluded.customer_id "
                "WHERE profile_cards.customer_id <> excluded.customer_id",
                cards,
            )
            db.executemany(
                "INSERT OR REPLACE INTO coupons (offer_id, customer_id, doc) VALUES (?, ?, ?)",
                coupon_rows,
            )
            # An erased customer keeps no coupon: neither those it had nor those that offers'
            # revocations (for the erasure) announce after it.
            db.execute(
                "DELETE FROM coupons WHERE customer_id IN (SELECT customer_id FROM profiles"  # noqa: S608
                f" WHERE kind = 'erased' AND customer_id IN {IN_LIST})",
                (owners,),
            )
            db.executemany(
                "INSERT INTO segment_members (segment, customer_id, entered_at) VALUES (?, ?, ?)"
                " ON CONFLICT (segment, customer_id) DO UPDATE SET entered_at = excluded.entered_at",
                entered,
            )
            db.executemany(
                "DELETE FROM segment_members WHERE segment = ? AND customer_id = ?", left
            )
            # An erased customer or an alias is in no segment: none of its rows stays.
            db.executemany("DELETE FROM segment_members WHERE customer_id = ?", dropped)
            if clock_day is not None:
                db.execute(
                    "INSERT INTO profile_meta (key, value) VALUES (?, ?) ON CONFLICT (key) "
                    "DO UPDATE SET value = excluded.value WHERE excluded.value > profile_meta.value",
                    (CLOCK_DAY, clock_day.isoformat()),
                )

        if rows or coupon_rows or entered or left or clock_day is not None:
            # An erasure checkpoints the WAL after it: the erased values do not linger there.
            await self.write(work, erasure=any(p.erased for p in profiles))

    async def _one(self, sql: str, *params: object) -> CustomerProfile | None:
        def work(db: sqlite3.Connection) -> CustomerProfile | None:
            row = db.execute(sql, params).fetchone()
            return CustomerProfile.model_validate_json(row[0]) if row else None

        return await self.read(work)

    async def get(self, customer_id: str) -> CustomerProfile | None:
        return await self._one(
            "SELECT doc FROM profiles WHERE customer_id = ?", text(customer_id, "customer_id")
        )

    async def find_by_card(self, card_id: str) -> CustomerProfile | None:
        return await self._one(
            "SELECT p.doc FROM profile_cards c JOIN profiles p ON p.customer_id = c.customer_id"
            " WHERE c.card_id = ? AND p.kind = 'profile'",
            text(card_id, "card_id"),
        )

    async def coupons_of(self, customer_id: str) -> list[Coupon]:
        def work(db: sqlite3.Connection) -> list[Coupon]:
            rows = db.execute(
                "SELECT doc FROM coupons WHERE customer_id = ?", (text(customer_id, "customer_id"),)
            )
            return sorted_coupons([Coupon.model_validate_json(r[0]) for r in rows])

        return await self.read(work)

    async def count(self) -> int:
        def work(db: sqlite3.Connection) -> int:
            return int(
                db.execute("SELECT count(*) FROM profiles WHERE kind = 'profile'").fetchone()[0]
            )

        return await self.read(work)

    async def export(self, customer_id: str) -> dict[str, Any]:
        customer_id = text(customer_id, "customer_id")

        def aliases(db: sqlite3.Connection) -> list[str]:
            rows = db.execute(
                "SELECT customer_id FROM profiles WHERE merged_into = ? ORDER BY customer_id",
                (customer_id,),
            )
            return [row[0] for row in rows]

        memberships = await self.memberships_of([customer_id])
        return export_of(
            customer_id,
            await self.get(customer_id),
            await self.read(aliases),
            await self.coupons_of(customer_id),
            memberships.get(customer_id),
        )

    # -- segments

    async def live_profiles(self, *, after: str | None, limit: int) -> list[CustomerProfile]:
        start = text(after, "after") if after is not None else ""

        def work(db: sqlite3.Connection) -> list[CustomerProfile]:
            rows = db.execute(
                "SELECT doc FROM profiles WHERE kind = 'profile' AND customer_id > ?"
                " ORDER BY customer_id LIMIT ?",
                (start, limit),
            )
            return [CustomerProfile.model_validate_json(r[0]) for r in rows]

        return await self.read(work)

    async def memberships_of(
        self, customer_ids: Collection[str]
    ) -> dict[str, dict[str, dt.datetime]]:
        ids = in_list(text(i, "customer_id") for i in customer_ids)

        def work(db: sqlite3.Connection) -> dict[str, dict[str, dt.datetime]]:
            rows = db.execute(
                _MEMBERSHIPS_OF,
                (ids,),
            )
            found: dict[str, dict[str, dt.datetime]] = {}
            for customer, segment, at in rows:
                found.setdefault(customer, {})[segment] = dt.datetime.fromisoformat(at)
            return found

        return await self.read(work) if customer_ids else {}

    async def segment_counts(self, names: Collection[str]) -> dict[str, int]:
        wanted = [text(n, "segment") for n in names]

        def work(db: sqlite3.Connection) -> dict[str, int]:
            rows = db.execute(
                _SEGMENT_COUNTS,
                (in_list(wanted),),
            )
            return dict.fromkeys(wanted, 0) | {name: int(n) for name, n in rows}

        return await self.read(work) if wanted else {}

    async def segment_members(self, segment: str, *, after: str | None, limit: int) -> list[str]:
        params = (
            text(segment, "segment"),
            text(after, "after") if after is not None else "",
            limit,
        )

        def work(db: sqlite3.Connection) -> list[str]:
            rows = db.execute(
                "SELECT customer_id FROM segment_members WHERE segment = ? AND customer_id > ?"
                " ORDER BY customer_id LIMIT ?",
                params,
            )
            return [r[0] for r in rows]

        return await self.read(work)

    async def save_definitions(self, records: Sequence[SegmentDefined]) -> None:
        rows = [(r.name, r.model_dump_json()) for r in records]

        def work(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO segment_definitions (name, doc) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET doc = excluded.doc",
                rows,
            )

        if rows:
            await self.write(work)

    async def definitions(self) -> list[SegmentDefined]:
        def work(db: sqlite3.Connection) -> list[SegmentDefined]:
            rows = db.execute("SELECT doc FROM segment_definitions ORDER BY name")
            return [SegmentDefined.model_validate_json(r[0], extra=CONSUMER_EXTRA) for r in rows]

        return await self.read(work)

    async def last_clock_day(self) -> dt.date | None:
        def work(db: sqlite3.Connection) -> dt.date | None:
            row = db.execute(
                "SELECT value FROM profile_meta WHERE key = ?", (CLOCK_DAY,)
            ).fetchone()
            return dt.date.fromisoformat(row[0]) if row else None

        return await self.read(work)

    # -- the customer journey

    async def save_timeline(
        self, entries: Sequence[TimelineEntry], *, erased: Collection[str] = ()
    ) -> None:
        wiped = [(text(c, "customer_id"),) for c in erased]
        rows = [
            (e.customer_id, e.entry_id, stored_time(e.at), e.type, e.model_dump_json())
            for e in entries
        ]
        owners = in_list({e.customer_id for e in entries})

        def work(db: sqlite3.Connection) -> None:
            db.executemany("DELETE FROM timeline WHERE customer_id = ?", wiped)
            db.executemany(
                "INSERT OR REPLACE INTO timeline (customer_id, entry_id, at, type, doc)"
                " VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            # An erased customer keeps no entry, not even of an event announced after it.
            db.execute(
                "DELETE FROM timeline WHERE customer_id IN (SELECT customer_id FROM profiles"  # noqa: S608
                f" WHERE kind = 'erased' AND customer_id IN {IN_LIST})",
                (owners,),
            )

        if rows or wiped:
            await self.write(work, erasure=bool(wiped))

    async def timeline(
        self,
        customer_ids: Collection[str],
        *,
        before: Position | None,
        limit: int,
        types: Collection[str] | None = None,
    ) -> list[TimelineEntry]:
        ids = in_list(text(i, "customer_id") for i in customer_ids)
        sql = f"SELECT doc FROM timeline WHERE customer_id IN {IN_LIST}"  # noqa: S608
        params: list[object] = [ids]
        if before is not None:
            sql += " AND (at < ? OR (at = ? AND entry_id < ?))"
            params += [text(before[0], "before"), before[0], text(before[1], "before")]
        if types is not None:
            sql += f" AND type IN {IN_LIST}"
            params.append(in_list(text(t, "type") for t in types))
        sql += " ORDER BY at DESC, entry_id DESC LIMIT ?"
        params.append(limit)

        def work(db: sqlite3.Connection) -> list[TimelineEntry]:
            rows = db.execute(sql, params)
            return [TimelineEntry.model_validate_json(r[0]) for r in rows]

        if not customer_ids or (types is not None and not types):
            return []
        found = await self.read(work)
        return sorted(found, key=position, reverse=True)
