"""Where the notifier keeps its contacts and deliveries: the port the service uses, and how it opens.

Batches in, batches out: a few reads per batch, one write (`apply`) per batch, in one
transaction (SQLite, `store_sqlite.py`) or one unordered bulk write per collection (MongoDB,
`store_mongo.py`). Both adapters hold one contract (tests/integration/test_notifier_store.py).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from services.notifier.domain import Contact, Delivery, erase_delivery
from shared.settings import StoreSettings
from shared.storage import open_store


@dataclass(slots=True)
class StoreChanges:
    """Everything one batch (or one poll) writes."""

    contacts: Sequence[Contact] = ()
    erased: Collection[str] = ()
    """Customer ids whose contact is deleted (right to be forgotten)."""
    deliveries: Sequence[Delivery] = ()
    bounced: Sequence[tuple[str, str]] = field(default_factory=list)
    """(customer id, address): that contact's address bounced, if it is still the same one."""
    forgotten: Collection[str] = ()
    """Erased customers whose deliveries (all, sent ones too) are unlinked after the batch's
    writes: see `unlinked_delivery`."""

    def __bool__(self) -> bool:
        return bool(
            self.contacts or self.erased or self.deliveries or self.bounced or self.forgotten
        )


@dataclass(frozen=True, slots=True)
class SendBudget:
    """The sending budget every notifier instance draws from: at most `per_window` e-mails
    started in each window of `window_s` seconds, by all instances sharing the store together.

    Windows are aligned on the Unix epoch in UTC, so instances whose clocks agree (NTP) agree
    on the window without talking to each other; the store holds what each window has spent.
    """

    per_window: int
    window_s: float

    @classmethod
    def of(cls, *, rate_per_s: float, window_s: float) -> SendBudget | None:
        """The budget of a sending rate (None: unlimited)."""
        if rate_per_s <= 0:
            return None
        return cls(per_window=max(1, math.floor(rate_per_s * window_s)), window_s=window_s)

    def window(self, now: dt.datetime) -> dt.datetime:
        """Start of the window `now` falls in."""
        seconds = now.timestamp()
        return dt.datetime.fromtimestamp(seconds - seconds % self.window_s, dt.UTC)

    def window_key(self, now: dt.datetime) -> str:
        """The window's id in the store: its start as fixed-width UTC text."""
        return self.window(now).isoformat(timespec="microseconds")

    def next_window(self, now: dt.datetime) -> dt.datetime:
        return self.window(now) + dt.timedelta(seconds=self.window_s)


_ERROR_CODE = re.compile(r"^[a-z_]{1,64}$")


def unlinked_delivery(delivery: Delivery, token: str) -> Delivery:
    """An erased customer's delivery as it is kept: its state, offer id and Message-ID (one
    offer, one e-mail, whatever is redelivered), under a random token instead of the customer,
    without the offer's content and without an error text that may quote the address (an
    error code such as `offer_revoked` stays). One not sent yet is never sent."""
    if not delivery.is_final:
        delivery = erase_delivery(delivery, delivery.updated_at)
    error = delivery.last_error
    return replace(
        delivery,
        customer_id=token,
        offer=None,
        not_before=None,
        last_error=error if error is not None and _ERROR_CODE.match(error) else None,
    )


class NotifierRepository(Protocol):
    """What the notifier keeps: contacts and one delivery per offer id."""

    async def get_contacts(self, customer_ids: Collection[str]) -> dict[str, Contact]:
        """Known contacts among these customers."""
        ...

    async def get_deliveries(self, offer_ids: Collection[str]) -> dict[str, Delivery]:
        """Stored deliveries of these offers."""
        ...

    async def open_deliveries(self, customer_ids: Collection[str]) -> list[Delivery]:
        """Not-yet-final deliveries (waiting_contact, pending, sending) of these customers,
        oldest first."""
        ...

    async def claim_due(
        self,
        now: dt.datetime,
        limit: int,
        lease: dt.timedelta,
        budget: SendBudget | None = None,
    ) -> list[Delivery]:
        """Take the deliveries due for sending, oldest first, for this instance only: `pending`
        ones whose `not_before` has passed, and `sending` ones untouched for `lease` (left by a
        crash). Atomically marks each `sending` now, so that another instance's poller sharing
        the store neither takes it nor mistakes a send in flight for a crash until the lease
        has passed. Returns the deliveries as they were before the claim.

        With a `budget`, takes no more than is left of it in `now`'s window and spends one
        unit per delivery taken, atomically with the claim: pollers of every instance
        together never take more than the budget in one window."""
        ...

    async def take_send_budget(self, now: dt.datetime, wanted: int, budget: SendBudget) -> int:
        """Spend up to `wanted` units of the budget of `now`'s window, atomically; returns
        how many were granted (0: spent, wait for the next window)."""
        ...

    async def send_budget_left(self, now: dt.datetime, budget: SendBudget) -> int:
        """What is left of the budget of `now`'s window (a hint: others may spend it)."""
        ...

    async def apply(self, changes: StoreChanges) -> None:
        """Write a batch's changes at once."""
        ...

    async def deliveries_of(self, customer_id: str) -> list[Delivery]:
        """Every delivery still linked to this customer, by offer id (right of access)."""
        ...

    async def close(self) -> None: ...


async def customer_export(repository: NotifierRepository, customer_id: str) -> dict[str, Any]:
    """What the notifier keeps of one customer (right of access): the contact and every
    delivery with its offer and outcome."""
    contact = (await repository.get_contacts([customer_id])).get(customer_id)
    return {"contact": contact, "deliveries": await repository.deliveries_of(customer_id)}


def open_repository(store: StoreSettings) -> AbstractAsyncContextManager[NotifierRepository]:
    """The repository `CRM_STORE_URL` names, closed when the context ends."""
    # Imported here: the adapters import this module's types.
    from services.notifier.store_mongo import MongoNotifierRepository
    from services.notifier.store_sqlite import SqliteNotifierRepository

    return open_store(
        store, sqlite=SqliteNotifierRepository.open, mongo=MongoNotifierRepository.open
    )
