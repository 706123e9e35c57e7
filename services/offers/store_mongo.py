"""Offers in MongoDB: ledgers and offers as documents with their looked-up fields beside them.

Collections `offers_ledgers` (`_id` customer id, guarded by `version` like the profiles),
`offers` (`_id` offer id, unique coupon code), `offers_cards`, `offers_days`,
`offers_reservations` and `offers_erasures` (the erased customers' one-way marks). Filters are
built from typed strings only, so an id like `{"$gt": ""}` stays data.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from decimal import Decimal
from typing import Any, ClassVar

from pymongo import ASCENDING, IndexModel, ReplaceOne, UpdateOne
from pymongo.errors import DuplicateKeyError

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
from shared.storage import Indexes, MongoStore

LEDGERS = "offers_ledgers"
OFFERS = "offers"
CARDS = "offers_cards"
DAYS = "offers_days"
RESERVATIONS = "offers_reservations"
CAMPAIGNS = "offers_campaigns"
BUDGETS = "offers_budgets"
MARKS = "offers_erasures"


def _offer_doc(o: OfferRecord) -> dict[str, Any]:
    return {
        "_id": o.offer_id,
        "customer_id": o.customer_id,
        "coupon_code": o.coupon_code,
        "state": o.state,
        "valid_until": o.valid_until.isoformat(),
        "campaign_id": o.issued.campaign_id,
        "kind": o.kind,
        "variant": o.issued.variant,
        "discount": str(o.redemption.discount) if o.redemption is not None else None,
        # The record as JSON text: Decimal stays exact, dates stay ISO.
        "doc": o.model_dump_json(),
    }


class MongoOffersRepository(MongoStore):
    """One unordered bulk write per collection and batch."""

    SERVICE = "offers"
    INDEXES: ClassVar[Indexes] = {
        LEDGERS: (
            IndexModel([("birth_md", ASCENDING)]),
            IndexModel([("anniversary_date", ASCENDING)]),
            IndexModel([("win_back_due", ASCENDING)]),
            IndexModel([("last_fact_at", ASCENDING)]),
        ),
        OFFERS: (
            IndexModel([("coupon_code", ASCENDING)], unique=True),
            IndexModel([("customer_id", ASCENDING)]),
            IndexModel([("state", ASCENDING), ("valid_until", ASCENDING)]),
        ),
    }

    async def ledgers(self, customer_ids: Collection[str]) -> dict[str, Ledger]:
        ids = [text(i, "customer_id") for i in customer_ids]
        found: dict[str, Ledger] = {}
        if ids:
            async for doc in self.database[LEDGERS].find({"_id": {"$in": ids}}):
                ledger = Ledger.model_validate_json(doc["doc"])
                found[ledger.customer_id] = ledger
        return found

    async def offers_of_customers(self, customer_ids: Collection[str]) -> dict[str, OfferRecord]:
        ids = [text(i, "customer_id") for i in customer_ids]
        found: dict[str, OfferRecord] = {}
        if ids:
            async for doc in self.database[OFFERS].find({"customer_id": {"$in": ids}}):
                offer = OfferRecord.model_validate_json(doc["doc"])
                found[offer.offer_id] = offer
        return found

    async def owners(self, codes: Collection[str]) -> dict[str, str]:
        values = [text(c, "code") for c in codes]
        if not values:
            return {}
        cursor = self.database[OFFERS].find(
            {"coupon_code": {"$in": values}}, {"coupon_code": 1, "customer_id": 1}
        )
        return {doc["coupon_code"]: doc["customer_id"] async for doc in cursor}

    async def days(self) -> Days:
        doc = await self.database[DAYS].find_one({"_id": "days"})
        if doc is None:
            return Days()
        return Days(date_of(doc["first"]), date_of(doc["last"]))

    async def candidates(
        self, day: dt.date, month_days: Sequence[str], *, after: str | None, limit: int
    ) -> list[str]:
        iso_day = day.isoformat()
        page: dict[str, Any] = {"$gt": after} if after is not None else {"$exists": True}
        ledgers = {
            "merged_into": None,
            "_id": page,
            "$or": [
                {"birth_md": {"$in": list(month_days)}},
                {"anniversary_date": iso_day},
                {"win_back_due": {"$ne": None, "$lte": iso_day}},
            ],
        }
        found = {
            doc["_id"]
            async for doc in self.database[LEDGERS]
            .find(ledgers, {"_id": 1})
            .sort("_id", ASCENDING)
            .limit(limit)
        }
        expiring = {"state": "issued", "valid_until": {"$lt": iso_day}, "customer_id": page}
        found |= {
            doc["customer_id"]
            async for doc in self.database[OFFERS]
            .find(expiring, {"customer_id": 1})
            .sort("customer_id", ASCENDING)
            .limit(limit)
        }
        return sorted(found)[:limit]

    async def save(self, changes: Changes) -> None:
        if changes.ledgers:
            await self.database[LEDGERS].bulk_write(
                [
                    ReplaceOne(
                        {"_id": row.ledger.customer_id, "version": row.ledger.version - 1},
                        {
                            "_id": row.ledger.customer_id,
                            "version": row.ledger.version,
                            "merged_into": row.ledger.merged_into,
                            "birth_md": row.birth_md,
                            "anniversary_date": iso(row.anniversary_date),
                            "win_back_due": iso(row.win_back_due),
                            "last_fact_at": row.last_fact_at,
                            "doc": row.ledger.model_dump_json(),
                        },
                        upsert=True,
                    )
                    for row in changes.ledgers
                ],
                ordered=False,
            )
        if changes.offers:
            await self.database[OFFERS].bulk_write(
                [
                    ReplaceOne({"_id": o.offer_id}, _offer_doc(o), upsert=True)
                    for o in changes.offers
                ],
                ordered=False,
            )
        cards = [
            UpdateOne({"_id": card}, {"$set": {"customer_id": row.ledger.customer_id}}, upsert=True)
            for row in changes.ledgers
            if not row.ledger.is_alias()
            for card in row.ledger.cards
        ]
        if cards:
            await self.database[CARDS].bulk_write(cards, ordered=False)
        days = changes.days
        if days is not None and days.first is not None and days.last is not None:
            await self.database[DAYS].replace_one(
                {"_id": "days"},
                {"_id": "days", "first": days.first.isoformat(), "last": days.last.isoformat()},
                upsert=True,
            )
        if changes.released:
            await self.database[RESERVATIONS].delete_many(
                {"_id": {"$in": sorted(changes.released)}}
            )
        for erasure in changes.erasures:
            await self._erase(erasure)

    async def _erase(self, erasure: Erasure) -> None:
        """An erasure. Not one transaction (no more than the rest of `save`): the ledger goes
        first, so a batch processed again after a crash finds the erasure to apply again
        (on a fresh ledger) until the customer's offers are gone; a crash between deleting the
        old offers and writing the unlinked ones loses their figures, never their link."""
        ledgers = self.database[LEDGERS]
        if erasure.version:
            guard = {"_id": erasure.customer_id, "version": erasure.version}
            gone = (await ledgers.delete_one(guard)).deleted_count == 1
        else:  # read as new: it must still not be there
            gone = await ledgers.find_one({"_id": erasure.customer_id}, {"_id": 1}) is None
        if not gone:
            raise Conflict("a ledger changed in the store since it was read")
        ids = erasure.customer_ids
        await self.database[MARKS].bulk_write(
            [
                UpdateOne({"_id": erasure_mark(c)}, {"$setOnInsert": {"erased": True}}, upsert=True)
                for c in ids
            ],
            ordered=False,
        )
        if erasure.ledger is not None:
            await self.database[LEDGERS].insert_one(
                {
                    "_id": erasure.ledger.customer_id,
                    "version": erasure.ledger.version,
                    "merged_into": None,
                    "birth_md": None,
                    "anniversary_date": None,
                    "win_back_due": None,
                    "last_fact_at": None,
                    "doc": erasure.ledger.model_dump_json(),
                }
            )
        await self.database[LEDGERS].delete_many({"_id": {"$in": list(erasure.aliases)}})
        await self.database[OFFERS].delete_many({"customer_id": {"$in": ids}})
        if erasure.offers:
            await self.database[OFFERS].insert_many([_offer_doc(o) for o in erasure.offers])
        await self.database[CARDS].delete_many({"customer_id": {"$in": ids}})
        await self.database[RESERVATIONS].delete_many({"_id": {"$in": list(erasure.codes)}})
        # A budget's charges follow their offers: the customer's count moves to the token.
        token = _field_key(erasure.token)
        for customer_id in ids:
            key = _field_key(customer_id)
            await self.database[BUDGETS].update_many(
                {f"customers.{key}": {"$exists": True}},
                {"$rename": {f"customers.{key}": f"customers.{token}"}},
            )
        for old, new in erasure.offer_ids.items():
            await self.database[BUDGETS].update_many({"offers": old}, {"$set": {"offers.$": new}})

    async def erased(self, customer_ids: Collection[str]) -> set[str]:
        marks = {erasure_mark(text(i, "customer_id")): i for i in customer_ids}
        if not marks:
            return set()
        cursor = self.database[MARKS].find({"_id": {"$in": list(marks)}}, {"_id": 1})
        return {marks[doc["_id"]] async for doc in cursor}

    async def offer_by_code(self, code: str) -> OfferRecord | None:
        doc = await self.database[OFFERS].find_one({"coupon_code": text(code, "code")})
        return OfferRecord.model_validate_json(doc["doc"]) if doc else None

    async def customer_of_card(self, card_id: str) -> str | None:
        doc = await self.database[CARDS].find_one({"_id": text(card_id, "card_id")})
        return str(doc["customer_id"]) if doc else None

    async def offers_of(self, customer_id: str) -> list[OfferRecord]:
        found = await self.offers_of_customers([customer_id])
        return sorted_offers(found.values())

    async def reserve(self, code: str, lane: str, until: dt.datetime, now: dt.datetime) -> bool:
        try:
            await self.database[RESERVATIONS].update_one(
                {
                    "_id": text(code, "code"),
                    "$or": [{"until": {"$lt": now}}, {"lane": text(lane, "lane")}],
                },
                {"$set": {"lane": lane, "until": until}},
                upsert=True,
            )
        except DuplicateKeyError:
            return False  # another lane holds it: the upsert met its document
        return True

    async def record_deliveries(self, outcomes: Mapping[str, tuple[str, str]]) -> None:
        if not outcomes:
            return
        records = await self.database[OFFERS].find({"_id": {"$in": list(outcomes)}}).to_list(None)
        updates = []
        for doc in records:
            state, message_id = outcomes[doc["_id"]]
            record = OfferRecord.model_validate_json(doc["doc"]).model_copy(
                update={"delivery": state, "message_id": message_id}
            )
            updates.append(
                UpdateOne({"_id": doc["_id"]}, {"$set": {"doc": record.model_dump_json()}})
            )
        if updates:
            await self.database[OFFERS].bulk_write(updates, ordered=False)

    async def decision_counts(self) -> Counter[tuple[str, str, str | None]]:
        counts: Counter[tuple[str, str, str | None]] = Counter()
        async for doc in self.database[LEDGERS].find({}, {"doc": 1}):
            for decision in Ledger.model_validate_json(doc["doc"]).decisions.values():
                counts[(decision.kind, decision.outcome, decision.reason)] += 1
        return counts

    # ---------------------------------------------------------------- campaigns and budgets

    async def campaigns(self) -> dict[str, CampaignChanged]:
        found: dict[str, CampaignChanged] = {}
        async for doc in self.database[CAMPAIGNS].find({}).sort("_id", ASCENDING):
            record = CampaignChanged.model_validate_json(doc["doc"], extra=CONSUMER_EXTRA)
            found[record.campaign_id] = record
        return found

    async def save_campaign(self, record: CampaignChanged) -> bool:
        changes = len(record.history)
        try:
            result = await self.database[CAMPAIGNS].update_one(
                {"_id": text(record.campaign_id, "campaign_id"), "changes": {"$lt": changes}},
                {"$set": {"changes": changes, "doc": record.model_dump_json()}},
                upsert=True,
            )
        except DuplicateKeyError:
            return False  # the stored record knows as much history or more
        return bool(result.modified_count or result.upserted_id is not None)

    async def spend(self, spend: Spend, budget: Budget) -> bool:
        """One document per campaign holds its counters; a single conditional update charges a
        redemption only if every limit still holds, so concurrent lanes cannot overspend."""
        cid = text(spend.campaign_id, "campaign_id")
        budgets = self.database[BUDGETS]
        await budgets.update_one(
            {"_id": cid},
            {
                "$setOnInsert": {
                    "redemptions": 0,
                    "discount_cents": 0,
                    "customers": {},
                    "store_days": {},
                    "offers": [],
                }
            },
            upsert=True,
        )
        if await budgets.find_one({"_id": cid, "offers": spend.offer_id}, {"_id": 1}):
            return True  # charged before (the batch is processed again)
        cents = int((spend.discount * 100).to_integral_value())
        customer = _field_key(spend.customer_id)
        store_day = _field_key(f"{spend.store_id}|{spend.day.isoformat()}")
        condition: dict[str, Any] = {"_id": cid, "offers": {"$ne": spend.offer_id}}
        if budget.max_redemptions is not None:
            condition["redemptions"] = {"$lt": budget.max_redemptions}
        if budget.max_discount is not None:
            limit = int((budget.max_discount * 100).to_integral_value())
            condition["discount_cents"] = {"$lte": limit - cents}
        if budget.max_per_customer is not None:
            condition[f"customers.{customer}"] = {"$not": {"$gte": budget.max_per_customer}}
        if budget.max_per_store_day is not None:
            condition[f"store_days.{store_day}"] = {"$not": {"$gte": budget.max_per_store_day}}
        result = await budgets.update_one(
            condition,
            {
                "$inc": {
                    "redemptions": 1,
                    "discount_cents": cents,
                    f"customers.{customer}": 1,
                    f"store_days.{store_day}": 1,
                },
                "$push": {"offers": spend.offer_id},
            },
        )
        if result.modified_count == 1:
            return True
        # Refused: unless another instance charged this very offer meanwhile.
        return bool(await budgets.find_one({"_id": cid, "offers": spend.offer_id}, {"_id": 1}))

    async def budget_usage(self) -> dict[str, tuple[int, Decimal]]:
        usage: dict[str, tuple[int, Decimal]] = {}
        async for doc in self.database[BUDGETS].find({}, {"redemptions": 1, "discount_cents": 1}):
            usage[doc["_id"]] = (int(doc["redemptions"]), Decimal(doc["discount_cents"]) / 100)
        return usage

    async def customers_since(
        self, moment: dt.datetime, *, after: str | None, limit: int
    ) -> list[str]:
        query: dict[str, Any] = {"last_fact_at": {"$gte": moment}, "merged_into": None}
        if after is not None:
            query["_id"] = {"$gt": after}
        cursor = self.database[LEDGERS].find(query, {"_id": 1}).sort("_id", ASCENDING).limit(limit)
        return [doc["_id"] async for doc in cursor]

    async def ledger_page(self, *, after: str | None, limit: int) -> list[Ledger]:
        query: dict[str, Any] = {"_id": {"$gt": after}} if after is not None else {}
        cursor = self.database[LEDGERS].find(query, {"doc": 1}).sort("_id", ASCENDING).limit(limit)
        return [Ledger.model_validate_json(doc["doc"]) async for doc in cursor]

    async def set_win_back_due(self, dues: Mapping[str, dt.date | None]) -> None:
        if dues:
            await self.database[LEDGERS].bulk_write(
                [
                    UpdateOne({"_id": customer_id}, {"$set": {"win_back_due": iso(due)}})
                    for customer_id, due in dues.items()
                ],
                ordered=False,
            )

    async def campaign_counts(self) -> dict[tuple[str, str | None], CampaignCounts]:
        offers = [
            (
                doc.get("campaign_id"),
                doc.get("kind", ""),
                doc.get("variant"),
                doc["state"],
                doc.get("discount"),
            )
            async for doc in self.database[OFFERS].find(
                {}, {"campaign_id": 1, "kind": 1, "variant": 1, "state": 1, "discount": 1}
            )
        ]
        held: list[tuple[str | None, str, str | None]] = []
        async for doc in self.database[LEDGERS].find({}, {"doc": 1}):
            for d in Ledger.model_validate_json(doc["doc"]).decisions.values():
                if d.outcome == "held_out":
                    held.append((d.campaign_id, d.kind, d.variant))
        return tally(offers, held)


def _field_key(value: str) -> str:
    """A value as a field name of the budget document: hashed, so `.` or `$` in a store id is
    never a path or an operator."""
    return hashlib.sha256(value.encode()).hexdigest()[:24]
