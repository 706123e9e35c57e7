"""Where offers keeps its state: the port the service, the till and the look-ups use.

- One ledger document per customer (its facts and decisions, `services/offers/ledger.py`),
  with the columns a calendar day looks customers up by (birthday, anniversary, when a
  win-back is due), guarded by a version like the profiles;
- the offers (by id, by coupon code, by state and last valid day), and their e-mail outcome;
- which customer each card feeds (the till finds a customer by card);
- the calendar days completed, and the till's short reservations of coupons;
- the campaigns (each with its history, as on `crm.campaigns`) and what their budgets spent.

Two adapters hold one contract (tests/integration/test_offers_store.py): `store_sqlite.py`
and `store_mongo.py`.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from services.offers.domain import OfferRecord
from services.offers.engine import Days
from services.offers.ledger import Ledger
from shared.campaigns import Budget, CampaignChanged, CampaignCounts
from shared.settings import StoreSettings
from shared.storage import open_store


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """A ledger and the columns it is found by on a calendar day."""

    ledger: Ledger
    birth_md: str | None = None
    anniversary_date: dt.date | None = None
    win_back_due: dt.date | None = None
    last_fact_at: dt.datetime | None = None
    """Event time of its latest checkout or segment entry (a campaign changed at a time finds
    the customers whose triggers came after it)."""


@dataclass(frozen=True, slots=True)
class Spend:
    """One redemption charged to a campaign's budget (idempotent by offer id)."""

    campaign_id: str
    offer_id: str
    customer_id: str
    store_id: str
    day: dt.date
    discount: Decimal


@dataclass(frozen=True, slots=True)
class Erasure:
    """What an erasure changes in the store (`services/offers/erasure.py` made it): the
    customer's ledger, offers, cards, reservations and budget charges go; what stays of them
    for the figures is written under a random token."""

    customer_id: str
    version: int
    """The version the ledger was read with (0: never stored); another one is a `Conflict`."""
    aliases: tuple[str, ...]
    """The customers merged into it (their ledgers, offers and cards go too)."""
    codes: tuple[str, ...]
    """The old coupon codes (their till reservations end)."""
    offers: tuple[OfferRecord, ...]
    """The unlinked offers (new ids, the token as customer)."""
    ledger: Ledger | None
    """The unlinked decisions, under the token."""
    offer_ids: Mapping[str, str]
    """Old -> new offer id (a budget's charges follow their offer)."""
    token: str

    @property
    def customer_ids(self) -> list[str]:
        return [self.customer_id, *self.aliases]


