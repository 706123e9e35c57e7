"""One contract for the notifier's repositories: SQLite (file and memory) and MongoDB.

MongoDB is the SecantusDB server the suite starts (or `CRM_TEST_MONGO_URL`), opened through
`open_repository` like the service does.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from services.notifier.domain import (
    Contact,
    Delivery,
    message_id_for,
    new_delivery,
    revoked_delivery,
)
from services.notifier.store import (
    NotifierRepository,
    SendBudget,
    StoreChanges,
    open_repository,
)
from shared.events import OfferIssued, OfferRevoked
from shared.settings import StoreSettings

UTC = dt.UTC
T0 = dt.datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
async def repo(every_store: StoreSettings) -> AsyncIterator[NotifierRepository]:
    async with open_repository(every_store) as repository:
        yield repository


def offer(offer_id: str, customer_id: str = "c-1") -> OfferIssued:
    return OfferIssued.model_validate(
        {
            "offer_id": offer_id,
            "customer_id": customer_id,
            "kind": "frequent_item",
            "coupon_code": f"CPN-{offer_id}",
            "discount_percent": "12.50",
            "sku": "MILK-1L",
            "product_name": "Milk 1 l",
            "valid_from": "2026-03-02",
            "valid_until": "2026-03-16",
            "issued_at": "2026-03-02T10:00:00+00:00",
            "template": "frequent_item",
        }
    )


def contact(customer_id: str = "c-1", **changes: Any) -> Contact:
    base = Contact(
        customer_id=customer_id,
        email=f"{customer_id}@example.com",
        first_name="Ana",
        marketing_consent=True,
        home_store_id="S001",
        changed_at=T0,
    )
    return replace(base, **changes)


NO_LEASE = dt.timedelta(0)
"""A lease of zero: every `sending` delivery is taken for a crash's leftover at once."""


def delivery(
    offer_id: str, state: Any = "waiting_contact", customer_id: str = "c-1", **changes: Any
) -> Delivery:
    return replace(new_delivery(offer(offer_id, customer_id), T0), state=state, **changes)


async def test_contacts_round_trip_and_unknown_ids_are_absent(repo: NotifierRepository) -> None:
    await repo.apply(StoreChanges(contacts=[contact("c-1"), contact("c-2", email=None)]))
    found = await repo.get_contacts(["c-1", "c-2", "c-3"])
    assert found == {"c-1": contact("c-1"), "c-2": contact("c-2", email=None)}


async def test_deliveries_round_trip_with_the_offer_exact(repo: NotifierRepository) -> None:
    held = delivery("of-1", "pending", not_before=T0 + dt.timedelta(hours=8), attempts=2)
    await repo.apply(StoreChanges(deliveries=[held, delivery("of-2")]))
    found = await repo.get_deliveries(["of-1", "of-2", "of-3"])
    assert found["of-1"] == held
    assert found["of-1"].offer is not None
    assert str(found["of-1"].offer.discount_percent) == "12.50"
    assert found["of-2"].message_id == message_id_for("of-2")
    assert set(found) == {"of-1", "of-2"}


async def test_reapplying_the_same_changes_changes_nothing(repo: NotifierRepository) -> None:
    changes = StoreChanges(
        contacts=[contact()], deliveries=[delivery("of-1"), delivery("of-2", "sent")]
    )
    await repo.apply(changes)
    before = (await repo.get_contacts(["c-1"]), await repo.get_deliveries(["of-1", "of-2"]))
    await repo.apply(changes)
    after = (await repo.get_contacts(["c-1"]), await repo.get_deliveries(["of-1", "of-2"]))
    assert before == after


async def test_open_deliveries_are_the_unfinished_ones_of_the_customers(
    repo: NotifierRepository,
) -> None:
    await repo.apply(
        StoreChanges(
            deliveries=[
                delivery("of-1", "waiting_contact"),
                delivery("of-2", "pending", not_before=T0),
                delivery("of-3", "sending"),
                delivery("of-4", "sent"),
                delivery("of-5", "suppressed", last_error="no_consent"),
                delivery("of-6", "pending", customer_id="c-2", not_before=T0),
            ]
        )
    )
    found = await repo.open_deliveries(["c-1"])
    assert sorted(d.offer_id for d in found) == ["of-1", "of-2", "of-3"]
    assert await repo.open_deliveries(["c-9"]) == []


