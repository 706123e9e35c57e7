"""Reachability derived from the profile: pure, and as order-independent as the fold."""

from __future__ import annotations

import datetime as dt
import itertools

from services.profiles.domain import ProfileBook, reachability
from shared.events import CardLinked, CustomerSignedUp, CustomerUpdated

T0 = dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def signup(customer_id: str = "c-1", *, consent: bool = True) -> CustomerSignedUp:
    return CustomerSignedUp(
        event_id=f"s-{customer_id}",
        occurred_at=T0,
        customer_id=customer_id,
        card_id=f"card-{customer_id}",
        email="ana@example.com",
        marketing_consent=consent,
    )


def new_address(at: dt.datetime) -> CustomerUpdated:
    return CustomerUpdated(event_id="u1", occurred_at=at, customer_id="c-1", email="a@new.example")


def fold(*steps: object) -> ProfileBook:
    book = ProfileBook()
    book.add({"c-1", "c-2"}, {})
    for step in steps:
        if isinstance(step, tuple):
            book.bounce(*step)
        else:
            book.apply(step)  # type: ignore[arg-type]
    return book


def test_a_bounce_counts_against_the_address_stated_before_it_in_any_order() -> None:
    steps = [signup(), ("c-1", T0 + DAY), new_address(T0 + 2 * DAY), ("c-1", T0 + 3 * DAY)]
    seen = set()
    for order in itertools.permutations(steps):
        profile = fold(*order).get("c-1")
        assert profile is not None
        seen.add(reachability(profile))
    [only] = seen
    assert (only.reachable, only.reason, only.since) == (False, "bounced", T0 + 3 * DAY)


def test_a_newer_address_than_the_bounce_is_reachable() -> None:
    profile = fold(signup(), ("c-1", T0 + DAY), new_address(T0 + 2 * DAY)).get("c-1")
    assert profile is not None
    assert reachability(profile).reachable


def test_no_address_and_consent_refused_have_their_own_reasons() -> None:
    refused = fold(signup(consent=False)).get("c-1")
    assert refused is not None
    assert (reachability(refused).reason, reachability(refused).since) == ("unsubscribed", T0)
    book = ProfileBook()
    book.add({"c-1"}, {})
    book.apply(
        CustomerSignedUp(
            event_id="s", occurred_at=T0, customer_id="c-1", card_id="k", marketing_consent=True
        )
    )
    no_email = book.get("c-1")
    assert no_email is not None
    assert reachability(no_email).reason == "no_email"


def test_a_merge_keeps_the_later_bounce() -> None:
    link = CardLinked(
        event_id="l1",
        occurred_at=T0 + 5 * DAY,
        customer_id="c-1",
        card_id="card-c-2",
        merged_customer_id="c-2",
    )
    book = fold(signup(), ("c-1", T0 + DAY), ("c-2", T0 + 4 * DAY), link)
    profile = book.get("c-1")
    assert profile is not None
    assert profile.bounced_at == T0 + 4 * DAY
