"""The reports' facts in MongoDB: one document per fact, `_id` = `kind:id`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pymongo import IndexModel, ReplaceOne, UpdateOne

from services.reports.domain import Facts
from services.reports.store import Fact, erased_ids, facts_of
from shared.storage import Indexes, MongoStore

FACTS = "reports_facts"


class MongoReportsRepository(MongoStore):
    """Collection `reports_facts`; one ordered bulk write per batch, so the latest state of a
    delivery wins, then the erased customers' purchases are unlinked."""

    # The default index name (`customer_id_1`) is the one existing databases already have.
    INDEXES: ClassVar[Indexes] = {FACTS: (IndexModel("customer_id"),)}

    async def add(self, facts: Sequence[Fact]) -> None:
        operations: list[ReplaceOne[Any] | UpdateOne] = []
        for f in facts:
            key = f"{f.kind}:{f.id}"
            document = {"kind": f.kind, "id": f.id, "customer_id": f.customer_id, "doc": f.doc}
            if f.kind == "delivery":
                operations.append(ReplaceOne({"_id": key}, document, upsert=True))
            else:
                operations.append(UpdateOne({"_id": key}, {"$setOnInsert": document}, upsert=True))
        collection = self.database[FACTS]
        if operations:
            await collection.bulk_write(operations, ordered=True)
        erased = erased_ids(facts)
        if erased:
            await collection.update_many(
                {"kind": "purchase", "customer_id": {"$in": erased}},
                {"$set": {"customer_id": None, "doc.c": None}},
            )

    async def load(self) -> Facts:
        cursor = self.database[FACTS].find({}, {"kind": 1, "id": 1, "doc": 1})
        return facts_of([(d["kind"], d["id"], d["doc"]) async for d in cursor])
