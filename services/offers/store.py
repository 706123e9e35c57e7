"""Where offers keeps its state: the port the service uses, and how it opens.

The customers' read model (what the rules look at), the offers and the rejected redemptions.
Two adapters hold one contract (tests/integration/test_offers_store.py): `store_sqlite.py`
and `store_mongo.py`. Reads and writes are batch-sized: one `load` and one `apply` per Kafka
batch; the calendar queries page through an index.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from services.offers.domain import Changes, CustomerQuery, OfferRecord, Snapshot
from shared.events import RedemptionRejected
from shared.settings import StoreSettings
from shared.storage import open_store


class OffersRepository(Protocol):
    """What the offers service (and the right-of-access export) asks of its store."""

    async def load(self, customer_ids: Collection[str], codes: Collection[str]) -> Snapshot:
        """The customers named, all their offers, and the offers with the codes named."""
        ...

    async def apply(self, changes: Changes) -> None:
        """Persist a batch's changes atomically (SQLite) or in one unordered bulk per collection
        (MongoDB). Idempotent: new offers are inserted only if absent, state changes apply only
        to offers still in the state they leave."""
        ...

    async def customers_for_day(
        self, query: CustomerQuery, *, after: str | None, limit: int
    ) -> Snapshot:
        """A page (by customer id, after `after`) of the customers a calendar query finds, with
        all their offers."""
        ...

    async def offers_to_expire(
        self, day: dt.date, *, after: str | None, limit: int
    ) -> list[OfferRecord]:
        """A page (by offer id) of issued offers whose last day is before `day`, and of those
        expired on `day` (to republish after a crash)."""
        ...

    async def offers_of(self, customer_id: str) -> list[OfferRecord]:
        """All the customer's offers, in any state, by first valid day then offer id."""
        ...

    async def rejections(self, customer_id: str) -> list[RedemptionRejected]:
        """The customer's rejected redemptions, by rejection id."""
        ...

    async def close(self) -> None: ...


def open_repository(store: StoreSettings) -> AbstractAsyncContextManager[OffersRepository]:
    """The repository `CRM_STORE_URL` names, closed when the context ends."""
    # Imported here: the adapters import this module (the port and its helpers).
    from services.offers.store_mongo import MongoOffersRepository
    from services.offers.store_sqlite import SqliteOffersRepository

    return open_store(store, sqlite=SqliteOffersRepository.open, mongo=MongoOffersRepository.open)


def iso(day: dt.date | None) -> str | None:
    """A day as stored by both adapters: ISO text, which sorts and compares like the day."""
    return day.isoformat() if day is not None else None


def date_of(text: str | None) -> dt.date | None:
    return dt.date.fromisoformat(text) if text else None
