"""Campaigns as data, pure: the built-in rules as campaigns, each trigger type, audiences,
schedules, pauses and versions as of the trigger's time, variants, hold-outs, the global
control group, budgets that stop issuing, and the campaign model's validation."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from services.offers.campaigns import (
    EPOCH,
    CampaignBook,
    changed,
    created,
    in_global_control,
    seeds,
    slug,
    status_of,
    variant_for,
)
from services.offers.domain import offer_id_for
from services.offers.ledger import fold, fold_segment
from services.offers.settings import FrequentItemRule, HoldOut, OfferRules
from shared.campaigns import (
    CampaignSpec,
    SegmentMembershipChanged,
    Variant,
)
from shared.events import OfferHeldOut, OfferIssued
from tests.unit.test_offers_domain import (
    DAY1,
    NOW,
    Customer,
    at,
    consent,
    issued,
    of_type,
    purchase,
    signup,
)

UTC = dt.UTC
NO_HOLDOUT = OfferRules(holdout=HoldOut(percent=Decimal(0)))
"""The built-in rules without their hold-out, so that each test sees every offer."""
QUIET = NO_HOLDOUT.model_copy(
    update={
        name: getattr(NO_HOLDOUT, name).model_copy(update={"enabled": False})
        for name in ("frequent_item", "birthday", "anniversary", "win_back")
    }
)
"""No built-in campaign issues anything: only the campaign under test does."""
CREATED = DAY1 - dt.timedelta(days=40)
"""When the campaigns under test were created (before every trigger of the tests)."""


def spec(**fields: Any) -> CampaignSpec:
    base: dict[str, Any] = {
        "name": "Coffee lovers",
        "trigger": {"type": "purchase", "sku": "COFFEE", "min_checkouts": 2, "window_days": 30},
        "offer": {"discount_percent": "15", "scope": "sku", "sku": "COFFEE", "validity_days": 14},
        "holdout_percent": "0",
    }
    base.update(fields)
    return CampaignSpec.model_validate(base)


def customer(*campaigns: Any, rules: OfferRules = QUIET, **kwargs: Any) -> Customer:
    c = Customer(rules, **kwargs)
    for record in campaigns:
        c.decider.book.apply(record)
    c.send(signup(customer=c.ledger.customer_id))
    return c


def coffee(c: Customer, *days: int, event: str = "k", sku: str = "COFFEE") -> list[Any]:
    events: list[Any] = []
    for day in days:
        events += c.send(purchase(f"{event}-{day}", at(day), (sku, "BREAD")))
    return events


# ---------------------------------------------------------------- the built-in rules


def test_the_built_in_rules_are_four_campaigns_in_force_since_the_epoch() -> None:
    records = seeds({}, OfferRules(), NOW)
    assert [r.campaign_id for r in records] == [
        "frequent-item",
        "birthday",
        "anniversary",
        "win-back",
    ]
    assert all(r.history[0].at == EPOCH and r.history[0].action == "seeded" for r in records)
    frequent = records[0].spec
    assert (frequent.trigger.min_checkouts, frequent.trigger.window_days) == (3, 30)
    assert frequent.offer.discount_percent == Decimal(10)


def test_a_built_in_campaign_keeps_the_offer_ids_of_the_fixed_rule() -> None:
    c = customer(rules=NO_HOLDOUT)
    coffee(c, 1, 5, 9, sku="MILK")
    [offer] = [o for o in issued(c.events) if o.sku == "MILK"]
    assert offer.offer_id == offer_id_for("frequent_item", "c-1", "MILK", "k-9")
    assert (offer.campaign_id, offer.kind) == ("frequent-item", "frequent_item")


def test_an_unchanged_rules_file_seeds_nothing_and_keeps_marketings_edit() -> None:
    book = {r.campaign_id: r for r in seeds({}, OfferRules(), EPOCH)}
    edited = changed(
        book["birthday"],
        spec=book["birthday"].spec.model_copy(update={"name": "Happy birthday"}),
        status="active",
        at=NOW,
        by="marketing-token",
        action="updated",
    )
    book["birthday"] = edited
    assert seeds(book, OfferRules(), NOW) == []


def test_a_changed_rules_file_publishes_a_new_version_in_force_from_then() -> None:
    book = {r.campaign_id: r for r in seeds({}, OfferRules(), EPOCH)}
    rules = OfferRules(frequent_item=FrequentItemRule(discount_percent=Decimal(12)))
    [record] = seeds(book, rules, NOW)
    assert record.campaign_id == "frequent-item"
    assert len(record.versions) == 2
    assert record.history[-1].at == NOW
    assert record.in_force(NOW - dt.timedelta(seconds=1))[0].offer.discount_percent == 10  # type: ignore[index]
    assert record.in_force(NOW)[0].offer.discount_percent == 12  # type: ignore[index]


# ---------------------------------------------------------------- triggers


def test_a_purchase_campaign_issues_on_the_nth_checkout_of_its_sku_with_its_id() -> None:
    c = customer(created("coffee-lovers", spec(), at=CREATED, by="t"))
    assert issued(coffee(c, 1)) == []
    [offer] = issued(coffee(c, 20))
    assert (offer.campaign_id, offer.kind, offer.sku, offer.scope) == (
        "coffee-lovers",
        "frequent_item",
        "COFFEE",
        "sku",
    )
    assert offer.discount_percent == Decimal(15)
    assert offer.trigger is not None
    assert offer.trigger.event_ids == ("k-1", "k-20")
    assert offer.offer_id == offer_id_for("frequent_item", "c-1", "coffee-lovers:COFFEE", "k-20")


def test_a_purchase_window_counts_both_ends_and_no_further() -> None:
    inside = customer(created("coffee-lovers", spec(), at=CREATED, by="t"))
    assert len(issued(coffee(inside, 1, 31))) == 1  # 30 days apart: both ends count
    outside = customer(created("coffee-lovers", spec(), at=CREATED, by="t"))
    assert issued(coffee(outside, 1, 32)) == []


def test_a_category_campaign_counts_checkouts_with_any_product_of_it() -> None:
    record = created(
        "dairy",
        spec(
            name="Dairy",
            trigger={"type": "purchase", "category": "dairy", "min_checkouts": 2},
            offer={"discount_percent": "5", "scope": "category", "validity_days": 7},
        ),
        at=CREATED,
        by="t",
    )
    c = customer(record)
    cats = {"MILK": "dairy", "YOGHURT": "dairy", "BREAD": "bakery"}
    c.send(purchase("p-1", at(1), ("MILK", "BREAD"), categories=cats))
    c.send(purchase("p-2", at(2), ("BREAD",), categories=cats))
    [offer] = issued(c.send(purchase("p-3", at(3), ("YOGHURT",), categories=cats)))
    assert (offer.scope, offer.category, offer.sku) == ("category", "dairy", None)


def test_calendar_campaigns_issue_on_their_day() -> None:
    birthday = created(
        "birthday-treat",
        spec(name="Birthday treat", trigger={"type": "birthday"}, offer={"discount_percent": "20"}),
        at=CREATED,
        by="t",
    )
    c = customer(birthday)
    c.send(signup(birth=dt.date(1990, 3, 5), event_id="s-2"))
    assert issued(c.tick(dt.date(2026, 3, 4))) == []
    [offer] = issued(c.tick(dt.date(2026, 3, 5)))
    assert (offer.campaign_id, offer.kind, offer.scope) == ("birthday-treat", "birthday", "basket")


def test_an_inactive_campaign_issues_when_a_regular_stays_away_long_enough() -> None:
    record = created(
        "miss-you",
        spec(
            name="Miss you",
            trigger={"type": "inactive", "days": 10, "min_visits": 2},
            offer={"discount_percent": "10"},
        ),
        at=CREATED,
        by="t",
    )
    c = customer(record)
    coffee(c, 1, 2, sku="TEA")
    assert issued(c.tick(dt.date(2026, 3, 12))) == []  # 10 days since the 2nd: not yet
    [offer] = issued(c.tick(dt.date(2026, 3, 13)))
    assert (offer.campaign_id, offer.kind) == ("miss-you", "win_back")


def test_entering_a_segment_triggers_its_campaign_once_per_entry() -> None:
    record = created(
        "welcome-big-spenders",
        spec(
            name="Welcome big spenders",
            trigger={"type": "segment_entered", "segment": "big-spenders"},
            offer={"discount_percent": "10"},
        ),
        at=CREATED,
        by="t",
    )
    c = customer(record)

    def seg(kind: str, day: int, cause: str) -> list[Any]:
        change = SegmentMembershipChanged(
            type=kind,
            customer_id="c-1",
            segment="big-spenders",
            at=at(day),
            cause_event_id=cause,
            segment_version=1,
        )
        since = fold_segment(c.ledger, change)
        return c._recompute(since, NOW) if since is not None else []

    [first] = issued(seg("segment_entered", 1, "p-1"))
    assert first.kind == "segment_entered"
    assert first.trigger is not None
    assert (first.trigger.type, first.trigger.segment) == ("segment", "big-spenders")
    assert seg("segment_entered", 1, "p-1") == []  # the same entry again
    assert issued(seg("segment_entered", 1, "p-9")) == []  # said again: still inside
    seg("segment_exited", 2, "p-2")
    assert len(issued(seg("segment_entered", 3, "p-3"))) == 1  # a new entry


# ---------------------------------------------------------------- audience, schedule, time


def test_the_audience_is_the_segment_as_of_the_triggers_time() -> None:
    record = created("vip-coffee", spec(audience={"segment": "vip"}), at=CREATED, by="t")
    c = customer(record)
    fold_segment(
        c.ledger,
        SegmentMembershipChanged(
            type="segment_entered",
            customer_id="c-1",
            segment="vip",
            at=at(10),
            cause_event_id="p-x",
            segment_version=1,
        ),
    )
    coffee(c, 1, 2)  # before the customer was a VIP
    assert issued(c.events) == []
    assert c.stats["suppressed_audience"] == 1
    assert len(issued(coffee(c, 11, event="j"))) == 1


def test_a_campaign_applies_only_to_triggers_after_its_creation() -> None:
    c = customer(created("coffee-lovers", spec(), at=at(5), by="t"))
    coffee(c, 1, 2)  # both before the campaign existed
    assert issued(c.events) == []
    assert len(issued(coffee(c, 6))) == 1  # after it: the window still counts the old ones


def test_a_paused_campaign_issues_nothing_while_paused_and_again_once_resumed() -> None:
    record = created(
        "coffee-lovers",
        spec(trigger={**spec().trigger.model_dump(), "cooldown_days": 0}),
        at=CREATED,
        by="t",
    )
    record = changed(record, status="paused", at=at(3), by="t", action="paused")
    record = changed(record, status="active", at=at(6), by="t", action="resumed")
    c = customer(record)
    coffee(c, 1, 2)
    assert len(issued(c.events)) == 1  # day 2: active
    assert issued(coffee(c, 4, event="j")) == []  # paused
    assert len(issued(coffee(c, 7, event="q"))) == 1  # resumed


def test_a_campaign_outside_its_schedule_issues_nothing() -> None:
    ended = created("coffee-lovers", spec(ends_on=dt.date(2026, 3, 1)), at=CREATED, by="t")
    c = customer(ended)
    coffee(c, 2, 3)
    assert issued(c.events) == []
    later = created("coffee-lovers", spec(starts_on=dt.date(2026, 3, 10)), at=CREATED, by="t")
    c = customer(later)
    coffee(c, 2, 3)
    assert issued(c.events) == []
    assert len(issued(coffee(c, 10, event="j"))) == 1


def test_an_edit_applies_from_its_time_and_decisions_before_it_stand() -> None:
    record = created(
        "coffee-lovers",
        spec(trigger={**spec().trigger.model_dump(), "cooldown_days": 0}),
        at=CREATED,
        by="t",
    )
    richer = spec(
        trigger={**spec().trigger.model_dump(), "cooldown_days": 0},
        offer={"discount_percent": "25", "scope": "sku", "sku": "COFFEE"},
    )
    record = changed(record, spec=richer, status="active", at=at(5), by="t", action="updated")
    c = customer(record)
    coffee(c, 1, 2, 6)
    first, second = issued(c.events)
    assert (first.discount_percent, second.discount_percent) == (Decimal(15), Decimal(25))


# ---------------------------------------------------------------- variants, hold-out, control


def test_variants_are_assigned_by_customer_stably_and_close_to_their_weights() -> None:
    arms = (
        Variant(name="a", weight=1, offer={"discount_percent": "10"}),
        Variant(name="b", weight=3, offer={"discount_percent": "20"}),
    )
    picks = Counter(variant_for("c1", f"cust-{n}", arms).name for n in range(20_000))  # type: ignore[union-attr]
    assert abs(picks["b"] / 20_000 - 0.75) < 0.015
    assert all(variant_for("c1", "cust-7", arms) == variant_for("c1", "cust-7", arms) for _ in "ab")


def test_a_variant_gives_its_own_terms_and_its_name_on_the_offer() -> None:
    record = created(
        "coffee-ab",
        spec(
            variants=[
                {"name": "a", "offer": {"discount_percent": "10", "scope": "sku"}},
                {"name": "b", "offer": {"discount_percent": "30", "scope": "sku"}},
            ]
        ),
        at=CREATED,
        by="t",
    )
    terms = {}
    for n in range(12):
        c = customer(record, customer_id=f"c-{n}")
        c.send(purchase("k-1", at(1), ("COFFEE",), customer=f"c-{n}"))
        [offer] = issued(c.send(purchase("k-2", at(2), ("COFFEE",), customer=f"c-{n}")))
        terms[offer.variant] = offer.discount_percent
    assert terms == {"a": Decimal(10), "b": Decimal(30)}


def test_a_campaigns_hold_out_publishes_held_out_with_its_campaign() -> None:
    record = created("coffee-lovers", spec(holdout_percent="100"), at=CREATED, by="t")
    c = customer(record)
    coffee(c, 1, 2)
    [held] = of_type(c.events, OfferHeldOut)
    assert (held.campaign_id, held.control) == ("coffee-lovers", "campaign")
    assert issued(c.events) == []


def test_the_global_control_group_gets_no_campaign_and_is_fixed_per_customer() -> None:
    members = [n for n in range(2_000) if in_global_control(f"c-{n}", Decimal(10))]
    assert abs(len(members) / 2_000 - 0.10) < 0.02
    assert not in_global_control("c-1", Decimal(0))
    member = f"c-{members[0]}"
    c = customer(created("coffee-lovers", spec(), at=CREATED, by="t"), customer_id=member)
    c.decider.global_control_percent = Decimal(10)
    c.send(purchase("k-1", at(1), ("COFFEE",), customer=member))
    c.send(purchase("k-2", at(2), ("COFFEE",), customer=member))
    [held] = of_type(c.events, OfferHeldOut)
    assert held.control == "global"
    assert issued(c.events) == []


# ---------------------------------------------------------------- cap, cooldown, budget


def test_the_frequency_cap_applies_across_campaigns() -> None:
    c = customer(
        created("coffee-lovers", spec(), at=CREATED, by="t"),
        created(
            "tea-lovers",
            spec(
                name="Tea",
                trigger={"type": "purchase", "sku": "TEA", "min_checkouts": 1},
                offer={"discount_percent": "5", "scope": "sku", "sku": "TEA"},
            ),
            at=CREATED,
            by="t",
        ),
        created(
            "bread-lovers",
            spec(
                name="Bread",
                trigger={"type": "purchase", "sku": "BREAD", "min_checkouts": 1},
                offer={"discount_percent": "5", "scope": "sku", "sku": "BREAD"},
            ),
            at=CREATED,
            by="t",
        ),
    )
    c.send(purchase("p-1", at(1), ("COFFEE",)))
    c.send(purchase("p-2", at(2), ("COFFEE", "TEA", "BREAD")))
    c.send(purchase("p-3", at(3), ("TEA",)))
    assert len(issued(c.events)) == 3  # coffee, tea, bread; the second tea is capped
    assert c.stats["suppressed_cap"] + c.stats["suppressed_cooldown"] >= 1


def test_a_spent_budget_stops_new_decisions_and_leaves_taken_ones() -> None:
    c = customer(created("coffee-lovers", spec(), at=CREATED, by="t"))
    coffee(c, 1, 2)
    [kept] = issued(c.events)
    c.decider.book.spent = {"coffee-lovers"}
    coffee(c, 3, 40, event="j")  # a new trigger once the budget is spent
    assert c.stats["suppressed_budget_spent"] == 1
    assert [o.offer_id for o in c.offers.values() if o.state != "revoked"] == [kept.offer_id]


def test_a_refused_redemption_is_rejected_with_budget_spent() -> None:
    c = customer(created("coffee-lovers", spec(), at=CREATED, by="t"))
    coffee(c, 1, 2)
    [offer] = issued(c.events)
    buy = purchase("b-1", at(3), ("COFFEE",), coupons=(offer.coupon_code,))
    since = fold(c.ledger, buy)
    assert since is not None
    result = c.decider.recompute(
        c.ledger,
        since=since,
        days=c.days,
        arrival=NOW,
        offers=c.offers,
        owners={},
        refused={f"b-1|{offer.coupon_code}"},
    )
    [rejected] = [e for e in result.events if e.type == "redemption_rejected"]
    assert rejected.reason == "budget_spent"


# ---------------------------------------------------------------- the model


def test_a_campaign_without_what_its_trigger_needs_is_refused_with_the_field() -> None:
    with pytest.raises(ValidationError, match="purchase trigger names exactly one"):
        spec(trigger={"type": "purchase", "min_checkouts": 2})
    with pytest.raises(ValidationError, match="needs `days`"):
        spec(trigger={"type": "inactive"}, offer={"discount_percent": "5"})
    with pytest.raises(ValidationError, match="discount_percent"):
        spec(offer={"discount_percent": "0"})
    with pytest.raises(ValidationError, match="before `starts_on`"):
        spec(starts_on=dt.date(2026, 3, 2), ends_on=dt.date(2026, 3, 1))


def test_campaign_ids_are_slugs_of_the_name_made_unique() -> None:
    assert slug("Coffee lovers!", []) == "coffee-lovers"
    assert slug("Coffee lovers", ["coffee-lovers"]) == "coffee-lovers-2"


def test_status_says_paused_scheduled_ended_or_spent() -> None:
    record = created(
        "c", spec(starts_on=dt.date(2026, 3, 10), ends_on=dt.date(2026, 3, 20)), at=CREATED, by="t"
    )
    assert status_of(record, today=dt.date(2026, 3, 1), now=NOW, spent=False) == "scheduled"
    assert status_of(record, today=dt.date(2026, 3, 15), now=NOW, spent=False) == "active"
    assert status_of(record, today=dt.date(2026, 3, 21), now=NOW, spent=False) == "ended"
    assert status_of(record, today=dt.date(2026, 3, 15), now=NOW, spent=True) == "budget_spent"
    paused = changed(record, status="paused", at=CREATED, by="t", action="paused")
    assert status_of(paused, today=dt.date(2026, 3, 15), now=NOW, spent=False) == "paused"


def test_a_record_with_more_history_replaces_the_book_entry_and_says_from_when() -> None:
    book = CampaignBook()
    first = created("c", spec(), at=CREATED, by="t")
    assert book.apply(first) == CREATED
    assert book.apply(first) is None
    paused = changed(first, status="paused", at=NOW, by="t", action="paused")
    assert book.apply(paused) == NOW
    assert book.apply(first) is None  # an older record does not win


def test_consent_still_rules_a_campaign() -> None:
    c = customer(created("coffee-lovers", spec(), at=CREATED, by="t"))
    c.send(consent(at(1) - dt.timedelta(hours=1), False, "k-no"))
    coffee(c, 1, 2)
    assert issued(c.events) == []
    assert isinstance(c.events, list)
    assert not [e for e in c.events if isinstance(e, OfferIssued)]