@dataclass(slots=True)
class Changes:
    """What one batch writes, at once."""

    ledgers: list[LedgerRow] = field(default_factory=list)
    """Each with its version one above the stored one (or 1 when new)."""
    offers: list[OfferRecord] = field(default_factory=list)
    days: Days | None = None
    released: set[str] = field(default_factory=set)
    """Coupon codes a checkout listed: their till reservations end."""
    erasures: list[Erasure] = field(default_factory=list)
    """Customers erased: written after the rest, in the same transaction (SQLite)."""

    def __bool__(self) -> bool:
        return bool(self.ledgers or self.offers or self.days or self.released or self.erasures)


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
        it was read with raises `shared.errors.Conflict` and nothing is written. An erasure
        deletes the customer's (and its aliases') ledgers, offers and cards, writes the
        unlinked offers and decisions, keeps the customer's erasure mark, and (SQLite)
        checkpoints the WAL."""
        ...

    async def erased(self, customer_ids: Collection[str]) -> set[str]:
        """Those of these customers that were erased (by their erasure marks)."""
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

    async def campaigns(self) -> dict[str, CampaignChanged]:
        """Every campaign as last saved, by id."""
        ...

    async def save_campaign(self, record: CampaignChanged) -> bool:
        """Keep a campaign's record unless the stored one knows more history; whether it
        was written."""
        ...

    async def spend(self, spend: Spend, budget: Budget) -> bool:
        """Charge a redemption to its campaign's budget: True when it fits every limit (or
        was charged before), False when it would overspend one. Atomic: however many lanes
        redeem at once, no limit is ever exceeded."""
        ...

    async def budget_usage(self) -> dict[str, tuple[int, Decimal]]:
        """Campaign id -> (redemptions, discount money) charged so far."""
        ...

    async def customers_since(
        self, moment: dt.datetime, *, after: str | None, limit: int
    ) -> list[str]:
        """A page (by customer id) of the customers with a checkout or segment entry at or
        after `moment`. Aliases never."""
        ...

    async def ledger_page(self, *, after: str | None, limit: int) -> list[Ledger]:
        """A page of every ledger, by customer id."""
        ...

    async def set_win_back_due(self, dues: Mapping[str, dt.date | None]) -> None:
        """Update when each customer may next be due an inactivity offer (after the
        campaigns changed)."""
        ...

    async def campaign_counts(self) -> dict[tuple[str, str | None], CampaignCounts]:
        """(campaign id, variant) -> what it did: offers by state, discount given, held out.
        Offers from before campaigns count for the built-in campaign of their kind."""
        ...

    async def close(self) -> None: ...


def open_repository(store: StoreSettings) -> AbstractAsyncContextManager[OffersRepository]:
    """The repository `CRM_STORE_URL` names, closed when the context ends."""
    # Imported here: the adapters import this module (the port and its helpers).
    from services.offers.store_mongo import MongoOffersRepository
    from services.offers.store_sqlite import SqliteOffersRepository

    return open_store(store, sqlite=SqliteOffersRepository.open, mongo=MongoOffersRepository.open)


async def customer_export(repository: OffersRepository, customer_id: str) -> dict[str, Any]:
    """What offers keeps of one customer (right of access): the offers in every state with
    their redemption and e-mail outcome, and every decision taken for them (issued, held out,
    not made and why) with the redemptions and rejections of the codes they listed."""
    ledger = (await repository.ledgers([customer_id])).get(customer_id)
    return {
        "offers": await repository.offers_of(customer_id),
        "decisions": sorted(ledger.decisions.values(), key=lambda d: (d.at, d.key))
        if ledger
        else [],
        "redemptions": sorted(ledger.redemptions.values(), key=lambda r: (r.at, r.key))
        if ledger
        else [],
    }


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


_BUILTIN_OF_KIND = {
    "frequent_item": "frequent-item",
    "birthday": "birthday",
    "anniversary": "anniversary",
    "win_back": "win-back",
}


def campaign_of(campaign_id: str | None, kind: str) -> str:
    """An offer's or decision's campaign: its own, or (from before campaigns) the built-in
    campaign of its kind."""
    return campaign_id or _BUILTIN_OF_KIND.get(kind, kind)


def tally(
    offers: Iterable[tuple[str | None, str, str | None, str, str | None]],
    held_out: Iterable[tuple[str | None, str, str | None]],
) -> dict[tuple[str, str | None], CampaignCounts]:
    """Campaign counts from (campaign id, kind, variant, state, discount given) per offer and
    (campaign id, kind, variant) per held-out decision, as both adapters read them."""
    counts: dict[tuple[str, str | None], dict[str, Any]] = {}

    def slot(campaign_id: str | None, kind: str, variant: str | None) -> dict[str, Any]:
        key = (campaign_of(campaign_id, kind), variant)
        return counts.setdefault(key, {"discount_given": Decimal(0)})

    for campaign_id, kind, variant, state, discount in offers:
        entry = slot(campaign_id, kind, variant)
        if state == "revoked":
            entry["revoked"] = entry.get("revoked", 0) + 1
            continue
        entry["issued"] = entry.get("issued", 0) + 1
        if state in ("redeemed", "expired"):
            entry[state] = entry.get(state, 0) + 1
        if discount:
            entry["discount_given"] += Decimal(discount)
    for campaign_id, kind, variant in held_out:
        entry = slot(campaign_id, kind, variant)
        entry["held_out"] = entry.get("held_out", 0) + 1
    return {key: CampaignCounts(**values) for key, values in sorted(counts.items(), key=str)}
