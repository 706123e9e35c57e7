"""Segments, pure: each predicate and its bounds, `bought` and its limits, built-ins, events."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from services.profiles.domain import CustomerProfile, ProfileBook
from services.profiles.segments import (
    BUILTINS,
    Definition,
    catalogue,
    evaluate,
    is_reserved,
    matches,
    members_of,
    membership_changes,
    newer,
    unanswerable,
)
from shared.campaigns import Bought, SegmentDefined, SegmentRule
from shared.events import (
    CardLinked,
    CustomerErased,
    CustomerSignedUp,
    NormalizedEvent,
    PurchaseLine,
    PurchaseRecorded,
)

T0 = dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)
DAY = T0.date()
PARIS = ZoneInfo("Europe/Paris")


def line(sku: str, amount: str = "10.00", category: str | None = "grocery") -> PurchaseLine:
    return PurchaseLine(
        sku=sku,
        category=category,
        quantity=Decimal(1),
        unit_price=Decimal(amount),
        amount=Decimal(amount),
    )


def purchase(
    event_id: str,
    when: dt.datetime,
    *lines: PurchaseLine,
    customer: str = "c-1",
    store: str = "S001",
) -> PurchaseRecorded:
    basket = lines or (line("MILK"),)
    return PurchaseRecorded(
        event_id=event_id,
        occurred_at=when,
        customer_id=customer,
        card_id=f"card-{customer}",
        store_id=store,
        currency="EUR",
        lines=basket,
        total=sum((li.amount for li in basket), Decimal(0)),
    )


def signup(customer: str = "c-1", **kw: Any) -> CustomerSignedUp:
    kw.setdefault("marketing_consent", True)
    return CustomerSignedUp(
        event_id=f"s-{customer}",
        occurred_at=T0 - dt.timedelta(days=400),
        customer_id=customer,
        card_id=f"card-{customer}",
        email=f"{customer}@example.com",
        first_name="Ana",
        **kw,
    )


def profile_of(*events: NormalizedEvent, customer: str = "c-1") -> CustomerProfile:
    """The profile the domain folds from these events."""
    book = ProfileBook()
    book.add(book.ids_of(events), {})
    for event in events:
        book.apply(event)
    found = book.get(customer)
    assert found is not None
    return found


def visits(*days_ago: int, amount: str = "10.00") -> list[PurchaseRecorded]:
    return [
        purchase(f"p{i}", T0 - dt.timedelta(days=d), line("MILK", amount))
        for i, d in enumerate(days_ago)
    ]


def holds(rule: dict[str, Any], profile: CustomerProfile, today: dt.date = DAY, **kw: Any) -> bool:
    return matches(SegmentRule.model_validate(rule), profile, today, **kw)


# ---------------------------------------------------------------- figures


def test_spend_bounds_are_inclusive() -> None:
    ana = profile_of(*visits(1, 2, 3))  # 30.00
    assert holds({"min_spend": "30.00"}, ana)
    assert not holds({"min_spend": "30.01"}, ana)
    assert holds({"max_spend": "30"}, ana)
    assert not holds({"max_spend": "29.99"}, ana)


def test_visit_bounds_are_inclusive() -> None:
    ana = profile_of(*visits(1, 2, 3))
    assert holds({"min_visits": 3, "max_visits": 3}, ana)
    assert not holds({"min_visits": 4}, ana)
    assert not holds({"max_visits": 2}, ana)


def test_average_basket_is_spend_over_visits_exactly() -> None:
    ana = profile_of(
        purchase("p1", T0, line("A", "3.00")),
        purchase("p2", T0, line("A", "3.00")),
        purchase("p3", T0, line("A", "4.00")),
    )  # 10.00 / 3 = 3.333...
    assert holds({"min_average_basket": "3.33"}, ana)
    assert not holds({"min_average_basket": "3.34"}, ana)
    assert holds({"max_average_basket": "3.34"}, ana)
    assert not holds({"max_average_basket": "3.33"}, ana)  # not rounded to the cent
    even = profile_of(*visits(1, 2))
    assert holds({"min_average_basket": "10", "max_average_basket": "10"}, even)


def test_a_customer_without_visits_has_no_average_basket_nor_recency() -> None:
    ben = profile_of(signup())
    assert not holds({"min_average_basket": "0"}, ben)
    assert not holds({"max_average_basket": "100"}, ben)
    assert not holds({"min_days_since_last_visit": 0}, ben)
    assert not holds({"max_days_since_last_visit": 1000}, ben)
    assert holds({"max_visits": 0, "max_spend": "0"}, ben)


def test_days_since_last_visit_count_calendar_days_with_inclusive_bounds() -> None:
    ana = profile_of(purchase("p1", T0 - dt.timedelta(days=10)))
    assert holds({"min_days_since_last_visit": 10, "max_days_since_last_visit": 10}, ana)
    assert not holds({"min_days_since_last_visit": 11}, ana)
    assert not holds({"max_days_since_last_visit": 9}, ana)
    assert holds({"max_days_since_last_visit": 0}, ana, DAY - dt.timedelta(days=10))


def test_days_since_last_visit_count_in_the_calendar_time_zone() -> None:
    # 23:30 UTC on 28 February is 00:30 on 1 March in Paris.
    late = profile_of(purchase("p1", dt.datetime(2026, 2, 28, 23, 30, tzinfo=dt.UTC)))
    assert holds({"min_days_since_last_visit": 1}, late, DAY)
    assert holds({"max_days_since_last_visit": 0}, late, DAY, zone=PARIS)


def test_rfm_segment_is_the_customers_as_of_today() -> None:
    ana = profile_of(*visits(*range(1, 11), amount="60.00"))  # 10 visits, 600 spent
    assert holds({"rfm_segment": ["champions"]}, ana)
    assert holds({"rfm_segment": ["loyal", "champions"]}, ana)
    assert not holds({"rfm_segment": ["loyal"]}, ana)
    later = DAY + dt.timedelta(days=40)  # last visit 41 days before: loyal
    assert holds({"rfm_segment": ["loyal"]}, ana, later)
    assert holds({"rfm_segment": ["prospect"]}, profile_of(signup()))


def test_home_store_consent_and_birthday_month() -> None:
    ana = profile_of(
        signup(birth_date=dt.date(1990, 5, 17)),
        purchase("p1", T0, store="S002"),
    )
    assert holds({"home_store": ["S001", "S002"]}, ana)
    assert holds({"home_store": [" s002 "]}, ana)  # store ids as ingest writes them
    assert not holds({"home_store": ["S001"]}, ana)
    assert holds({"consent": True}, ana)
    assert not holds({"consent": False}, ana)
    assert holds({"birthday_month": 5}, ana)
    assert not holds({"birthday_month": 6}, ana)
    no_birthday = profile_of(signup(marketing_consent=False))
    assert not holds({"birthday_month": 5}, no_birthday)
    assert holds({"consent": False}, no_birthday)
    assert not holds({"home_store": ["S001"]}, no_birthday)


def test_every_predicate_given_must_hold() -> None:
    ana = profile_of(signup(birth_date=dt.date(1990, 5, 17)), *visits(1, 2, 3))
    assert holds({}, ana)
    assert holds({"min_visits": 3, "consent": True, "birthday_month": 5}, ana)
    assert not holds({"min_visits": 3, "consent": True, "birthday_month": 6}, ana)


# ---------------------------------------------------------------- bought


def bought(**kw: Any) -> dict[str, Any]:
    return {"bought": [kw]}


def test_bought_counts_distinct_checkouts_within_the_window() -> None:
    ana = profile_of(
        purchase("p1", T0 - dt.timedelta(days=6), line("COFFEE"), line("COFFEE")),
        purchase("p2", T0 - dt.timedelta(days=2), line("COFFEE")),
        purchase("p3", T0 - dt.timedelta(days=1), line("TEA")),
    )
    assert holds(bought(sku="COFFEE", min_checkouts=2, within_days=7), ana)
    assert not holds(bought(sku="COFFEE", min_checkouts=3, within_days=7), ana)
    assert holds(bought(sku="coffee ", min_checkouts=2, within_days=7), ana)  # as ingest writes it
    assert not holds(bought(sku="COFFEE", min_checkouts=2, within_days=6), ana)
    assert holds(bought(sku="COFFEE", within_days=3), ana)
    assert not holds(bought(sku="COFFEE", within_days=2), ana)


def test_within_one_day_is_today_only_in_the_calendar_zone() -> None:
    # 23:30 UTC on 28 February is already 1 March in Paris.
    ana = profile_of(purchase("p1", dt.datetime(2026, 2, 28, 23, 30, tzinfo=dt.UTC)))
    assert holds(bought(sku="MILK", within_days=1), ana, DAY, zone=PARIS)
    assert not holds(bought(sku="MILK", within_days=1), ana, DAY)
    assert holds(bought(sku="MILK", within_days=2), ana, DAY)


def test_bought_by_category_counts_checkouts_with_any_sku_of_it() -> None:
    ana = profile_of(
        purchase("p1", T0 - dt.timedelta(days=3), line("BRIE", category="cheese")),
        purchase("p2", T0 - dt.timedelta(days=2), line("FETA", category="cheese")),
        purchase("p3", T0, line("MILK", category=None)),
    )
    assert holds(bought(category="cheese", min_checkouts=2, within_days=7), ana)
    assert holds(bought(category="Cheese", min_checkouts=2, within_days=7), ana)
    assert not holds(bought(category="cheese", min_checkouts=3, within_days=7), ana)
    assert holds(bought(category="uncategorized", within_days=1), ana)
    assert not holds(bought(category="dairy"), ana)


def test_bought_once_beyond_the_history_uses_the_latest_checkout() -> None:
    # The history keeps 30 days back from the newest checkout; the SKU's latest checkout
    # still answers "at least once within 90 days".
    ana = profile_of(
        purchase("p1", T0 - dt.timedelta(days=80), line("COFFEE")),
        purchase("p2", T0, line("MILK")),
    )
    assert [h.event_id for h in ana.sku_history] == ["p2"]
    assert holds(bought(sku="COFFEE", within_days=81), ana)
    assert not holds(bought(sku="COFFEE", within_days=80), ana)
    assert holds(bought(category="grocery", within_days=90), ana)
    assert not holds(bought(sku="TEA", within_days=400), ana)


def test_counting_over_the_whole_history_is_exact_in_utc() -> None:
    ana = profile_of(
        purchase("p1", T0 - dt.timedelta(days=29, hours=10), line("COFFEE")),  # 00:00, day -29
        purchase("p2", T0 + dt.timedelta(hours=13, minutes=59), line("COFFEE")),  # 23:59 today
    )
    assert holds(bought(sku="COFFEE", min_checkouts=2, within_days=30), ana)
    assert not holds(bought(sku="COFFEE", min_checkouts=2, within_days=29), ana)


def test_what_a_profile_cannot_count_is_named_and_refused() -> None:
    assert unanswerable(SegmentRule()) == []
    ok = SegmentRule.model_validate(
        {
            "bought": [
                {"sku": "A", "min_checkouts": 1, "within_days": 400},
                {"sku": "B", "min_checkouts": 5, "within_days": 30},
            ]
        }
    )
    assert unanswerable(ok) == []
    too_long = SegmentRule.model_validate(
        {"bought": [{"sku": "A"}, {"category": "tea", "min_checkouts": 2, "within_days": 31}]}
    )
    [(loc, message)] = unanswerable(too_long)
    assert loc == ("bought", 1, "within_days")
    assert "up to 30" in message
    # With daylight-saving time, the window's days can be an hour longer than the history.
    whole = SegmentRule.model_validate({"bought": [{"sku": "A", "min_checkouts": 2}]})
    assert unanswerable(whole, zone=PARIS)[0][0] == ("bought", 0, "within_days")
    assert unanswerable(whole, zone=PARIS, history_days=31) == []
    assert unanswerable(whole, zone=ZoneInfo("Asia/Tokyo")) == []
    shorter = SegmentRule.model_validate({"bought": [{"sku": "A", "min_checkouts": 2}]})
    assert unanswerable(shorter, history_days=14)[0][0] == ("bought", 0, "within_days")
    with pytest.raises(ValidationError, match=r"home_store\.0"):
        SegmentRule(home_store=("S" * 65,))  # the model refuses it, before any profile


def test_a_count_the_history_does_not_cover_does_not_hold() -> None:
    # Accepted under a longer history: with 10 days kept it cannot be counted, so it fails.
    ana = profile_of(*[purchase(f"p{i}", T0 - dt.timedelta(days=i), line("A")) for i in range(5)])
    rule = bought(sku="A", min_checkouts=2, within_days=20)
    assert holds(rule, ana, history_days=30)
    assert not holds(rule, ana, history_days=10)


def test_bought_needs_exactly_one_of_sku_and_category() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Bought(sku="A", category="b")
    with pytest.raises(ValueError, match="exactly one"):
        Bought()


# ---------------------------------------------------------------- segments and memberships


def test_built_in_segments_are_all_and_one_per_rfm_segment() -> None:
    assert sorted(BUILTINS) == [
        "all",
        "rfm-active",
        "rfm-at_risk",
        "rfm-champions",
        "rfm-hibernating",
        "rfm-loyal",
        "rfm-new",
        "rfm-prospect",
    ]
    assert all(s.builtin and s.version == 1 for s in BUILTINS.values())
    assert BUILTINS["rfm-at_risk"].rule == SegmentRule(rfm_segment=("at_risk",))
    assert BUILTINS["all"].rule == SegmentRule()
    assert is_reserved("all")
    assert is_reserved("rfm-anything")
    assert not is_reserved("allergic")


def test_all_holds_registered_customers_and_every_profile_has_its_rfm_segment() -> None:
    segments = catalogue([])
    registered = profile_of(signup(), *visits(3))
    card_only = profile_of(*visits(3))
    assert members_of(segments, registered, DAY) == {"all", "rfm-new"}
    assert members_of(segments, card_only, DAY) == {"rfm-new"}
    assert members_of(segments, profile_of(signup()), DAY) == {"all", "rfm-prospect"}


def test_erased_customers_and_aliases_are_in_no_segment() -> None:
    everyone = catalogue([record("big", {"min_visits": 0})])
    erased = profile_of(
        signup(),
        *visits(1),
        CustomerErased(event_id="x1", occurred_at=T0, customer_id="c-1"),
    )
    assert erased.erased
    assert members_of(everyone, erased, DAY) == set()
    assert not matches(SegmentRule(), erased, DAY)
    book = ProfileBook()
    book.add(["c-1", "c-2"], {})
    for event in (*visits(1), purchase("q1", T0, customer="c-2")):
        book.apply(event)
    book.apply(
        CardLinked(
            event_id="l1",
            occurred_at=T0,
            customer_id="c-1",
            card_id="card-c-2",
            merged_customer_id="c-2",
        )
    )
    alias = book.get("c-2")
    assert alias is not None
    assert alias.merged_into == "c-1"
    assert members_of(everyone, alias, DAY) == set()


def record(name: str, rule: dict[str, Any], version: int = 1, **kw: Any) -> SegmentDefined:
    return SegmentDefined(
        name=name,
        rule=SegmentRule.model_validate(rule),
        version=version,
        defined_at=kw.pop("at", T0),
        defined_by=kw.pop("by", "token-1"),
        **kw,
    )


def test_a_defined_record_with_a_built_in_name_does_not_replace_it() -> None:
    segments = catalogue([record("all", {"min_visits": 5}), record("vip", {"min_spend": "100"})])
    assert segments["all"] == BUILTINS["all"]
    assert segments["vip"] == Definition("vip", SegmentRule(min_spend=Decimal(100)), 1)
    assert list(segments) == sorted(segments)


def test_the_latest_version_wins_and_a_tie_goes_to_the_later_save() -> None:
    v1 = record("vip", {}, 1)
    v2 = record("vip", {}, 2, at=T0 - dt.timedelta(days=1))
    assert newer(v1, None)
    assert newer(v2, v1)
    assert not newer(v1, v2)
    later = record("vip", {}, 2, at=T0)
    assert newer(later, v2)
    assert not newer(v2, later)


def test_changes_come_in_segment_name_order_with_their_cause() -> None:
    segments = catalogue([record("b-seg", {}, 3), record("a-seg", {}, 2)])
    changes = membership_changes(
        segments,
        customer_id="c-1",
        before=["rfm-new", "b-seg", "gone"],
        after=["all", "a-seg", "b-seg"],
        at=T0,
        cause_event_id="e-9",
    )
    assert [(c.type, c.segment, c.segment_version) for c in changes] == [
        ("segment_entered", "a-seg", 2),
        ("segment_entered", "all", 1),
        ("segment_exited", "rfm-new", 1),
    ]
    assert {(c.customer_id, c.at, c.cause_event_id) for c in changes} == {("c-1", T0, "e-9")}


def test_evaluating_keeps_the_time_a_member_entered_and_leaves_unknown_segments() -> None:
    segments = catalogue([record("big", {"min_visits": 2})])
    ana = profile_of(signup(), *visits(1, 2))
    earlier = T0 - dt.timedelta(days=5)
    before = {"all": earlier, "rfm-prospect": earlier, "retired": earlier}
    result = evaluate(segments, ana, before, today=DAY, at=T0, cause_event_id="p0")
    assert result.memberships == {
        "all": earlier,
        "big": T0,
        "retired": earlier,
        "rfm-new": T0,
    }
    assert [(c.type, c.segment) for c in result.changes] == [
        ("segment_entered", "big"),
        ("segment_entered", "rfm-new"),
        ("segment_exited", "rfm-prospect"),
    ]
    again = evaluate(segments, ana, result.memberships, today=DAY, at=T0, cause_event_id="p0")
    assert again.changes == []
    assert again.memberships == result.memberships
