"""Where offers keeps its state: the port the service, the till and the look-ups use.

- One ledger document per customer (its facts and decisions, `services/offers/ledger.py`),
  with the columns a calendar day looks customers up by (birthday, anniversary, when a
  win-back is due), guarded by a version like the profiles;
- the offers (by id, by coupon code, by state and last valid day), and their e-mail outcome;
- which customer each card feeds (the till finds a customer by card);
- the calendar days completed, and the till's short reservations of coupons.

Two adapters hold one contract (tests/integration/test_offers_store.py): `store_sqlite.py`
and `store_mongo.py`.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

from services.offers.domain import OfferRecord
from services.offers.engine import Days
from services.offers.ledger import Ledger
from shared.settings import StoreSettings
from shared.storage import open_store


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """A ledger and the columns it is found by on a calendar day."""

    ledger: Ledger
    birth_md: str | None = None
    anniversary_date: dt.date | None = None
    win_back_due: dt.date | None = None


@dataclass(slots=True)
class Changes:
    """What one batch writes, at once."""

    ledgers: list[LedgerRow] = field(default_factory=list)
    """Each with its version one above the stored one (or 1 when new)."""
    offers: list[OfferRecord] = field(default_factory=list)
    days: Days | None = None
    released: set[str] = field(default_factory=set)
    """Coupon codes a checkout listed: their till reservations end."""

    def __bool__(self) -> bool:
        return bool(self.ledgers or self.offers or self.days or self.released)


class OffersRepository(Protocol):
    """What the offers service, its till API and the right-of-access export ask of the store."""

    async def ledgers(self, customer_ids: Collection[str]) -> dict[str, Ledger]:
        """The stored ledgers of these customers."""
        ...

    async def offers_of_customers(self, customer_ids: Collection[str]) -> dict[str, OfferRecord]:
        """Every offer of these customers, by offer id."""
        ...

    async def owners(self, codes: Collection[str]) -> dict[str, str]:
        """Coupon code -> customer id, for the codes that exist."""
        ...

    async def days(self) -> Days:
        """The calendar days completed so far."""
        ...

    async def candidates(
        self, day: dt.date, month_days: Sequence[str], *, after: str | None, limit: int
    ) -> list[str]:
        """A page (by customer id, after `after`) of the customers a calendar day concerns:
        born on one of `month_days`, one year after their first purchase, due a win-back, or
        with an open offer whose last valid day is before `day`. Aliases never."""
        ...

    async def save(self, changes: Changes) -> None:
        """Write a batch's changes at once; a ledger stored with another version than the one
        it was read with raises `shared.errors.Conflict` and nothing is written."""
        ...

    async def offer_by_code(self, code: str) -> OfferRecord | None: ...

    async def customer_of_card(self, card_id: str) -> str | None:
        """The customer a card feeds, as the profiles last said."""
        ...

    async def offers_of(self, customer_id: str) -> list[OfferRecord]:
        """All the customer's offers, in any state, by first valid day then offer id."""
        ...

    async def reserve(self, code: str, lane: str, until: dt.datetime, now: dt.datetime) -> bool:
        """Hold a coupon for a lane until `until`; False when another lane holds it now.
        The same lane may renew its hold. Atomic: two lanes never both hold a code."""
        ...

    async def record_deliveries(self, outcomes: Mapping[str, tuple[str, str]]) -> None:
        """offer id -> (e-mail state, Message-ID), as the notifier reported them."""
        ...

    async def decision_counts(self) -> Counter[tuple[str, str, str | None]]:
        """(kind, outcome, reason) of every decision kept, counted over all customers: what
        was issued, held out, and not made and why (the demo's summary, an ops overview)."""
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


def text(value: object, what: str) -> str:
    """Look-up values must be plain strings: a dict such as `{"$gt": ""}` is refused."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string")
    return value


def sorted_offers(offers: Collection[OfferRecord]) -> list[OfferRecord]:
    return sorted(offers, key=lambda o: (o.valid_from, o.offer_id))
