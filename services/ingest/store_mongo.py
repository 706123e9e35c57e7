"""Ingest's state in MongoDB: `ingest_seen` (event keys, TTL-indexed) and `ingest_cards` (links)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping
from typing import ClassVar

from pymongo import AsyncMongoClient, IndexModel, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from services.ingest.settings import DEFAULT_DEDUP_DAYS
from shared.storage import Indexes, MongoStore
from shared.storage.mongo import Document, duplicate_keys_only

SEEN = "ingest_seen"
CARDS = "ingest_cards"
DAY_SECONDS = 86_400


def seen_ttl(dedup_days: int) -> IndexModel:
    """MongoDB drops an event key `dedup_days` after it was seen, between start-up prunes."""
    return IndexModel("seen_at", expireAfterSeconds=dedup_days * DAY_SECONDS, name="seen_ttl")


class MongoIngestRepository(MongoStore):
    """One document per seen key (`_id` = key) and per card (`_id` = card id); one bulk write
    per collection and batch. Every value is passed as a string, so it is only ever data."""

    SERVICE = "ingest"
    INDEXES: ClassVar[Indexes] = {
        SEEN: (seen_ttl(DEFAULT_DEDUP_DAYS),),
        CARDS: (IndexModel("customer_id", name="cards_by_customer"),),
    }

    def __init__(
        self,
        database: AsyncDatabase[Document],
        *,
        client: AsyncMongoClient[Document] | None = None,
        dedup_days: int = DEFAULT_DEDUP_DAYS,
    ) -> None:
        super().__init__(database, client=client)
        self._dedup_days = dedup_days

    def indexes(self) -> Indexes:
        """The TTL index keeps event keys for `dedup_days` (`CRM_DEDUP_DAYS`)."""
        return {**self.INDEXES, SEEN: (seen_ttl(self._dedup_days),)}

    async def seen(self, keys: Collection[str]) -> set[str]:
        ids = [str(key) for key in keys]
        if not ids:
            return set()
        cursor = self.database[SEEN].find({"_id": {"$in": ids}}, {"_id": 1})
        return {doc["_id"] async for doc in cursor}

    async def customers_of_cards(self, cards: Collection[str]) -> dict[str, str]:
        ids = [str(card) for card in cards]
        if not ids:
            return {}
        cursor = self.database[CARDS].find({"_id": {"$in": ids}})
        return {doc["_id"]: doc["customer_id"] async for doc in cursor}

    async def cards_of_customer(self, customer_id: str) -> list[str]:
        cursor = self.database[CARDS].find({"customer_id": str(customer_id)}, {"_id": 1})
        return [doc["_id"] async for doc in cursor]

    async def record(
        self, keys: Collection[str], links: Mapping[str, str], at: dt.datetime
    ) -> None:
        # Links first: a key recorded without its link would hide the link on a retry.
        if links:
            await self.database[CARDS].bulk_write(
                [
                    UpdateOne(
                        {"_id": str(card)}, {"$set": {"customer_id": str(customer)}}, upsert=True
                    )
                    for card, customer in links.items()
                ],
                ordered=False,
            )
        if keys:
            try:
                await self.database[SEEN].bulk_write(
                    [
                        UpdateOne({"_id": str(key)}, {"$setOnInsert": {"seen_at": at}}, upsert=True)
                        for key in keys
                    ],
                    ordered=False,
                )
            except BulkWriteError as exc:
                # Concurrent upserts of one key: the key is there, which is all we wanted.
                if not duplicate_keys_only(exc):
                    raise

    async def forget_before(self, cutoff: dt.datetime) -> int:
        result = await self.database[SEEN].delete_many({"seen_at": {"$lt": cutoff}})
        return int(result.deleted_count)
