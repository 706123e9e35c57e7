"""Profiles in MongoDB: one document per customer (`_id` = customer id), one per coupon, one
per (segment, customer), one per segment definition and one per timeline entry."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from typing import Any, ClassVar

from pymongo import ASCENDING, DeleteOne, IndexModel, ReplaceOne

from services.profiles.domain import Coupon, CustomerProfile
from services.profiles.store import (
    MembershipWrites,
    export_of,
    kind_of,
    sorted_coupons,
    text,
)
from services.profiles.timeline import Position, TimelineEntry, position, stored_time
from shared.campaigns import SegmentDefined
from shared.events import CONSUMER_EXTRA
from shared.storage import Indexes, MongoStore

PROFILES = "profiles"
COUPONS = "profiles_coupons"
MEMBERS = "profiles_segment_members"
DEFINITIONS = "profiles_segment_definitions"
META = "profiles_meta"
TIMELINE = "profiles_timeline"
CLOCK_DAY = "clock_day"
"""The `profiles_meta` document of the latest clock day evaluated."""


def _member_id(segment: str, customer_id: str) -> str:
    # Segment names never hold a `/` (shared.campaigns.NAME_PATTERN): the id splits back.
    return f"{segment}/{customer_id}"


def _doc(profile: CustomerProfile) -> dict[str, Any]:
    doc = profile.model_dump(mode="json")
    doc["_id"] = profile.customer_id
    doc["kind"] = kind_of(profile)
    return doc


def _coupon_doc(coupon: Coupon) -> dict[str, Any]:
    return {"_id": coupon.offer_id, **coupon.model_dump(mode="json")}


class MongoProfilesRepository(MongoStore):
    """Collections `profiles`, `profiles_coupons`, `profiles_segment_members` (indexed by
    segment then customer, and by customer), `profiles_segment_definitions`, `profiles_meta`,
    `profiles_timeline` (`at` stored as fixed-width UTC text: microseconds kept, text order);
    the version guard is the upsert's filter: a document stored with another version makes
    the upsert collide with its `_id`."""

    SERVICE = "profiles"

    INDEXES: ClassVar[Indexes] = {
        PROFILES: (
            IndexModel("card_ids", name="card_ids"),
            IndexModel("kind", name="kind"),
            IndexModel("merged_into", name="merged_into", sparse=True),
        ),
        COUPONS: (IndexModel("customer_id", name="customer_id"),),
        MEMBERS: (
            IndexModel(
                [("segment", ASCENDING), ("customer_id", ASCENDING)],
                name="segment_customer",
                unique=True,
            ),
            IndexModel("customer_id", name="customer_id"),
        ),
        TIMELINE: (
            IndexModel(
                [("customer_id", ASCENDING), ("at", ASCENDING), ("entry_id", ASCENDING)],
                name="customer_order",
            ),
        ),
    }

    async def get_many(self, customer_ids: Collection[str]) -> dict[str, CustomerProfile]:
        ids = [text(i, "customer_id") for i in customer_ids]
        found: dict[str, CustomerProfile] = {}
        if ids:
            async for doc in self.database[PROFILES].find({"_id": {"$in": ids}}):
                found[doc["_id"]] = CustomerProfile.model_validate(doc)
        return found

    async def get_coupons(self, offer_ids: Collection[str]) -> dict[str, Coupon]:
        ids = [text(i, "offer_id") for i in offer_ids]
        found: dict[str, Coupon] = {}
        if ids:
            async for doc in self.database[COUPONS].find({"_id": {"$in": ids}}):
                found[doc["_id"]] = Coupon.model_validate(doc)
        return found

    async def save_many(
        self,
        profiles: Sequence[CustomerProfile],
        coupons: Sequence[Coupon] = (),
        *,
        memberships: MembershipWrites | None = None,
        clock_day: dt.date | None = None,
    ) -> None:
        # Memberships first: a crash before the documents are written re-reads the batch,
        # applies its events again and finds the memberships it published already stored.
        writes: list[ReplaceOne[Any] | DeleteOne] = []
        for (segment, customer), at in (memberships or {}).items():
            key = _member_id(segment, customer)
            if at is None:
                writes.append(DeleteOne({"_id": key}))
            else:
                doc = {"_id": key, "segment": segment, "customer_id": customer, "entered_at": at}
                writes.append(ReplaceOne({"_id": key}, doc, upsert=True))
        if writes:
            await self.database[MEMBERS].bulk_write(writes, ordered=False)
        dropped = [p.customer_id for p in profiles if kind_of(p) != "profile"]
        if dropped:
            # An erased customer or an alias is in no segment: none of its rows stays.
            await self.database[MEMBERS].delete_many({"customer_id": {"$in": dropped}})
        if profiles:
            await self.database[PROFILES].bulk_write(
                [
                    ReplaceOne(
                        {"_id": p.customer_id, "version": p.version - 1}, _doc(p), upsert=True
                    )
                    for p in profiles
                ],
                ordered=False,
            )
        if coupons:
            await self.database[COUPONS].bulk_write(
                [ReplaceOne({"_id": c.offer_id}, _coupon_doc(c), upsert=True) for c in coupons],
                ordered=False,
            )
        # An erased customer keeps no coupon: neither those it had nor those that offers'
        # revocations (for the erasure) announce after it.
        owners = sorted({c.customer_id for c in coupons} | {p.customer_id for p in profiles})
        if owners:
            query = {"_id": {"$in": owners}, "kind": "erased"}
            erased = [d["_id"] async for d in self.database[PROFILES].find(query, {"_id": 1})]
            if erased:
                await self.database[COUPONS].delete_many({"customer_id": {"$in": erased}})
        if clock_day is not None:
            # ISO dates order as strings: `$max` keeps the latest day.
            await self.database[META].update_one(
                {"_id": CLOCK_DAY}, {"$max": {"day": clock_day.isoformat()}}, upsert=True
            )

    async def get(self, customer_id: str) -> CustomerProfile | None:
        doc = await self.database[PROFILES].find_one({"_id": text(customer_id, "customer_id")})
        return CustomerProfile.model_validate(doc) if doc else None

    async def find_by_card(self, card_id: str) -> CustomerProfile | None:
        doc = await self.database[PROFILES].find_one(
            {"card_ids": text(card_id, "card_id"), "kind": "profile"}
        )
        return CustomerProfile.model_validate(doc) if doc else None

    async def coupons_of(self, customer_id: str) -> list[Coupon]:
        cursor = self.database[COUPONS].find({"customer_id": text(customer_id, "customer_id")})
        return sorted_coupons([Coupon.model_validate(doc) async for doc in cursor])

    async def count(self) -> int:
        return int(await self.database[PROFILES].count_documents({"kind": "profile"}))

    async def export(self, customer_id: str) -> dict[str, Any]:
        customer_id = text(customer_id, "customer_id")
        cursor = self.database[PROFILES].find({"merged_into": customer_id}, {"_id": 1})
        aliases = sorted([doc["_id"] async for doc in cursor])
        memberships = await self.memberships_of([customer_id])
        return export_of(
            customer_id,
            await self.get(customer_id),
            aliases,
            await self.coupons_of(customer_id),
            memberships.get(customer_id),
        )

    # -- segments

    async def live_profiles(self, *, after: str | None, limit: int) -> list[CustomerProfile]:
        query: dict[str, Any] = {"kind": "profile"}
        if after is not None:
            query["_id"] = {"$gt": text(after, "after")}
        cursor = self.database[PROFILES].find(query).sort("_id", ASCENDING).limit(limit)
        return [CustomerProfile.model_validate(doc) async for doc in cursor]

    async def memberships_of(
        self, customer_ids: Collection[str]
    ) -> dict[str, dict[str, dt.datetime]]:
        ids = [text(i, "customer_id") for i in customer_ids]
        found: dict[str, dict[str, dt.datetime]] = {}
        if ids:
            cursor = self.database[MEMBERS].find({"customer_id": {"$in": ids}})
            async for doc in cursor:
                at: dt.datetime = doc["entered_at"]
                found.setdefault(doc["customer_id"], {})[doc["segment"]] = at.astimezone(dt.UTC)
        return {c: dict(sorted(m.items())) for c, m in sorted(found.items())}

    async def segment_counts(self, names: Collection[str]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for name in names:
            counts[name] = int(
                await self.database[MEMBERS].count_documents({"segment": text(name, "segment")})
            )
        return counts

    async def segment_members(self, segment: str, *, after: str | None, limit: int) -> list[str]:
        query: dict[str, Any] = {"segment": text(segment, "segment")}
        if after is not None:
            query["customer_id"] = {"$gt": text(after, "after")}
        cursor = (
            self.database[MEMBERS]
            .find(query, {"customer_id": 1})
            .sort([("segment", ASCENDING), ("customer_id", ASCENDING)])
            .limit(limit)
        )
        return [doc["customer_id"] async for doc in cursor]

    async def save_definitions(self, records: Sequence[SegmentDefined]) -> None:
        if records:
            await self.database[DEFINITIONS].bulk_write(
                [
                    ReplaceOne(
                        {"_id": r.name}, {"_id": r.name, **r.model_dump(mode="json")}, upsert=True
                    )
                    for r in records
                ],
                ordered=False,
            )

    async def definitions(self) -> list[SegmentDefined]:
        cursor = self.database[DEFINITIONS].find({}, {"_id": 0}).sort("_id", ASCENDING)
        return [SegmentDefined.model_validate(doc, extra=CONSUMER_EXTRA) async for doc in cursor]

    async def last_clock_day(self) -> dt.date | None:
        doc = await self.database[META].find_one({"_id": CLOCK_DAY})
        return dt.date.fromisoformat(doc["day"]) if doc else None

    # -- the customer journey

    async def save_timeline(
        self, entries: Sequence[TimelineEntry], *, erased: Collection[str] = ()
    ) -> None:
        wiped = [text(c, "customer_id") for c in erased]
        if wiped:
            await self.database[TIMELINE].delete_many({"customer_id": {"$in": wiped}})
        if entries:
            await self.database[TIMELINE].bulk_write(
                [
                    ReplaceOne(
                        {"_id": f"{e.customer_id}/{e.entry_id}"},
                        {
                            "_id": f"{e.customer_id}/{e.entry_id}",
                            "customer_id": e.customer_id,
                            "entry_id": e.entry_id,
                            "at": stored_time(e.at),
                            "type": e.type,
                            "doc": e.model_dump_json(),
                        },
                        upsert=True,
                    )
                    for e in entries
                ],
                ordered=False,
            )
            # An erased customer keeps no entry, not even of an event announced after it.
            owners = sorted({e.customer_id for e in entries})
            query = {"_id": {"$in": owners}, "kind": "erased"}
            gone = [d["_id"] async for d in self.database[PROFILES].find(query, {"_id": 1})]
            if gone:
                await self.database[TIMELINE].delete_many({"customer_id": {"$in": gone}})

    async def timeline(
        self,
        customer_ids: Collection[str],
        *,
        before: Position | None,
        limit: int,
        types: Collection[str] | None = None,
    ) -> list[TimelineEntry]:
        ids = [text(i, "customer_id") for i in customer_ids]
        if not ids or (types is not None and not types):
            return []
        query: dict[str, Any] = {"customer_id": {"$in": ids}}
        if before is not None:
            at, entry_id = text(before[0], "before"), text(before[1], "before")
            query["$or"] = [{"at": {"$lt": at}}, {"at": at, "entry_id": {"$lt": entry_id}}]
        if types is not None:
            query["type"] = {"$in": [text(t, "type") for t in types]}
        cursor = (
            self.database[TIMELINE]
            .find(query, {"doc": 1})
            .sort([("at", -1), ("entry_id", -1)])
            .limit(limit)
        )
        found = [TimelineEntry.model_validate_json(doc["doc"]) async for doc in cursor]
        return sorted(found, key=position, reverse=True)
