"""Offers in MongoDB: collections of customers, offers (`_id` = offer id) and rejections.

One unordered bulk write per collection and batch. Filters are built from typed values only,
so a string that looks like an operator stays a string.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping
from typing import Any, ClassVar

from pymongo import ASCENDING, IndexModel, ReplaceOne, UpdateOne

from services.offers.domain import Changes, CustomerQuery, CustomerRecord, OfferRecord, Snapshot
from services.offers.store import date_of, iso
from shared.events import OfferIssued, OfferRedeemed, RedemptionRejected
from shared.storage import Indexes, MongoStore

CUSTOMERS = "offers_customers"
OFFERS = "offers"
REJECTIONS = "offers_rejections"


def _customer_doc(c: CustomerRecord) -> dict[str, Any]:
    return {
        "_id": c.customer_id,
        "marketing_consent": c.marketing_consent,
        "has_email": c.has_email,
        "erased": c.erased,
        "birth_md": c.birth_md,
        "first_purchase_date": iso(c.first_purchase_date),
        "anniversary_date": iso(c.anniversary_date),
        "last_visit_date": iso(c.last_visit_date),
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
        first_purchase_date=date_of(doc.get("first_purchase_date")),
        last_visit_date=date_of(doc.get("last_visit_date")),
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
        "expired_on": iso(o.expired_on),
        "issued": o.issued.model_dump(mode="json"),
        "redemption": o.redemption.model_dump(mode="json") if o.redemption else None,
    }


def _offer_from_doc(doc: Mapping[str, Any]) -> OfferRecord:
    redemption = doc.get("redemption")
    return OfferRecord(
        issued=OfferIssued.model_validate(doc["issued"]),
        rule_key=str(doc["rule_key"]),
        state=doc["state"],
        expired_on=date_of(doc.get("expired_on")),
        redemption=OfferRedeemed.model_validate(redemption) if redemption else None,
    )


class MongoOffersRepository(MongoStore):
    """Collections `offers_customers`, `offers` and `offers_rejections`."""

    # Default index names ("birth_md_1"), the names stores opened before this module have:
    # the same keys under another name would make `create_indexes` refuse to start.
    INDEXES: ClassVar[Indexes] = {
        CUSTOMERS: (
            IndexModel("birth_md"),
            IndexModel("anniversary_date"),
            IndexModel("last_visit_date"),
        ),
        OFFERS: (
            IndexModel("coupon_code", unique=True),
            IndexModel("customer_id"),
            IndexModel([("state", ASCENDING), ("valid_until", ASCENDING)]),
            IndexModel("expired_on"),
        ),
        REJECTIONS: (IndexModel("customer_id"),),
    }

    async def _offers_into(self, snapshot: Snapshot, where: Mapping[str, Any]) -> None:
        async for doc in self.database[OFFERS].find(dict(where)):
            offer = _offer_from_doc(doc)
            snapshot.offers[offer.offer_id] = offer

    async def load(self, customer_ids: Collection[str], codes: Collection[str]) -> Snapshot:
        ids = [str(i) for i in customer_ids]
        code_list = [str(c) for c in codes]
        snapshot = Snapshot()
        async for doc in self.database[CUSTOMERS].find({"_id": {"$in": ids}}):
            customer = _customer_from_doc(doc)
            snapshot.customers[customer.customer_id] = customer
        await self._offers_into(
            snapshot,
            {"$or": [{"customer_id": {"$in": ids}}, {"coupon_code": {"$in": code_list}}]},
        )
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
                {"$set": {"state": "expired", "expired_on": iso(o.expired_on)}},
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
            await self.database[CUSTOMERS].bulk_write(customer_ops, ordered=False)
        if offer_ops:
            await self.database[OFFERS].bulk_write(offer_ops, ordered=False)
        if rejection_ops:
            await self.database[REJECTIONS].bulk_write(rejection_ops, ordered=False)

    async def customers_for_day(
        self, query: CustomerQuery, *, after: str | None, limit: int
    ) -> Snapshot:
        where: dict[str, Any]
        if query.kind == "birthday":
            where = {"birth_md": {"$in": list(query.month_days)}}
        elif query.kind == "anniversary":
            where = {"anniversary_date": iso(query.on_date)}
        else:
            where = {
                "last_visit_date": {"$lte": iso(query.on_date)},
                "visits": {"$gte": query.min_visits},
            }
        where["erased"] = False
        if after is not None:
            where["_id"] = {"$gt": after}
        snapshot = Snapshot()
        cursor = self.database[CUSTOMERS].find(where).sort("_id", ASCENDING).limit(limit)
        async for doc in cursor:
            customer = _customer_from_doc(doc)
            snapshot.customers[customer.customer_id] = customer
        if snapshot.customers:
            await self._offers_into(snapshot, {"customer_id": {"$in": list(snapshot.customers)}})
        return snapshot

    async def offers_to_expire(
        self, day: dt.date, *, after: str | None, limit: int
    ) -> list[OfferRecord]:
        on = day.isoformat()
        where: dict[str, Any] = {
            "$or": [
                {"state": "issued", "valid_until": {"$lt": on}},
                {"state": "expired", "expired_on": on},
            ]
        }
        if after is not None:
            where["_id"] = {"$gt": after}
        cursor = self.database[OFFERS].find(where).sort("_id", ASCENDING).limit(limit)
        return [_offer_from_doc(doc) async for doc in cursor]

    async def offers_of(self, customer_id: str) -> list[OfferRecord]:
        cursor = (
            self.database[OFFERS]
            .find({"customer_id": str(customer_id)})
            .sort([("valid_from", ASCENDING), ("_id", ASCENDING)])
        )
        return [_offer_from_doc(doc) async for doc in cursor]

    async def rejections(self, customer_id: str) -> list[RedemptionRejected]:
        cursor = (
            self.database[REJECTIONS].find({"customer_id": str(customer_id)}).sort("_id", ASCENDING)
        )
        return [RedemptionRejected.model_validate(doc["doc"]) async for doc in cursor]
