"""The reports' facts in MongoDB: one document per fact, `_id` = `kind:id`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pymongo import DeleteOne, IndexModel, ReplaceOne, UpdateOne

from services.reports.domain import Facts
from services.reports.store import Fact, erased_ids, facts_of, linked_ids, stored_row
from shared.erasure import erasure_mark, unlinked_token
from shared.storage import Indexes, MongoStore

FACTS = "reports_facts"


def _key(fact: Fact) -> str:
    return f"{fact.kind}:{fact.id}"


def _document(fact: Fact) -> dict[str, Any]:
    kind, fact_id, customer_id, doc = stored_row(fact)
    return {"kind": kind, "id": fact_id, "customer_id": customer_id, "doc": doc}


class MongoReportsRepository(MongoStore):
    """Collection `reports_facts`. A batch is two ordered bulk writes: the facts written once,
    then, in batch order, the latest states (deliveries, revocations) and the revocations that
    re-issues clear; then the facts of erased customers are unlinked."""

    SERVICE = "reports"

    # The default index name (`customer_id_1`) is the one existing databases already have.
    INDEXES: ClassVar[Indexes] = {FACTS: (IndexModel("customer_id"),)}

    async def add(self, facts: Sequence[Fact]) -> None:
        collection = self.database[FACTS]
        once = [n for n, f in enumerate(facts) if not f.latest_wins]
        inserted: set[int] = set()
        if once:
            result = await collection.bulk_write(
                [
                    UpdateOne(
                        {"_id": _key(facts[n])}, {"$setOnInsert": _document(facts[n])}, upsert=True
                    )
                    for n in once
                ],
                ordered=True,
            )
            # Which facts were new: an issued offer whose campaign fact was there before is a
            # re-issue. (`upserted_ids` is keyed by the position of the write in the bulk.)
            inserted = {once[position] for position in result.upserted_ids or {}}
        latest: list[ReplaceOne[Any] | DeleteOne] = []
        for n, f in enumerate(facts):
            if f.latest_wins:
                latest.append(ReplaceOne({"_id": _key(f)}, _document(f), upsert=True))
            elif f.issues and n not in inserted:
                latest.append(DeleteOne({"_id": f"revocation:{f.id}"}))
        if latest:
            await collection.bulk_write(latest, ordered=True)
        # Customers erased now, and customers erased before whose facts came now: unlinked.
        unlink = set(erased_ids(facts))
        linked = linked_ids(facts)
        if linked:
            cursor = collection.find({"kind": "erased", "id": {"$in": sorted(linked)}}, {"id": 1})
            unlink |= {linked[d["id"]] async for d in cursor}
        for customer_id in sorted(unlink):
            # The customers a card link merged into this one go with it, under its token;
            # their later facts are recognised by their own marks.
            aliases = {"kind": "alias", "customer_id": customer_id}
            merged = [d["id"] async for d in collection.find(aliases, {"id": 1})]
            token = unlinked_token()
            kinds = {"$nin": ["erased", "alias"]}
            for who in (customer_id, *merged):
                await collection.update_many(
                    {"customer_id": who, "kind": kinds, "doc.c": {"$exists": True}},
                    {"$set": {"customer_id": token, "doc.c": token}},
                )
                await collection.update_many(
                    {"customer_id": who, "kind": kinds}, {"$set": {"customer_id": token}}
                )
            for mark in map(erasure_mark, merged):
                document: dict[str, Any] = {
                    "kind": "erased",
                    "id": mark,
                    "customer_id": None,
                    "doc": {},
                }
                await collection.update_one(
                    {"_id": f"erased:{mark}"}, {"$setOnInsert": document}, upsert=True
                )
            await collection.delete_many(aliases)

    async def facts_of_customer(self, customer_id: str) -> list[Fact]:
        if not isinstance(customer_id, str):  # a dict such as {"$gt": ""} stays out of the filter
            raise TypeError("customer_id must be a string")
        cursor = self.database[FACTS].find({"customer_id": customer_id}).sort("_id", 1)
        return [Fact(d["kind"], d["id"], d["customer_id"], d["doc"]) async for d in cursor]

    async def load(self) -> Facts:
        cursor = self.database[FACTS].find({}, {"kind": 1, "id": 1, "doc": 1})
        return facts_of([(d["kind"], d["id"], d["doc"]) async for d in cursor])
