"""The key vault in MongoDB: its own collections, so each service's user gets exactly its
access (ingest writes, profiles and the notifier read)."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Collection, Mapping
from typing import Any, ClassVar

from pymongo import ASCENDING, IndexModel
from pymongo.errors import BulkWriteError

from shared.storage import Indexes, MongoStore
from shared.vault import DataKey

DUPLICATE_KEY = 11000


def _later(a: dt.datetime | None, b: dt.datetime) -> dt.datetime:
    return b if a is None or b > a else a


class MongoVault(MongoStore):
    """Collections `vault_keys` (`_id` the key id, a unique index on the customer: one live
    key each) and `vault_erasures` (`_id` the customer id). Their own collections, so each
    service's MongoDB user can be given exactly its access: ingest writes, others read."""

    SERVICE = "vault"
    INDEXES: ClassVar[Indexes] = {
        "vault_keys": [IndexModel([("customer_id", ASCENDING)], unique=True)],
        "vault_erasures": [],
    }

    @staticmethod
    def _key(doc: Mapping[str, Any]) -> DataKey:
        return DataKey(
            str(doc["customer_id"]), str(doc["_id"]), bytes(doc["key"]), doc.get("created_at")
        )

    async def keys(self, kids: Collection[str]) -> dict[str, DataKey]:
        if not kids:
            return {}
        cursor = self.database["vault_keys"].find({"_id": {"$in": [str(k) for k in kids]}})
        return {str(doc["_id"]): self._key(doc) async for doc in cursor}

    async def current(self, customer_ids: Collection[str]) -> dict[str, DataKey]:
        if not customer_ids:
            return {}
        ids = [str(c) for c in customer_ids]
        cursor = self.database["vault_keys"].find({"customer_id": {"$in": ids}})
        return {str(doc["customer_id"]): self._key(doc) async for doc in cursor}

    async def create(self, customer_ids: Collection[str], at: dt.datetime) -> dict[str, DataKey]:
        if not customer_ids:
            return {}
        have = await self.current(customer_ids)
        fresh = [DataKey.new(str(c)) for c in set(customer_ids) if str(c) not in have]
        if fresh:
            docs = [
                {"_id": k.kid, "customer_id": k.customer_id, "key": k.key, "created_at": at}
                for k in fresh
            ]
            with contextlib.suppress(BulkWriteError):  # another instance was first: re-read
                await self.database["vault_keys"].insert_many(docs, ordered=False)
            have = await self.current(customer_ids)
        return have

    async def erase(self, erasures: Mapping[str, dt.datetime]) -> int:
        if not erasures:
            return 0
        ids = [str(c) for c in erasures]
        result = await self.database["vault_erasures"].find({"_id": {"$in": ids}}).to_list()
        known = {str(doc["_id"]): doc["erased_at"] for doc in result}
        gone = await self.database["vault_keys"].delete_many({"customer_id": {"$in": ids}})
        for cid, at in erasures.items():
            latest = _later(known.get(str(cid)), at)
            await self.database["vault_erasures"].update_one(
                {"_id": str(cid)}, {"$set": {"erased_at": latest}}, upsert=True
            )
        return int(gone.deleted_count)

    async def erased_at(self, customer_ids: Collection[str]) -> dict[str, dt.datetime]:
        if not customer_ids:
            return {}
        ids = [str(c) for c in customer_ids]
        cursor = self.database["vault_erasures"].find({"_id": {"$in": ids}})
        return {str(doc["_id"]): doc["erased_at"] async for doc in cursor}

    async def restore(self, keys: Collection[DataKey]) -> int:
        if not keys:
            return 0
        docs = [
            {
                "_id": k.kid,
                "customer_id": k.customer_id,
                "key": k.key,
                "created_at": k.created_at or dt.datetime.now(dt.UTC),
            }
            for k in keys
        ]
        try:
            result = await self.database["vault_keys"].insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            # A key id or a customer already there (duplicate key): left as it is.
            if any(error.get("code") != DUPLICATE_KEY for error in exc.details["writeErrors"]):
                raise
            return int(exc.details["nInserted"])
        return len(result.inserted_ids)
