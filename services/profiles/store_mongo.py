"""Profiles in MongoDB: one document per customer (`_id` = customer id), one per coupon."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, ClassVar

from pymongo import IndexModel, ReplaceOne

from services.profiles.domain import Coupon, CustomerProfile
from services.profiles.store import export_of, kind_of, sorted_coupons, text
from shared.storage import Indexes, MongoStore

PROFILES = "profiles"
COUPONS = "profiles_coupons"


def _doc(profile: CustomerProfile) -> dict[str, Any]:
    doc = profile.model_dump(mode="json")
    doc["_id"] = profile.customer_id
    doc["kind"] = kind_of(profile)
    return doc


def _coupon_doc(coupon: Coupon) -> dict[str, Any]:
    return {"_id": coupon.offer_id, **coupon.model_dump(mode="json")}


class MongoProfilesRepository(MongoStore):
    """Collections `profiles` and `profiles_coupons`; the version guard is the upsert's filter:
    a document stored with another version makes the upsert collide with its `_id`."""

    SERVICE = "profiles"

    INDEXES: ClassVar[Indexes] = {
        PROFILES: (
            IndexModel("card_ids", name="card_ids"),
            IndexModel("kind", name="kind"),
            IndexModel("merged_into", name="merged_into", sparse=True),
        ),
        COUPONS: (IndexModel("customer_id", name="customer_id"),),
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
        self, profiles: Sequence[CustomerProfile], coupons: Sequence[Coupon] = ()
    ) -> None:
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
        return export_of(
            customer_id, await self.get(customer_id), aliases, await self.coupons_of(customer_id)
        )