async def test_due_deliveries_are_pending_past_their_time_and_interrupted_sends(
    repo: NotifierRepository,
) -> None:
    later = T0 + dt.timedelta(hours=1)
    await repo.apply(
        StoreChanges(
            deliveries=[
                delivery("of-1", "pending", not_before=T0),
                delivery("of-2", "pending", not_before=later),
                delivery("of-3", "sending"),
                delivery("of-4", "waiting_contact"),
                delivery("of-5", "sent"),
                # Waiting for its contact past the end of its grace: not the poller's.
                delivery("of-6", "waiting_contact", not_before=T0),
            ]
        )
    )
    due = await repo.claim_due(T0, 10, NO_LEASE)
    assert sorted(d.offer_id for d in due) == ["of-1", "of-3"]
    assert len(await repo.claim_due(later, 10, NO_LEASE)) == 3
    assert len(await repo.claim_due(later, 2, NO_LEASE)) == 2


async def test_a_due_delivery_is_claimed_by_one_poller_and_a_send_in_flight_after_its_lease(
    repo: NotifierRepository,
) -> None:
    lease = dt.timedelta(minutes=5)
    await repo.apply(
        StoreChanges(
            deliveries=[
                delivery("of-1", "pending", not_before=T0),
                delivery("of-2", "sending"),  # another instance is sending it (since T0)
                delivery("of-3", "pending", not_before=T0 + dt.timedelta(hours=1)),
            ]
        )
    )
    now = T0 + dt.timedelta(minutes=1)
    first = await repo.claim_due(now, 10, lease)
    assert [(d.offer_id, d.state) for d in first] == [("of-1", "pending")]  # as it was
    # A second poller on the same store, at the same moment, takes nothing.
    assert await repo.claim_due(now, 10, lease) == []
    claimed = {d.offer_id: d for d in await repo.open_deliveries(["c-1"])}["of-1"]
    assert (claimed.state, claimed.updated_at) == ("sending", now)
    # Past the lease, a send nobody finished is a crash's leftover: taken again, once.
    late = T0 + dt.timedelta(minutes=7)
    again = await repo.claim_due(late, 10, lease)
    assert sorted(d.offer_id for d in again) == ["of-1", "of-2"]
    assert await repo.claim_due(late, 10, lease) == []


async def test_a_revoked_delivery_without_its_offer_round_trips(repo: NotifierRepository) -> None:
    revoked = revoked_delivery(
        OfferRevoked(
            offer_id="of-1",
            customer_id="c-1",
            kind="birthday",
            coupon_code="CPN-of-1",
            reason="consent",
            revoked_at=T0,
        ),
        T0,
    )
    await repo.apply(StoreChanges(deliveries=[revoked]))
    assert await repo.get_deliveries(["of-1"]) == {"of-1": revoked}
    assert await repo.open_deliveries(["c-1"]) == []
    # The offer arriving later is kept with it; it stays final.
    seen = replace(revoked, offer=offer("of-1"))
    await repo.apply(StoreChanges(deliveries=[seen]))
    assert await repo.get_deliveries(["of-1"]) == {"of-1": seen}
    assert await repo.claim_due(T0 + dt.timedelta(days=1), 10, NO_LEASE) == []


async def test_erasure_deletes_the_contact(repo: NotifierRepository) -> None:
    await repo.apply(StoreChanges(contacts=[contact("c-1"), contact("c-2")]))
    await repo.apply(StoreChanges(erased=["c-1"]))
    assert set(await repo.get_contacts(["c-1", "c-2"])) == {"c-2"}


async def test_an_erased_customers_deliveries_keep_no_content_and_no_link(
    repo: NotifierRepository,
) -> None:
    sent = delivery("of-1", "sent", last_error=None)
    bounced = delivery("of-2", "bounced", last_error="550 5.1.1 <c-1@example.com> unknown")
    revoked = delivery("of-3", "suppressed", last_error="offer_revoked")
    other = delivery("of-4", "sent", customer_id="c-2")
    waiting = delivery("of-5", "pending", not_before=T0 + dt.timedelta(hours=1))
    stored = [sent, bounced, other, waiting]
    await repo.apply(StoreChanges(contacts=[contact("c-1")], deliveries=stored))
    await repo.apply(StoreChanges(erased=["c-1"], deliveries=[revoked], forgotten=["c-1"]))
    assert await repo.deliveries_of("c-1") == []
    assert await repo.get_contacts(["c-1"]) == {}
    kept = await repo.get_deliveries(["of-1", "of-2", "of-3", "of-5"])
    # One offer, one e-mail: the offer id, its Message-ID and its outcome stay, nothing else;
    # one not sent yet never will be.
    assert {k: (d.state, d.message_id) for k, d in kept.items()} == {
        **{d.offer_id: (d.state, d.message_id) for d in (sent, bounced, revoked)},
        "of-5": ("suppressed", waiting.message_id),
    }
    assert [d.offer for d in kept.values()] == [None, None, None, None]
    errors = [kept[k].last_error for k in ("of-1", "of-2", "of-3", "of-5")]
    assert errors == [None, None, "offer_revoked", "customer_erased"]
    assert await repo.claim_due(T0 + dt.timedelta(days=1), 10, NO_LEASE) == []
    (token,) = {d.customer_id for d in kept.values()}
    assert token.startswith("erased-")
    assert await repo.deliveries_of("c-2") == [other]


