"""The notifier's contacts and deliveries in MongoDB: `notifier_contacts` (`_id` = customer id)
and `notifier_deliveries` (`_id` = offer id); the shared sending budget in
`notifier_send_budget` (`_id` = the window's start)."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Collection
from typing import Any, ClassVar, cast

from pymongo import ASCENDING, DeleteOne, IndexModel, ReplaceOne, ReturnDocument, UpdateOne
from pymongo.errors import DuplicateKeyError

from services.notifier.domain import OPEN_STATES, Contact, Delivery, DeliveryStatus
from services.notifier.store import SendBudget, StoreChanges, unlinked_delivery
from shared.erasure import unlinked_token
from shared.events import CONSUMER_EXTRA, OfferIssued
from shared.storage import Indexes, MongoStore

CONTACTS = "notifier_contacts"
DELIVERIES = "notifier_deliveries"
SEND_BUDGET = "notifier_send_budget"
BUDGET_KEPT = dt.timedelta(hours=1)
"""How long a window's document stays (a TTL index removes it); only the current one is read."""
OLDEST_FIRST = [("updated_at", ASCENDING), ("_id", ASCENDING)]


def _ids(values: Collection[str]) -> list[str]:
    """Ids as plain strings: an id such as `{"$gt": ""}` stays data in a filter."""
    return [str(v) for v in values]


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    """UTC-aware, also from a client that hands back naive UTC times."""
    if value is None:
        return None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _contact_doc(contact: Contact) -> dict[str, Any]:
    return {
        "_id": contact.customer_id,
        "email": contact.email,
        "first_name": contact.first_name,
        "marketing_consent": contact.marketing_consent,
        "home_store_id": contact.home_store_id,
        "bounced": contact.bounced,
        "changed_at": contact.changed_at,
    }


def _contact(doc: dict[str, Any]) -> Contact:
    return Contact(
        customer_id=str(doc["_id"]),
        email=doc.get("email"),
        first_name=doc.get("first_name"),
        marketing_consent=bool(doc.get("marketing_consent")),
        home_store_id=doc.get("home_store_id"),
        bounced=bool(doc.get("bounced")),
        changed_at=_aware(doc.get("changed_at")),
    )


def _delivery_doc(delivery: Delivery) -> dict[str, Any]:
    offer = delivery.offer
    return {
        "_id": delivery.offer_id,
        "customer_id": delivery.customer_id,
        "state": delivery.state,
        "attempts": delivery.attempts,
        "message_id": delivery.message_id,
        # The offer's JSON as text: Decimal stays exact, dates stay ISO.
        "offer": offer.model_dump_json() if offer is not None else None,
        "updated_at": delivery.updated_at,
        "not_before": delivery.not_before,
        "last_error": delivery.last_error,
    }


def _delivery(doc: dict[str, Any]) -> Delivery:
    updated_at = _aware(doc["updated_at"])
    if updated_at is None:
        raise ValueError(f"delivery {doc['_id']!r} has no updated_at")
    offer = doc.get("offer")
    return Delivery(
        offer_id=str(doc["_id"]),
        customer_id=str(doc["customer_id"]),
        state=cast(DeliveryStatus, doc["state"]),
        attempts=int(doc.get("attempts", 0)),
        message_id=str(doc["message_id"]),
        offer=(
            OfferIssued.model_validate_json(offer, extra=CONSUMER_EXTRA)
            if offer is not None
            else None
        ),
        updated_at=updated_at,
        not_before=_aware(doc.get("not_before")),
        last_error=doc.get("last_error"),
    )


