"""Hold-out groups: the configured share, the same choice on every run, and nothing for those held out."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from services.offers.domain import is_held_out
from services.offers.engine import Days, OfferDecider
from services.offers.ledger import Ledger, fold
from services.offers.settings import HoldOut, OfferRules
from shared.events import OFFER_EVENT, OfferHeldOut, OfferIssued
from shared.marketing import campaign_period
from shared.settings import CalendarSettings
from tests.unit.test_offers_domain import purchase, signup

DAY = dt.datetime(2026, 3, 4, 10, 0, tzinfo=dt.UTC)
CUSTOMERS = [f"c-{i:05d}" for i in range(4000)]


def decide(customers: list[str], percent: Decimal = Decimal(5)) -> tuple[list[Any], Any]:
    """Each customer signs up and buys milk a third time in 30 days: each is eligible for a
    frequent-item coupon. Returns every event published, and the counters."""
    decider = OfferDecider(
        rules=OfferRules(holdout=HoldOut(percent=percent)),
        coupon_key=b"k",
        calendar=CalendarSettings(),
        lateness=dt.timedelta(hours=1),
    )
    events: list[Any] = []
    stats: dict[str, int] = {}
    for customer in customers:
        ledger = Ledger(customer_id=customer)
        fold(ledger, signup(customer=customer, event_id=f"s-{customer}"))
        for n, days in enumerate((10, 3, 0)):
            fold(
                ledger,
                purchase(f"{customer}-{n}", DAY - dt.timedelta(days=days), customer=customer),
            )
        out = decider.recompute(
            ledger,
            since=DAY - dt.timedelta(days=10),
            days=Days(),
            arrival=DAY,
            offers={},
            owners={},
        )
        events += out.events
        for key, value in out.stats.items():
            stats[key] = stats.get(key, 0) + value
    return events, stats


@pytest.mark.parametrize("percent", [Decimal(5), Decimal(20)])
def test_the_share_held_out_is_close_to_the_configured_share(percent: Decimal) -> None:
    for period in ("2026-W10", "2026-W11", "2027-W01"):
        held = sum(is_held_out(c, "frequent_item", period, percent) for c in CUSTOMERS)
        share = Decimal(held) * 100 / len(CUSTOMERS)
        # binomial standard deviation at 4,000 draws: 0.35 points at 5 %, 0.63 at 20 %
        assert abs(share - percent) <= Decimal("1.5"), (period, share)


def test_the_choice_is_the_same_on_every_run_and_changes_with_the_period_and_kind() -> None:
    first = {c for c in CUSTOMERS if is_held_out(c, "birthday", "2026-W10", Decimal(5))}
    again = {c for c in CUSTOMERS if is_held_out(c, "birthday", "2026-W10", Decimal(5))}
    next_week = {c for c in CUSTOMERS if is_held_out(c, "birthday", "2026-W11", Decimal(5))}
    other_kind = {c for c in CUSTOMERS if is_held_out(c, "win_back", "2026-W10", Decimal(5))}
    assert first == again
    assert first != next_week
    assert len(first & next_week) < len(first) / 2
    assert first != other_kind


def test_no_hold_out_at_zero_percent_and_everyone_at_a_hundred() -> None:
    assert not any(is_held_out(c, "birthday", "2026-W10", Decimal(0)) for c in CUSTOMERS)
    assert all(is_held_out(c, "birthday", "2026-W10", Decimal(100)) for c in CUSTOMERS)


def test_held_out_customers_get_no_offer_only_a_held_out_event() -> None:
    events, stats = decide(CUSTOMERS)
    issued = [e for e in events if isinstance(e, OfferIssued)]
    held = [e for e in events if isinstance(e, OfferHeldOut)]
    assert len(issued) + len(held) == len(CUSTOMERS)
    assert 0.035 <= len(held) / len(CUSTOMERS) <= 0.065
    assert not {e.customer_id for e in issued} & {e.customer_id for e in held}
    assert stats["issued_frequent_item"] == len(issued)  # no offer stored, so nothing to e-mail
    assert stats["held_out_frequent_item"] == len(held)
    sample = held[0]
    assert sample.period == campaign_period(DAY.date()) == "2026-W10"
    assert sample.valid_until == DAY.date() + dt.timedelta(days=14)
    # on the wire: a `held_out` offer event, which the notifier ignores like any non-issue
    assert isinstance(OFFER_EVENT.validate_json(sample.model_dump_json()), OfferHeldOut)


def test_a_replay_makes_the_same_decisions() -> None:
    assert decide(CUSTOMERS[:500])[0] == decide(CUSTOMERS[:500])[0]