async def test_bounce_marks_the_contact_only_while_the_address_is_the_same(
    repo: NotifierRepository,
) -> None:
    await repo.apply(StoreChanges(contacts=[contact("c-1"), contact("c-2")]))
    await repo.apply(StoreChanges(bounced=[("c-1", "c-1@example.com"), ("c-2", "old@example.com")]))
    found = await repo.get_contacts(["c-1", "c-2"])
    assert found["c-1"].bounced
    assert not found["c-2"].bounced


async def test_query_like_ids_are_plain_data(repo: NotifierRepository) -> None:
    await repo.apply(StoreChanges(contacts=[contact("c-1")], deliveries=[delivery("of-1")]))
    hostile = ['{"$gt": ""}', "' OR 1=1 --", "*"]
    assert await repo.get_contacts(hostile) == {}
    assert await repo.get_deliveries(hostile) == {}
    assert await repo.open_deliveries(hostile) == []


async def test_large_id_sets_are_read_whole(repo: NotifierRepository) -> None:
    many = [delivery(f"of-{i}") for i in range(600)]
    await repo.apply(StoreChanges(deliveries=many))
    found = await repo.get_deliveries([d.offer_id for d in many])
    assert len(found) == 600


# ---------------------------------------------------------------- the shared sending budget

BUDGET = SendBudget(per_window=20, window_s=1.0)


@pytest.fixture
async def two_pollers(
    every_store: StoreSettings,
) -> AsyncIterator[tuple[NotifierRepository, NotifierRepository]]:
    """Two instances' repositories on one store (an in-memory store cannot be shared: there
    both pollers use the one repository)."""
    async with open_repository(every_store) as first:
        if every_store.store_url == "memory://":
            yield first, first
            return
        async with open_repository(every_store) as second:
            yield first, second


async def test_two_pollers_in_one_window_together_claim_no_more_than_the_budget(
    two_pollers: tuple[NotifierRepository, NotifierRepository],
) -> None:
    first, second = two_pollers
    await first.apply(
        StoreChanges(
            deliveries=[delivery(f"of-{i:02d}", "pending", not_before=T0) for i in range(50)]
        )
    )
    now = T0 + dt.timedelta(seconds=5, milliseconds=100)
    claims = await asyncio.gather(
        first.claim_due(now, 15, NO_LEASE, BUDGET),
        second.claim_due(now + dt.timedelta(milliseconds=500), 15, NO_LEASE, BUDGET),
    )
    ids = [d.offer_id for claim in claims for d in claim]
    assert len(ids) == BUDGET.per_window
    assert len(set(ids)) == len(ids)  # each delivery to one poller
    # The window's budget is spent, for claims and for sends from a batch alike.
    assert await first.claim_due(now, 15, NO_LEASE, BUDGET) == []
    assert await second.take_send_budget(now, 1, BUDGET) == 0
    assert await first.send_budget_left(now, BUDGET) == 0
    # The next window has a budget of its own.
    later = now + dt.timedelta(seconds=1)
    assert await second.send_budget_left(later, BUDGET) == BUDGET.per_window
    assert len(await second.claim_due(later, 15, NO_LEASE, BUDGET)) == 15
    assert len(await first.claim_due(later, 15, NO_LEASE, BUDGET)) == 5


async def test_a_claim_spends_only_what_it_takes_and_without_a_budget_spends_nothing(
    repo: NotifierRepository,
) -> None:
    await repo.apply(
        StoreChanges(deliveries=[delivery(f"of-{i}", "pending", not_before=T0) for i in range(3)])
    )
    lease = dt.timedelta(hours=1)
    assert len(await repo.claim_due(T0, 10, lease, BUDGET)) == 3
    assert await repo.send_budget_left(T0, BUDGET) == BUDGET.per_window - 3
    await repo.apply(StoreChanges(deliveries=[delivery("of-9", "pending", not_before=T0)]))
    assert len(await repo.claim_due(T0, 10, lease)) == 1
    assert await repo.send_budget_left(T0, BUDGET) == BUDGET.per_window - 3


async def test_racing_takes_of_the_send_budget_are_granted_the_budget_exactly(
    two_pollers: tuple[NotifierRepository, NotifierRepository],
) -> None:
    first, second = two_pollers
    takers = [first, second] * 8
    granted = await asyncio.gather(*(r.take_send_budget(T0, 3, BUDGET) for r in takers))
    assert sum(granted) == BUDGET.per_window
    assert await first.take_send_budget(T0, 1, BUDGET) == 0
    assert await first.take_send_budget(T0 + dt.timedelta(seconds=1), 1, BUDGET) == 1