class MongoNotifierRepository(MongoStore):
    """Two collections keyed by `_id`; a batch is one unordered bulk write per collection."""

    SERVICE = "notifier"

    # Unnamed: the names MongoDB derives are those of the indexes earlier versions created.
    INDEXES: ClassVar[Indexes] = {
        DELIVERIES: (
            IndexModel([("customer_id", ASCENDING), ("state", ASCENDING)]),
            IndexModel([("state", ASCENDING), ("not_before", ASCENDING)]),
        ),
        SEND_BUDGET: (IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0),),
    }

    async def get_contacts(self, customer_ids: Collection[str]) -> dict[str, Contact]:
        cursor = self.database[CONTACTS].find({"_id": {"$in": _ids(customer_ids)}})
        return {c.customer_id: c for c in [_contact(doc) async for doc in cursor]}

    async def get_deliveries(self, offer_ids: Collection[str]) -> dict[str, Delivery]:
        cursor = self.database[DELIVERIES].find({"_id": {"$in": _ids(offer_ids)}})
        return {d.offer_id: d for d in [_delivery(doc) async for doc in cursor]}

    async def open_deliveries(self, customer_ids: Collection[str]) -> list[Delivery]:
        query = {
            "customer_id": {"$in": _ids(customer_ids)},
            "state": {"$in": sorted(OPEN_STATES)},
        }
        cursor = self.database[DELIVERIES].find(query).sort(OLDEST_FIRST)
        return [_delivery(doc) async for doc in cursor]

    async def claim_due(
        self,
        now: dt.datetime,
        limit: int,
        lease: dt.timedelta,
        budget: SendBudget | None = None,
    ) -> list[Delivery]:
        granted = limit if budget is None else await self._spend(now, limit, budget)
        if granted <= 0:
            return []
        query = {
            "$or": [
                {"state": "sending", "updated_at": {"$lte": (now - lease).astimezone(dt.UTC)}},
                {"state": "pending", "not_before": {"$lte": now.astimezone(dt.UTC)}},
            ]
        }
        # Candidates beyond the grant: another poller racing for the oldest ones wins some,
        # and this one goes on to the next rather than leaving its budget unused.
        candidates = self.database[DELIVERIES].find(query).sort(OLDEST_FIRST)
        cursor = candidates.limit(limit + granted if budget is not None else limit)
        claimed: list[Delivery] = []
        try:
            async for doc in cursor:
                if len(claimed) >= granted:
                    break
                # Claimed only if no other poller changed it since it was read.
                result = await self.database[DELIVERIES].update_one(
                    {"_id": doc["_id"], "state": doc["state"], "updated_at": doc["updated_at"]},
                    {"$set": {"state": "sending", "updated_at": now.astimezone(dt.UTC)}},
                )
                if result.matched_count == 1:
                    claimed.append(_delivery(doc))
        finally:
            if budget is not None and len(claimed) < granted:
                await self._refund(now, granted - len(claimed), budget)
        return claimed

    async def take_send_budget(self, now: dt.datetime, wanted: int, budget: SendBudget) -> int:
        return await self._spend(now, wanted, budget)

    async def send_budget_left(self, now: dt.datetime, budget: SendBudget) -> int:
        doc = await self.database[SEND_BUDGET].find_one({"_id": budget.window_key(now)})
        return max(0, budget.per_window - int(doc["used"] if doc else 0))

    async def _spend(self, now: dt.datetime, wanted: int, budget: SendBudget) -> int:
        """Take up to `wanted` units of the window's budget with one atomic `$inc`.

        Each caller's increment is its own slice [before, before + wanted) of the window's
        counter; it keeps the part of the slice below `per_window` and gives the rest back.
        The counter never falls below what callers keep, so together they keep at most
        `per_window`, however many instances race (no transaction needed)."""
        wanted = min(wanted, await self.send_budget_left(now, budget))
        if wanted <= 0:
            return 0
        key = budget.window_key(now)
        budget_docs = self.database[SEND_BUDGET]
        # The window's document first, on its own: an upsert that races another returns no
        # post-image on some servers, a plain update of an existing document does. A
        # duplicate key: another instance created it meanwhile.
        with contextlib.suppress(DuplicateKeyError):
            await budget_docs.update_one(
                {"_id": key},
                {"$setOnInsert": {"used": 0, "expires_at": budget.window(now) + BUDGET_KEPT}},
                upsert=True,
            )
        doc = await budget_docs.find_one_and_update(
            {"_id": key}, {"$inc": {"used": wanted}}, return_document=ReturnDocument.AFTER
        )
        if doc is None:  # the TTL monitor removed a window that is already over: none left
            return 0
        before = int(doc["used"]) - wanted
        granted = max(0, min(wanted, budget.per_window - before))
        if granted < wanted:
            await self._refund(now, wanted - granted, budget)
        return granted

    async def _refund(self, now: dt.datetime, units: int, budget: SendBudget) -> None:
        await self.database[SEND_BUDGET].update_one(
            {"_id": budget.window_key(now)}, {"$inc": {"used": -units}}
        )

    async def apply(self, changes: StoreChanges) -> None:
        contact_ops: list[DeleteOne | ReplaceOne[Any] | UpdateOne] = [
            DeleteOne({"_id": str(c)}) for c in changes.erased
        ]
        contact_ops += [
            ReplaceOne({"_id": c.customer_id}, _contact_doc(c), upsert=True)
            for c in changes.contacts
        ]
        contact_ops += [
            UpdateOne({"_id": str(cid), "email": str(addr)}, {"$set": {"bounced": True}})
            for cid, addr in changes.bounced
        ]
        if contact_ops:
            # Unordered is safe: a batch's plan names each customer at most once among the
            # erased and the upserted ids, and bounces are written apart from contact changes.
            await self.database[CONTACTS].bulk_write(contact_ops, ordered=False)
        delivery_ops = [
            ReplaceOne({"_id": d.offer_id}, _delivery_doc(d), upsert=True)
            for d in changes.deliveries
        ]
        if delivery_ops:
            await self.database[DELIVERIES].bulk_write(delivery_ops, ordered=False)
        for customer_id in sorted(changes.forgotten):
            token = unlinked_token()
            cursor = self.database[DELIVERIES].find({"customer_id": str(customer_id)})
            unlinked = [
                ReplaceOne(
                    {"_id": doc["_id"]}, _delivery_doc(unlinked_delivery(_delivery(doc), token))
                )
                async for doc in cursor
            ]
            if unlinked:
                await self.database[DELIVERIES].bulk_write(unlinked, ordered=False)

    async def deliveries_of(self, customer_id: str) -> list[Delivery]:
        cursor = self.database[DELIVERIES].find({"customer_id": str(customer_id)}).sort("_id", 1)
        return [_delivery(doc) async for doc in cursor]
