"""Ingest's state: event ids already seen (duplicate detection) and which customer each card feeds.

The card table also maps each lead (a sign-up without a card: its id is `l-` and the keyed
hash of its e-mail address) to the customer it feeds: itself, or the card customer that took
its address (`services.ingest.service`).

The port the service uses, and how it opens. Two adapters hold one contract
(tests/integration/test_ingest_store.py): `store_sqlite.py` and `store_mongo.py`. Both answer
per batch, never per message.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Collection, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from services.ingest.settings import IngestSettings
from shared.privacy import is_lead
from shared.settings import StoreSettings
from shared.storage import open_store


class IngestRepository(Protocol):
    """What ingest keeps between batches."""

    async def seen(self, keys: Collection[str]) -> set[str]:
        """The subset of `keys` recorded before."""
        ...

    async def customers_of_cards(self, cards: Collection[str]) -> dict[str, str]:
        """card id -> customer id, for the cards that are linked or known."""
        ...

    async def cards_of_customer(self, customer_id: str) -> list[str]:
        """Card ids currently feeding a customer."""
        ...

    async def record(
        self, keys: Collection[str], links: Mapping[str, str], at: dt.datetime
    ) -> None:
        """Remember the event keys and the card -> customer links, in one durable step."""
        ...

    async def forget_before(self, cutoff: dt.datetime) -> int:
        """Forget event keys seen before `cutoff`; returns how many."""
        ...

    async def close(self) -> None: ...


async def customer_export(repository: IngestRepository, customer_id: str) -> dict[str, Any]:
    """What ingest keeps of one customer (right of access): the card ids linked to it, and the
    leads (e-mail addresses' keyed hashes) that feed it."""
    keys = await repository.cards_of_customer(customer_id)
    return {
        "linked_card_ids": sorted(key for key in keys if not is_lead(key)),
        "lead_ids": sorted(key for key in keys if is_lead(key)),
    }


def open_repository(
    store: StoreSettings, *, dedup_days: int | None = None
) -> AbstractAsyncContextManager[IngestRepository]:
    """The repository `CRM_STORE_URL` names, closed when the context ends.

    `dedup_days` (default: `CRM_DEDUP_DAYS`) is how long MongoDB's TTL index keeps event ids;
    every opener reads the same setting, so a tool opening the store declares the same index
    as the service.
    """
    from services.ingest.store_mongo import MongoIngestRepository
    from services.ingest.store_sqlite import SqliteIngestRepository

    days = dedup_days if dedup_days is not None else IngestSettings().dedup_days
    return open_store(
        store,
        sqlite=SqliteIngestRepository.open,
        mongo=functools.partial(MongoIngestRepository.open, dedup_days=days),
    )
