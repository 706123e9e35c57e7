"""The offer rules, pure: frequent items, calendar rules, eligibility as of the trigger's time,
cap and cooldowns in event-time order, redemption and discounts, expiry, and corrections
(revocations and late issues) when facts arrive out of order."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from services.offers.domain import (
    OfferRecord,
    birthday_month_days,
    check_code,
    coupon_code_for,
    discount_for,
    normalize_code,
    offer_id_for,
    one_year_after,
    would_exceed_cap,
)
from services.offers.engine import Days, OfferDecider
from services.offers.ledger import Ledger, fold, merge_into
from services.offers.settings import (
    FrequencyCap,
    HoldOut,
    OfferRules,
    RulesFileError,
    load_rules,
)
from shared.events import OFFER_EVENT as OFFERS_TOPIC_EVENT
from shared.events import (
    BasketLine,
    OfferExpired,
    OfferHeldOut,
    OfferIssued,
    OfferRedeemed,
    OfferRevoked,
    ProfileChanged,
    PurchaseSummary,
    RedemptionRejected,
)
from shared.settings import CalendarSettings

KEY = b"test-coupon-key"
UTC = dt.UTC
DAY1 = dt.datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
"""Arrival time of every change unless a test says otherwise (all within the lateness)."""


def at(day: int, hour: int = 10) -> dt.datetime:
    """A time `day - 1` days after 1 March 2026."""
    return DAY1 + dt.timedelta(days=day - 1, hours=hour - 10)


class Customer:
    """One customer's ledger and offers, driven by profile changes and clock days through the
    real fold and decider (what the service does for each customer of a batch)."""

    def __init__(
        self,
        rules: OfferRules | None = None,
        *,
        customer_id: str = "c-1",
        lateness: dt.timedelta = dt.timedelta(hours=1),
        **calendar: object,
    ) -> None:
        self.decider = OfferDecider(
            # The rules' own tests keep the hold-out group out of the way (tested on its own).
            rules=rules or OfferRules(holdout=HoldOut(percent=Decimal(0))),
            coupon_key=KEY,
            calendar=CalendarSettings.model_validate(calendar),
            lateness=lateness,
        )
        self.ledger = Ledger(customer_id=customer_id)
        self.offers: dict[str, OfferRecord] = {}
        self.owners: dict[str, str] = {}
        self.days = Days()
        self.events: list[Any] = []
        self.stats: Counter[str] = Counter()

    def send(self, *changes: ProfileChanged, arrival: dt.datetime = NOW) -> list[Any]:
        touched = [t for t in (fold(self.ledger, c) for c in changes) if t is not None]
        return self._recompute(min(touched), arrival) if touched else []

    def tick(self, day: dt.date, arrival: dt.datetime = NOW) -> list[Any]:
        self.days = self.days.with_day(day)
        return self._recompute(self.decider.day_start(day), arrival)

    def _recompute(self, since: dt.datetime, arrival: dt.datetime) -> list[Any]:
        result = self.decider.recompute(
            self.ledger,
            since=since,
            days=self.days,
            arrival=arrival,
            offers=self.offers,
            owners=self.owners,
        )
        self.offers.update(result.offers)
        self.events += result.events
        self.stats.update(result.stats)
        return list(result.events)

    def live(self) -> dict[str, str]:
        """offer id -> state, of every offer neither revoked."""
        return {k: o.state for k, o in sorted(self.offers.items()) if o.state != "revoked"}


def change(
    event_id: str,
    when: dt.datetime,
    cause: str,
    customer: str = "c-1",
    **fields: Any,
) -> ProfileChanged:
    base: dict[str, Any] = {
        "customer_id": customer,
        "cause_event_id": event_id,
        "cause_type": cause,
        "occurred_at": when,
        "marketing_consent": True,
        "has_email": True,
    }
    base.update(fields)
    return ProfileChanged(**base)


def signup(
    when: dt.datetime = dt.datetime(2020, 1, 1, tzinfo=UTC),
    *,
    consent: bool = True,
    email: bool = True,
    birth: dt.date | None = None,
    event_id: str = "s-1",
    customer: str = "c-1",
) -> ProfileChanged:
    return change(
        event_id,
        when,
        "customer_signed_up",
        customer,
        consent_given=consent,
        email_given=email,
        birthday=f"{birth:%m-%d}" if birth else None,
        birth_date_given=birth is not None,
    )


def consent(when: dt.datetime, value: bool, event_id: str) -> ProfileChanged:
    return change(event_id, when, "consent_changed", consent_given=value)


def purchase(
    event_id: str,
    when: dt.datetime,
    skus: tuple[str, ...] = ("MILK",),
    *,
    coupons: tuple[str, ...] = (),
    store: str = "S001",
    customer: str = "c-1",
    amounts: dict[str, str] | None = None,
    categories: dict[str, str] | None = None,
) -> ProfileChanged:
    amounts = amounts or {}
    categories = categories or {}
    lines = tuple(
        BasketLine(sku=s, category=categories.get(s), amount=Decimal(amounts.get(s, "2.50")))
        for s in skus
    )
    return change(
        event_id,
        when,
        "purchase_recorded",
        customer,
        purchase=PurchaseSummary(
            event_id=event_id,
            store_id=store,
            total=sum((line.amount for line in lines), Decimal(0)),
            coupons=coupons,
            products={s: f"Product {s}" for s in skus},
            card_id="card-1",
            lines=lines,
        ),
        first_purchase_at=when,
        last_purchase_at=when,
    )


def milk_three_times(c: Customer, last: dt.datetime = DAY1, first_days_before: int = 20) -> None:
    c.send(
        purchase("m-1", last - dt.timedelta(days=first_days_before)),
        purchase("m-2", last - dt.timedelta(days=5)),
        purchase("m-3", last),
    )


def issued(events: list[Any]) -> list[OfferIssued]:
    return [e for e in events if isinstance(e, OfferIssued)]


def of_type(events: list[Any], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def customer_with_consent(**kwargs: Any) -> Customer:
    c = Customer(**kwargs)
    c.send(signup())
    return c


# ---------------------------------------------------------------- frequent item


def test_sku_in_three_checkouts_earns_a_coupon_for_that_sku() -> None:
    c = customer_with_consent()
    milk_three_times(c)
    [offer] = issued(c.events)
    assert offer.kind == "frequent_item"
    assert (offer.sku, offer.scope) == ("MILK", "sku")
    assert offer.product_name == "Product MILK"
    assert offer.discount_percent == Decimal(10)
    assert offer.valid_from == dt.date(2026, 3, 1)
    assert offer.valid_until == dt.date(2026, 3, 15)
    assert offer.issued_at == DAY1
    assert offer.template == "frequent_item"
    assert offer.trigger is not None
    assert (offer.trigger.type, offer.trigger.event_ids) == ("purchase", ("m-1", "m-2", "m-3"))
    assert c.stats["issued_frequent_item"] == 1


def test_sku_in_two_checkouts_earns_nothing() -> None:
    c = customer_with_consent()
    c.send(purchase("m-1", DAY1 - dt.timedelta(days=3)), purchase("m-2", DAY1))
    assert issued(c.events) == []


def test_the_same_checkout_delivered_twice_counts_once() -> None:
    c = customer_with_consent()
    early = purchase("m-1", DAY1 - dt.timedelta(days=3))
    c.send(early, early, purchase("m-2", DAY1))
    c.send(purchase("m-2", DAY1))
    assert issued(c.events) == []


def test_checkouts_spanning_exactly_thirty_days_count_but_thirty_one_do_not() -> None:
    # The window is counted in local calendar days, both ends included.
    thirty = customer_with_consent()
    milk_three_times(thirty, first_days_before=30)
    thirty_one = customer_with_consent()
    milk_three_times(thirty_one, first_days_before=31)
    assert issued(thirty.events)
    assert not issued(thirty_one.events)


def test_window_is_counted_in_the_stores_local_days() -> None:
    # 23:30 UTC on 29 Jan is 30 Jan in Paris: within 30 local days of 1 March (UTC 1 March 10:00).
    first = dt.datetime(2026, 1, 29, 23, 30, tzinfo=UTC)
    for zones, expected in (({"S001": "Europe/Paris"}, 1), ({}, 0)):
        c = Customer(store_timezones=zones)
        c.send(signup())
        c.send(
            purchase("m-1", first),
            purchase("m-2", DAY1 - dt.timedelta(days=2)),
            purchase("m-3", DAY1),
        )
        assert len(issued(c.events)) == expected


def test_offer_is_valid_from_the_purchases_local_date() -> None:
    late = dt.datetime(2026, 3, 1, 23, 30, tzinfo=UTC)  # 2 March in Paris
    c = Customer(store_timezones={"S001": "Europe/Paris"})
    c.send(signup())
    milk_three_times(c, late)
    [offer] = issued(c.events)
    assert offer.valid_from == dt.date(2026, 3, 2)
    assert offer.valid_until == dt.date(2026, 3, 16)


def test_a_later_checkout_does_not_count_for_an_earlier_one() -> None:
    c = customer_with_consent()
    c.send(purchase("m-3", DAY1 + dt.timedelta(days=1)))  # arrives first, happened last
    c.send(purchase("m-1", DAY1 - dt.timedelta(days=1)), purchase("m-2", DAY1))
    [offer] = issued(c.events)
    assert offer.trigger is not None
    assert offer.trigger.event_ids == ("m-1", "m-2", "m-3")  # earned at the third, not before


@pytest.mark.parametrize(("days_later", "issues"), [(29, False), (30, True)])
def test_frequent_item_cooldown_is_thirty_days_on_event_time(days_later: int, issues: bool) -> None:
    c = customer_with_consent()
    milk_three_times(c)
    later = at(1 + days_later)
    c.send(
        purchase("n-1", later - dt.timedelta(days=2)),
        purchase("n-2", later - dt.timedelta(days=1)),
        purchase("n-3", later),
    )
    assert len(issued(c.events)) == (2 if issues else 1)
    assert c.stats["suppressed_cooldown"] >= (0 if issues else 1)


def test_cooldown_is_per_sku() -> None:
    c = customer_with_consent()
    milk_three_times(c)
    c.send(
        purchase("e-1", at(1, 11), ("EGGS",)),
        purchase("e-2", at(2), ("EGGS",)),
        purchase("e-3", at(3), ("EGGS",)),
    )
    assert [o.sku for o in issued(c.events)] == ["MILK", "EGGS"]


def test_two_triggers_in_one_batch_issue_once() -> None:
    c = customer_with_consent()
    c.send(
        purchase("m-1", at(1) - dt.timedelta(days=20)),
        purchase("m-2", at(1) - dt.timedelta(days=5)),
        purchase("m-3", at(1)),
        purchase("m-4", at(2)),
    )
    assert len(issued(c.events)) == 1
    assert c.stats["suppressed_cooldown"] == 1


def test_same_input_gives_the_same_offer_id_and_code() -> None:
    a, b = customer_with_consent(), customer_with_consent()
    milk_three_times(a)
    milk_three_times(b)
    assert issued(a.events) == issued(b.events)
    [offer] = issued(a.events)
    assert offer.offer_id == offer_id_for("frequent_item", "c-1", "MILK", "m-3")
    assert offer.coupon_code == coupon_code_for(offer.offer_id, KEY)


def test_a_change_delivered_again_changes_nothing_and_publishes_nothing() -> None:
    c = customer_with_consent()
    milk_three_times(c)
    assert c.send(purchase("m-3", DAY1)) == []
    assert c.send(signup()) == []
    assert len(issued(c.events)) == 1


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [({"consent": False}, "suppressed_consent"), ({"email": False}, "suppressed_no_email")],
)
def test_customer_without_consent_or_email_gets_no_offer(
    kwargs: dict[str, bool], reason: str
) -> None:
    c = Customer()
    c.send(signup(**kwargs))
    milk_three_times(c)
    assert issued(c.events) == []
    assert c.stats[reason] == 1


def test_erased_customer_gets_no_offer_and_keeps_no_personal_data() -> None:
    c = Customer()
    c.send(signup(birth=dt.date(1990, 5, 17)))
    c.send(change("x-1", DAY1 - dt.timedelta(days=30), "customer_erased", erased=True))
    milk_three_times(c)
    assert issued(c.events) == []
    assert c.ledger.birth_date is None
    assert c.ledger.purchases == []


def test_disabled_rule_issues_nothing() -> None:
    c = Customer(OfferRules.model_validate({"frequent_item": {"enabled": False}}))
    c.send(signup())
    milk_three_times(c)
    assert issued(c.events) == []


def test_rule_parameters_come_from_the_rules() -> None:
    rules = OfferRules.model_validate(
        {
            "frequent_item": {"min_checkouts": 2, "discount_percent": "12.5", "validity_days": 3},
            "holdout": {"percent": 0},
        }
    )
    c = Customer(rules)
    c.send(signup())
    c.send(purchase("m-1", DAY1 - dt.timedelta(days=1)), purchase("m-2", DAY1))
    [offer] = issued(c.events)
    assert offer.discount_percent == Decimal("12.5")
    assert offer.valid_until == dt.date(2026, 3, 4)


def test_leap_day_dates() -> None:
    assert one_year_after(dt.date(2024, 2, 29)) == dt.date(2025, 2, 28)
    assert one_year_after(dt.date(2025, 3, 1)) == dt.date(2026, 3, 1)
    assert birthday_month_days(dt.date(2025, 2, 28)) == ("02-28", "02-29")
    assert birthday_month_days(dt.date(2024, 2, 28)) == ("02-28",)
    assert birthday_month_days(dt.date(2024, 2, 29)) == ("02-29",)


# ---------------------------------------------------------------- calendar rules


def test_birthday_coupon_on_the_birthday_once_a_year() -> None:
    c = Customer()
    c.send(signup(birth=dt.date(1990, 5, 17)))
    day = dt.date(2026, 5, 17)
    c.tick(day - dt.timedelta(days=1))
    assert issued(c.events) == []
    c.tick(day)
    [offer] = issued(c.events)
    assert (offer.kind, offer.discount_percent, offer.sku, offer.scope) == (
        "birthday",
        Decimal(15),
        None,
        "basket",
    )
    assert (offer.valid_from, offer.valid_until) == (day, dt.date(2026, 5, 24))
    assert offer.issued_at == dt.datetime(2026, 5, 17, tzinfo=UTC)
    assert offer.trigger is not None
    assert (offer.trigger.type, offer.trigger.day) == ("clock", day)
    assert c.tick(day) == []  # the day again: nothing new
    c.tick(dt.date(2027, 5, 17))
    assert [o.valid_from.year for o in issued(c.events)] == [2026, 2027]


def test_birthday_is_issued_at_midnight_of_the_calendar_zone() -> None:
    c = Customer(timezone="Europe/Paris")
    c.send(signup(birth=dt.date(1990, 5, 17)))
    c.tick(dt.date(2026, 5, 17))
    [offer] = issued(c.events)
    assert offer.issued_at == dt.datetime(2026, 5, 16, 22, 0, tzinfo=UTC)


def test_leap_day_birthday_is_celebrated_on_28_february_in_other_years() -> None:
    c = Customer()
    c.send(signup(birth=dt.date(2000, 2, 29)))
    c.tick(dt.date(2027, 2, 28))
    assert [o.valid_from for o in issued(c.events)] == [dt.date(2027, 2, 28)]


def test_anniversary_one_year_after_first_purchase_once() -> None:
    c = customer_with_consent()
    c.send(purchase("p-1", dt.datetime(2025, 3, 1, 12, tzinfo=UTC)))
    c.tick(dt.date(2026, 2, 28))
    c.tick(dt.date(2026, 3, 1))
    [offer] = issued(c.events)
    assert (offer.kind, offer.valid_from) == ("anniversary", dt.date(2026, 3, 1))
    c.tick(dt.date(2027, 3, 1))
    assert len(issued(c.events)) == 1


def test_leap_day_first_purchase_anniversary_is_28_february() -> None:
    c = customer_with_consent()
    c.send(purchase("p-1", dt.datetime(2024, 2, 29, 12, tzinfo=UTC)))
    c.tick(dt.date(2025, 2, 28))
    assert [o.kind for o in issued(c.events)] == ["anniversary"]


def five_visits(c: Customer, last: dt.datetime) -> None:
    # A different product each time: no frequent-item offer in the way.
    c.send(*(purchase(f"v-{i}", last - dt.timedelta(days=4 - i), (f"P{i}",)) for i in range(5)))


@pytest.mark.parametrize(("days_since", "issues"), [(60, False), (61, True)])
def test_win_back_after_sixty_days_without_a_visit(days_since: int, issues: bool) -> None:
    c = customer_with_consent()
    last = dt.datetime(2026, 3, 1, 12, tzinfo=UTC)
    five_visits(c, last)
    c.tick(last.date() + dt.timedelta(days=days_since))
    assert [o.kind for o in issued(c.events)] == (["win_back"] if issues else [])


def test_win_back_needs_five_visits() -> None:
    c = customer_with_consent()
    c.send(*(purchase(f"v-{i}", DAY1 + dt.timedelta(days=i), (f"P{i}",)) for i in range(4)))
    c.tick(DAY1.date() + dt.timedelta(days=70))
    assert issued(c.events) == []


@pytest.mark.parametrize(("days_later", "issues"), [(89, False), (90, True)])
def test_win_back_once_per_ninety_days(days_later: int, issues: bool) -> None:
    c = customer_with_consent()
    last = dt.datetime(2026, 3, 1, 12, tzinfo=UTC)
    five_visits(c, last)
    first = last.date() + dt.timedelta(days=61)
    c.tick(first)
    c.tick(first + dt.timedelta(days=days_later))
    assert len(issued(c.events)) == (2 if issues else 1)


def test_a_days_decisions_are_on_the_state_at_its_start() -> None:
    # A visit on the day itself does not stop that day's win-back, whatever arrives first.
    last = dt.datetime(2026, 3, 1, 12, tzinfo=UTC)
    day = last.date() + dt.timedelta(days=61)
    visit = purchase("back", dt.datetime.combine(day, dt.time(9), tzinfo=UTC), ("BREAD",))
    tick_first = customer_with_consent()
    five_visits(tick_first, last)
    tick_first.tick(day)
    tick_first.send(visit)
    visit_first = customer_with_consent()
    five_visits(visit_first, last)
    visit_first.send(visit)
    visit_first.tick(day)
    assert [o.kind for o in issued(tick_first.events)] == ["win_back"]
    assert tick_first.live() == visit_first.live()


def test_calendar_offers_respect_consent_as_of_the_days_start() -> None:
    c = Customer()
    c.send(signup(consent=False, birth=dt.date(1990, 5, 17)))
    c.tick(dt.date(2026, 5, 17))
    assert issued(c.events) == []
    assert c.stats["suppressed_consent"] == 1
    # Consent given during the birthday, after its start: still no birthday coupon.
    c.send(consent(dt.datetime(2026, 5, 17, 9, tzinfo=UTC), True, "k-1"))
    assert issued(c.events) == []


# ---------------------------------------------------------------- frequency cap


def four_skus(c: Customer, day: int) -> None:
    """Four SKUs each bought in three checkouts, the third ones on `day`: four triggers."""
    skus = ("A", "B", "C", "D")
    c.send(
        purchase(f"x-1-{day}", at(day - 2), skus),
        purchase(f"x-2-{day}", at(day - 1), skus),
        purchase(f"x-3-{day}", at(day), skus),
    )


def test_fourth_offer_in_seven_days_is_suppressed_by_the_cap() -> None:
    c = customer_with_consent()
    four_skus(c, 3)
    assert [o.sku for o in issued(c.events)] == ["A", "B", "C"]
    assert c.stats["suppressed_cap"] == 1


def test_offers_older_than_seven_days_do_not_count_towards_the_cap() -> None:
    c = customer_with_consent()
    four_skus(c, 3)
    c.send(
        purchase("y-1", at(8), ("E",)),
        purchase("y-2", at(9), ("E",)),
        purchase("y-3", at(10), ("E",)),
    )
    assert [o.sku for o in issued(c.events)] == ["A", "B", "C", "E"]


def test_birthday_is_exempt_from_the_cap() -> None:
    c = Customer()
    c.send(signup(birth=dt.date(1990, 3, 3)))
    four_skus(c, 3)
    c.tick(dt.date(2026, 3, 3))
    assert sorted(o.kind for o in issued(c.events)) == ["birthday", *["frequent_item"] * 3]


def test_cap_counts_the_days_before_only() -> None:
    day = dt.date(2026, 3, 10)
    before = [day - dt.timedelta(days=d) for d in (1, 3, 6)]
    assert would_exceed_cap(day, before, most=3, window=7)
    assert not would_exceed_cap(day, [day - dt.timedelta(days=7)] * 3, most=3, window=7)
    assert not would_exceed_cap(day, before, most=4, window=7)


def test_cap_can_be_disabled() -> None:
    c = Customer(
        OfferRules(frequency_cap=FrequencyCap(enabled=False), holdout=HoldOut(percent=Decimal(0)))
    )
    c.send(signup())
    four_skus(c, 3)
    assert len(issued(c.events)) == 4


def test_the_cap_chooses_by_event_time_not_by_arrival() -> None:
    in_order, reversed_ = customer_with_consent(), customer_with_consent()
    four_skus(in_order, 3)
    for chunk in reversed(
        [
            (purchase("x-1-3", at(1), ("A", "B", "C", "D")),),
            (purchase("x-2-3", at(2), ("A", "B", "C", "D")),),
            (purchase("x-3-3", at(3), ("A", "B", "C", "D")),),
        ]
    ):
        reversed_.send(*chunk)
    assert in_order.live() == reversed_.live()


# ---------------------------------------------------------------- hold-out


def test_held_out_customer_gets_no_offer_but_the_decision_is_published() -> None:
    c = Customer(OfferRules(holdout=HoldOut(percent=Decimal(100))))
    c.send(signup())
    milk_three_times(c)
    assert issued(c.events) == []
    [held] = of_type(c.events, OfferHeldOut)
    assert (held.kind, held.sku, held.period) == ("frequent_item", "MILK", "2026-W09")
    assert c.stats["held_out_frequent_item"] == 1


# ---------------------------------------------------------------- codes and ids


def test_coupon_code_is_twelve_base32_characters_keyed_and_not_from_the_customer() -> None:
    offer_id = offer_id_for("birthday", "c-1", "2026", "2026")
    code = coupon_code_for(offer_id, KEY)
    assert len(code) == 14
    assert code.count("-") == 2
    assert set(code.replace("-", "")) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
    assert coupon_code_for(offer_id, b"another key") != code
    assert "c-1" not in code
    assert offer_id_for("birthday", "c-2", "2026", "2026") != offer_id


def test_codes_typed_loosely_are_normalized() -> None:
    assert normalize_code(" abcd-efgh ijkl ") == "ABCD-EFGH-IJKL"
    assert normalize_code("abcdefghijkl") == "ABCD-EFGH-IJKL"
    assert normalize_code("x" * 100) == "X" * 64


# ---------------------------------------------------------------- redemption and discounts


def issued_milk() -> tuple[Customer, OfferIssued]:
    c = customer_with_consent()
    milk_three_times(c)
    [offer] = issued(c.events)
    return c, offer


def test_listed_code_redeems_the_offer_once_with_its_discount() -> None:
    c, offer = issued_milk()
    c.send(
        purchase(
            "r-1",
            at(5),
            ("MILK", "BREAD"),
            coupons=(offer.coupon_code.lower().replace("-", ""),),
            amounts={"MILK": "3.00", "BREAD": "2.00"},
        )
    )
    [redeemed] = of_type(c.events, OfferRedeemed)
    assert (redeemed.offer_id, redeemed.checkout_event_id) == (offer.offer_id, "r-1")
    assert redeemed.basket_total == Decimal("5.00")
    assert redeemed.discount == Decimal("0.30")  # 10 % of the milk only
    assert c.offers[offer.offer_id].state == "redeemed"
    c.send(purchase("r-2", at(6), ("MILK",), coupons=(offer.coupon_code,)))
    [rejected] = of_type(c.events, RedemptionRejected)
    assert (rejected.reason, rejected.offer_id) == ("already_redeemed", offer.offer_id)


def test_a_product_coupon_does_not_redeem_on_a_basket_without_the_product() -> None:
    c, offer = issued_milk()
    c.send(purchase("r-1", at(5), ("BREAD",), coupons=(offer.coupon_code,)))
    [rejected] = of_type(c.events, RedemptionRejected)
    assert rejected.reason == "not_in_basket"
    assert c.offers[offer.offer_id].state == "issued"


def test_unknown_and_foreign_codes_are_rejected_without_naming_the_offer() -> None:
    c = customer_with_consent()
    c.owners["ABCD-EFGH-IJKL"] = "c-2"
    c.send(purchase("r-1", at(5), coupons=("NOPE-NOPE-NOPE", "ABCD-EFGH-IJKL")))
    reasons = {(r.coupon_code, r.reason, r.offer_id) for r in of_type(c.events, RedemptionRejected)}
    assert reasons == {
        ("NOPE-NOPE-NOPE", "unknown_code", None),
        ("ABCD-EFGH-IJKL", "foreign_code", None),
    }


@pytest.mark.parametrize(("day", "reason"), [(15, None), (16, "expired")])
def test_code_is_valid_through_its_last_day(day: int, reason: str | None) -> None:
    c, offer = issued_milk()  # valid until 15 March
    c.send(purchase("r-1", at(day, hour=20), coupons=(offer.coupon_code,)))
    if reason is None:
        assert of_type(c.events, OfferRedeemed)
    else:
        [rejected] = of_type(c.events, RedemptionRejected)
        assert rejected.reason == reason


def test_rejection_id_is_deterministic() -> None:
    a, b = customer_with_consent(), customer_with_consent()
    a.send(purchase("r-1", at(5), coupons=("NOPE-NOPE-NOPE",)))
    b.send(purchase("r-1", at(5), coupons=("nope nope nope",)))
    assert of_type(a.events, RedemptionRejected) == of_type(b.events, RedemptionRejected)


def test_discount_per_scope_to_the_cent() -> None:
    basket = (
        BasketLine(sku="MILK", category="dairy", amount=Decimal("3.33")),
        BasketLine(sku="EGGS", category="dairy", amount=Decimal("2.00")),
        BasketLine(sku="BREAD", category="bakery", amount=Decimal("1.70")),
    )

    def offer(**fields: Any) -> OfferIssued:
        base: dict[str, Any] = {
            "offer_id": "o",
            "customer_id": "c",
            "kind": "frequent_item",
            "coupon_code": "C",
            "discount_percent": Decimal(15),
            "valid_from": dt.date(2026, 3, 1),
            "valid_until": dt.date(2026, 3, 9),
            "issued_at": DAY1,
            "template": "t",
        }
        return OfferIssued(**(base | fields))

    assert discount_for(offer(scope="sku", sku="MILK"), basket) == Decimal("0.50")
    assert discount_for(offer(scope="category", category="dairy"), basket) == Decimal("0.80")
    assert discount_for(offer(scope="basket"), basket) == Decimal("1.05")
    assert discount_for(offer(scope="sku", sku="KIWI"), basket) is None
    assert discount_for(offer(scope="category", category="fruit"), basket) is None


def test_check_code_gives_every_reason() -> None:
    c, offer = issued_milk()
    record = c.offers[offer.offer_id]
    milk = (BasketLine(sku="MILK", amount=Decimal(10)),)
    day = dt.date(2026, 3, 5)

    def check(record: OfferRecord | None, **kw: Any) -> str | None:
        args: dict[str, Any] = {"customer_id": "c-1", "owners": {"c-1"}, "day": day, "lines": milk}
        return check_code(record, **(args | kw))[0]

    assert check(record) is None
    assert check_code(record, customer_id="c-1", owners={"c-1"}, day=day, lines=milk)[1] == 1
    assert check(None) == "unknown_code"
    assert check(record, customer_id="c-2", owners={"c-2"}) == "foreign_code"
    assert check(record.model_copy(update={"state": "redeemed"})) == "already_redeemed"
    assert check(record.model_copy(update={"state": "revoked"})) == "revoked"
    assert check(record, day=dt.date(2026, 3, 16)) == "expired"
    assert check(record, lines=(BasketLine(sku="BREAD", amount=Decimal(1)),)) == "not_in_basket"


# ---------------------------------------------------------------- expiry


def test_offers_past_their_last_day_expire_once() -> None:
    c, offer = issued_milk()  # valid until 15 March
    c.tick(dt.date(2026, 3, 15))
    assert of_type(c.events, OfferExpired) == []
    c.tick(dt.date(2026, 3, 16))
    [expired] = of_type(c.events, OfferExpired)
    assert (expired.offer_id, expired.expired_on) == (offer.offer_id, dt.date(2026, 3, 16))
    c.tick(dt.date(2026, 3, 17))
    c.tick(dt.date(2026, 3, 16))
    assert len(of_type(c.events, OfferExpired)) == 1


def test_a_late_checkout_from_before_the_expiry_still_redeems() -> None:
    c, offer = issued_milk()
    c.tick(dt.date(2026, 3, 16))
    c.send(purchase("r-1", at(14), coupons=(offer.coupon_code,)))
    [redeemed] = of_type(c.events, OfferRedeemed)
    assert redeemed.offer_id == offer.offer_id
    assert c.offers[offer.offer_id].state == "redeemed"


# ---------------------------------------------------------------- corrections


def test_a_late_consent_withdrawal_revokes_the_offer_it_shows_was_wrong() -> None:
    c, offer = issued_milk()
    c.send(consent(DAY1 - dt.timedelta(days=1), False, "k-1"))
    [revoked] = of_type(c.events, OfferRevoked)
    assert (revoked.offer_id, revoked.reason, revoked.coupon_code) == (
        offer.offer_id,
        "consent",
        offer.coupon_code,
    )
    assert c.offers[offer.offer_id].state == "revoked"
    c.send(purchase("r-1", at(5), coupons=(offer.coupon_code,)))
    assert [r.reason for r in of_type(c.events, RedemptionRejected)] == ["revoked"]


def test_a_late_purchase_issues_the_offer_event_time_order_gives_with_the_same_id() -> None:
    in_order = customer_with_consent()
    milk_three_times(in_order)
    late = customer_with_consent()
    late.send(purchase("m-1", DAY1 - dt.timedelta(days=20)), purchase("m-3", DAY1))
    assert issued(late.events) == []
    late.send(purchase("m-2", DAY1 - dt.timedelta(days=5)))
    assert issued(late.events) == issued(in_order.events)


def test_a_late_consent_change_older_than_a_newer_one_does_not_win() -> None:
    c = Customer()
    c.send(signup(consent=False))
    c.send(consent(DAY1 - dt.timedelta(days=30), True, "k-2"))
    c.send(consent(DAY1 - dt.timedelta(days=35), False, "k-1"))  # older: consent still given
    milk_three_times(c)
    assert len(issued(c.events)) == 1


def test_decisions_older_than_the_allowed_lateness_stand() -> None:
    c = customer_with_consent()
    milk_three_times(c)  # decided at NOW
    c.send(consent(DAY1 - dt.timedelta(days=1), False, "k-1"), arrival=NOW + dt.timedelta(hours=2))
    assert of_type(c.events, OfferRevoked) == []
    assert len(c.live()) == 1


def test_clock_days_completed_in_any_order_give_the_same_offers() -> None:
    days = [dt.date(2026, 5, 15) + dt.timedelta(days=n) for n in range(5)]
    results = []
    for order in (days, list(reversed(days)), [days[2], days[0], days[4], days[1], days[3]]):
        c = Customer()
        c.send(signup(birth=dt.date(1990, 5, 17)))
        for day in order:
            c.tick(day)
        results.append(c.live())
        assert c.days == Days(days[0], days[-1])
    assert results[0] == results[1] == results[2] != {}


def test_a_merged_customers_facts_count_for_the_customer_it_now_feeds() -> None:
    a, b = Customer(), Customer(customer_id="c-2")
    a.send(signup())
    a.send(purchase("m-1", DAY1 - dt.timedelta(days=3)))
    b.send(purchase("m-2", DAY1 - dt.timedelta(days=2), customer="c-2"))
    b.send(purchase("m-3", DAY1 - dt.timedelta(days=1), customer="c-2"))
    since = merge_into(a.ledger, b.ledger)
    assert since == DAY1 - dt.timedelta(days=2)
    a._recompute(since, NOW)
    [offer] = issued(a.events)
    assert offer.trigger is not None
    assert offer.trigger.event_ids == ("m-1", "m-2", "m-3")
    assert a.ledger.aliases == ["c-2"]


def test_published_events_parse_with_the_offers_topic_adapter() -> None:
    c, _ = issued_milk()
    c.send(purchase("r-1", at(5), coupons=("NOPE-NOPE-NOPE",)))
    c.send(consent(DAY1 - dt.timedelta(days=1), False, "k-1"))
    for event in c.events:
        assert OFFERS_TOPIC_EVENT.validate_json(event.model_dump_json()) == event


# ---------------------------------------------------------------- rules file


def test_rules_file_in_yaml_overrides_defaults(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("birthday:\n  discount_percent: 20\nwin_back:\n  enabled: false\n")
    rules = load_rules(path)
    assert rules.birthday.discount_percent == Decimal(20)
    assert rules.birthday.validity_days == 7
    assert rules.win_back.enabled is False


def test_rules_file_in_toml_overrides_defaults(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("[frequent_item]\nmin_checkouts = 4\n")
    assert load_rules(path).frequent_item.min_checkouts == 4


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("frequent_item:\n  discount_percent: 150\n", "frequent_item.discount_percent"),
        ("birthday:\n  discount: 20\n", "birthday.discount"),
        ("frequency_cap:\n  exempt_kinds: [newsletter]\n", "frequency_cap.exempt_kinds.0"),
    ],
)
def test_bad_rules_file_is_refused_naming_the_field(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(RulesFileError, match=field.replace(".", r"\.")):
        load_rules(path)


def test_rules_file_that_is_not_yaml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("birthday: [unclosed\n")
    with pytest.raises(RulesFileError, match="not valid yaml"):
        load_rules(path)


def test_a_win_back_is_due_on_the_first_day_away_long_enough_even_if_a_later_visit_arrived() -> (
    None
):
    c = customer_with_consent()
    last = dt.datetime(2026, 3, 1, 12, tzinfo=UTC)
    five_visits(c, last)
    lapsed = last.date() + dt.timedelta(days=61)
    assert c.decider.win_back_due(c.ledger, Days()) == lapsed
    # A visit three days after that day, arrived before the day's tick: the day still counts.
    c.send(purchase("back", dt.datetime.combine(lapsed + dt.timedelta(days=3), dt.time(9), UTC)))
    assert c.decider.win_back_due(c.ledger, Days(last.date(), last.date())) == lapsed
    assert c.decider.win_back_due(c.ledger, Days(last.date(), lapsed)) == lapsed + dt.timedelta(
        days=1
    )
    # Once the days up to the visit are completed, the next chance is 61 days after it.
    done = Days(last.date(), lapsed + dt.timedelta(days=10))
    assert c.decider.win_back_due(c.ledger, done) == lapsed + dt.timedelta(days=3 + 61)


def test_an_erasure_leaves_no_open_coupon_whichever_arrived_first() -> None:
    erase = change("x-1", DAY1 + dt.timedelta(days=1), "customer_erased", erased=True)
    after = customer_with_consent()
    milk_three_times(after)
    [offer] = issued(after.events)
    [revoked] = of_type(after.send(erase), OfferRevoked)
    assert (revoked.offer_id, revoked.reason) == (offer.offer_id, "erased")
    together = customer_with_consent()
    together.send(
        purchase("m-1", DAY1 - dt.timedelta(days=20)),
        purchase("m-2", DAY1 - dt.timedelta(days=5)),
        purchase("m-3", DAY1),
        erase,
    )
    assert after.live() == together.live() == {}
