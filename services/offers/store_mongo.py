"""Offers in MongoDB: ledgers and offers as documents with their looked-up fields beside them.

Collections `offers_ledgers` (`_id` customer id, guarded by `version` like the profiles),
`offers` (`_id` offer id, unique coupon code), `offers_cards`, `offers_days` and
`offers_reservations`. Filters are built from typed strings only, so an id like `{"$gt": ""}`
stays data.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from typing import Any, ClassVar

from pymongo import ASCENDING, IndexModel, ReplaceOne, UpdateOne
from pymongo.errors import DuplicateKeyError

from services.offers.domain import OfferRecord
from services.offers.engine import Days
from services.offers.ledger import Ledger
from services.offers.store import Changes, date_of, iso, sorted_offers, text
from shared.storage import Indexes, MongoStore

LEDGERS = "offers_ledgers"
OFFERS = "offers"
CARDS = "offers_cards"
DAYS = "offers_days"
RESERVATIONS = "offers_reservations"


def _offer_doc(o: OfferRecord) -> dict[str, Any]:
    return {
        "_id": o.offer_id,
        "customer_id": o.customer_id,
        "coupon_code": o.coupon_code,
        "state": o.state,
        "valid_until": o.valid_until.isoformat(),
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
