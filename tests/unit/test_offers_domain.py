"""The offer rules, pure: frequent items, calendar rules, eligibility, cap, redemption, expiry."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest

from services.offers.domain import (
    CustomerQuery,
    CustomerRecord,
    OfferEngine,
    OfferRecord,
    Outcome,
    Snapshot,
    birthday_month_days,
    coupon_code_for,
    matches,
    normalize_code,
    offer_id_for,
    one_year_after,
    would_exceed_cap,
)
from services.offers.settings import (
    FrequencyCap,
    HoldOut,
    OfferRules,
    RulesFileError,
    load_rules,
)
from shared.events import OFFER_EVENT as OFFERS_TOPIC_EVENT
from shared.events import (
    OfferIssued,
    OfferRedeemed,
    ProfileChanged,
    PurchaseSummary,
    RedemptionRejected,
)
from shared.settings import CalendarSettings

KEY = b"test-coupon-key"
UTC = dt.UTC
DAY1 = dt.datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


def engine(rules: OfferRules | None = None, **calendar: object) -> OfferEngine:
    return OfferEngine(
        # The rules' own tests keep the hold-out group out of the way (tested on its own).
        rules=rules or OfferRules(holdout=HoldOut(percent=Decimal(0))),
        coupon_key=KEY,
        calendar=CalendarSettings.model_validate(calendar),
    )


def at(day: int, hour: int = 10) -> dt.datetime:
    """A time `day - 1` days after 1 March 2026."""
    return DAY1 + dt.timedelta(days=day - 1, hours=hour - 10)


def profile(
    *,
    customer: str = "c-1",
    when: dt.datetime = DAY1,
    event_id: str = "e-1",
    sku_times: dict[str, tuple[dt.datetime, ...]] | None = None,
    coupons: tuple[str, ...] = (),
    consent: bool = True,
    has_email: bool = True,
    erased: bool = False,
    store: str = "S001",
    **fields: object,
) -> ProfileChanged:
    sku_times = sku_times or {}
    purchase = PurchaseSummary(
        event_id=event_id,
        store_id=store,
        total=Decimal("12.50"),
        coupons=coupons,
        products={sku: f"Product {sku}" for sku in sku_times} or {"BREAD": None},
        card_id="card-1",
    )
    return ProfileChanged(
        customer_id=customer,
        cause_event_id=event_id,
        cause_type="purchase_recorded",
        occurred_at=when,
        marketing_consent=consent,
        has_email=has_email,
        erased=erased,
        purchase=purchase,
        sku_checkouts=sku_times,
        **fields,  # type: ignore[arg-type]
    )


def issued(outcome: Outcome) -> list[OfferIssued]:
    return [e for e in outcome.events if isinstance(e, OfferIssued)]


def three_milk(last: dt.datetime = DAY1, first_days_before: int = 20) -> tuple[dt.datetime, ...]:
    return (last - dt.timedelta(days=first_days_before), last - dt.timedelta(days=5), last)


# ---------------------------------------------------------------- frequent item


def test_sku_in_three_checkouts_earns_a_coupon_for_that_sku() -> None:
    out = engine().on_profiles([profile(sku_times={"MILK": three_milk()})], Snapshot())
    [offer] = issued(out)
    assert offer.kind == "frequent_item"
    assert offer.sku == "MILK"
    assert offer.product_name == "Product MILK"
    assert offer.discount_percent == Decimal(10)
    assert offer.valid_from == dt.date(2026, 3, 1)
    assert offer.valid_until == dt.date(2026, 3, 15)
    assert offer.issued_at == DAY1
    assert offer.template == "frequent_item"
    assert out.stats["issued_frequent_item"] == 1
    assert list(out.changes.new_offers) == [offer.offer_id]


def test_sku_in_two_checkouts_earns_nothing() -> None:
    times = (DAY1 - dt.timedelta(days=3), DAY1)
    out = engine().on_profiles([profile(sku_times={"MILK": times})], Snapshot())
    assert issued(out) == []


def test_the_same_checkout_time_repeated_counts_once() -> None:
    early = DAY1 - dt.timedelta(days=3)
    times = (early, early, DAY1, DAY1)
    out = engine().on_profiles([profile(sku_times={"MILK": times})], Snapshot())
    assert issued(out) == []


def test_checkouts_spanning_exactly_thirty_days_count_but_thirty_one_do_not() -> None:
    # The window is counted in local calendar days, both ends included.
    thirty = three_milk(first_days_before=30)
    thirty_one = three_milk(first_days_before=31)
    assert issued(engine().on_profiles([profile(sku_times={"MILK": thirty})], Snapshot()))
    assert not issued(engine().on_profiles([profile(sku_times={"MILK": thirty_one})], Snapshot()))


def test_window_is_counted_in_the_stores_local_days() -> None:
    # 23:30 UTC on 29 Jan is 30 Jan in Paris: within 30 local days of 1 March (UTC 1 March 10:00).
    first = dt.datetime(2026, 1, 30, 23, 30, tzinfo=UTC) - dt.timedelta(days=1)
    times = (first, DAY1 - dt.timedelta(days=2), DAY1)
    paris = engine(store_timezones={"S001": "Europe/Paris"})
    assert issued(paris.on_profiles([profile(sku_times={"MILK": times})], Snapshot()))
    assert not issued(engine().on_profiles([profile(sku_times={"MILK": times})], Snapshot()))


def test_offer_is_valid_from_the_purchases_local_date() -> None:
    late = dt.datetime(2026, 3, 1, 23, 30, tzinfo=UTC)  # 2 March in Paris
    paris = engine(store_timezones={"S001": "Europe/Paris"})
    out = paris.on_profiles([profile(when=late, sku_times={"MILK": three_milk(late)})], Snapshot())
    [offer] = issued(out)
    assert offer.valid_from == dt.date(2026, 3, 2)
    assert offer.valid_until == dt.date(2026, 3, 16)


def test_later_checkouts_than_the_event_are_ignored() -> None:
    times = (DAY1 - dt.timedelta(days=1), DAY1, DAY1 + dt.timedelta(days=1))
    out = engine().on_profiles([profile(sku_times={"MILK": times})], Snapshot())
    assert issued(out) == []


@pytest.mark.parametrize(("days_later", "issues"), [(29, False), (30, True)])
def test_frequent_item_cooldown_is_thirty_days_on_event_time(days_later: int, issues: bool) -> None:
    e = engine()
    first = e.on_profiles([profile(sku_times={"MILK": three_milk()})], Snapshot())
    later = at(1 + days_later)
    second = e.on_profiles(
        [profile(when=later, event_id="e-2", sku_times={"MILK": three_milk(later)})],
        Snapshot(offers=dict(first.changes.new_offers)),
    )
    assert bool(issued(second)) is issues
    assert second.stats["suppressed_cooldown"] == (0 if issues else 1)


def test_cooldown_is_per_sku() -> None:
    e = engine()
    first = e.on_profiles([profile(sku_times={"MILK": three_milk()})], Snapshot())
    second = e.on_profiles(
        [profile(when=at(2), event_id="e-2", sku_times={"EGGS": three_milk(at(2))})],
        Snapshot(offers=dict(first.changes.new_offers)),
    )
    assert [o.sku for o in issued(second)] == ["EGGS"]


def test_two_triggers_in_one_batch_issue_once() -> None:
    events = [
        profile(sku_times={"MILK": three_milk()}),
        profile(when=at(2), event_id="e-2", sku_times={"MILK": three_milk(at(2))}),
    ]
    out = engine().on_profiles(events, Snapshot())
    assert len(issued(out)) == 1
    assert out.stats["suppressed_cooldown"] == 1


def test_same_input_gives_the_same_offer_id_and_code() -> None:
    a = issued(engine().on_profiles([profile(sku_times={"MILK": three_milk()})], Snapshot()))
    b = issued(engine().on_profiles([profile(sku_times={"MILK": three_milk()})], Snapshot()))
    assert a == b


def test_reprocessing_republishes_the_stored_offer_and_persists_nothing_new() -> None:
    e = engine()
    event = profile(sku_times={"MILK": three_milk()})
    first = e.on_profiles([event], Snapshot())
    again = e.on_profiles([event], Snapshot(offers=dict(first.changes.new_offers)))
    assert issued(again) == issued(first)
    assert again.changes.new_offers == {}
    assert again.stats["republished"] == 1


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"consent": False}, "suppressed_consent"),
        ({"has_email": False}, "suppressed_no_email"),
    ],
)
def test_customer_without_consent_or_email_gets_no_offer(
    fields: dict[str, bool], reason: str
) -> None:
    out = engine().on_profiles([profile(sku_times={"MILK": three_milk()}, **fields)], Snapshot())
    assert issued(out) == []
    assert out.stats[reason] == 1


def test_erased_customer_gets_no_offer_and_keeps_no_personal_data() -> None:
    event = profile(
        sku_times={"MILK": three_milk()},
        erased=True,
        birth_date=dt.date(1990, 5, 17),
        first_purchase_at=DAY1,
        visits=3,
    )
    out = engine().on_profiles([event], Snapshot())
    assert issued(out) == []
    assert out.stats["suppressed_erased"] == 1
    assert out.changes.customers["c-1"] == CustomerRecord(customer_id="c-1", erased=True)


def test_disabled_rule_issues_nothing() -> None:
    rules = OfferRules.model_validate({"frequent_item": {"enabled": False}})
    out = engine(rules).on_profiles([profile(sku_times={"MILK": three_milk()})], Snapshot())
    assert issued(out) == []


def test_rule_parameters_come_from_the_rules() -> None:
    rules = OfferRules.model_validate(
        {"frequent_item": {"min_checkouts": 2, "discount_percent": "12.5", "validity_days": 3}}
    )
    times = (DAY1 - dt.timedelta(days=1), DAY1)
    [offer] = issued(engine(rules).on_profiles([profile(sku_times={"MILK": times})], Snapshot()))
    assert offer.discount_percent == Decimal("12.5")
    assert offer.valid_until == dt.date(2026, 3, 4)


# ---------------------------------------------------------------- read model


def test_read_model_keeps_what_calendar_rules_need_in_local_dates() -> None:
    event = profile(
        birth_date=dt.date(1990, 5, 17),
        first_purchase_at=dt.datetime(2025, 2, 28, 23, 30, tzinfo=UTC),
        last_purchase_at=dt.datetime(2026, 2, 28, 23, 30, tzinfo=UTC),
        visits=7,
        home_store_id="S001",
    )
    customer = engine(store_timezones={"S001": "Europe/Paris"}).customer_from(event)
    assert customer.birth_md == "05-17"
    assert customer.first_purchase_date == dt.date(2025, 3, 1)
    assert customer.anniversary_date == dt.date(2026, 3, 1)
    assert customer.last_visit_date == dt.date(2026, 3, 1)
    assert customer.visits == 7


def test_leap_day_dates() -> None:
    assert one_year_after(dt.date(2024, 2, 29)) == dt.date(2025, 2, 28)
    assert one_year_after(dt.date(2025, 3, 1)) == dt.date(2026, 3, 1)
    assert birthday_month_days(dt.date(2025, 2, 28)) == ("02-28", "02-29")
    assert birthday_month_days(dt.date(2024, 2, 28)) == ("02-28",)
    assert birthday_month_days(dt.date(2024, 2, 29)) == ("02-29",)


# ---------------------------------------------------------------- calendar rules


def customer(**fields: object) -> CustomerRecord:
    base: dict[str, object] = {
        "customer_id": "c-1",
        "marketing_consent": True,
        "has_email": True,
    }
    base.update(fields)
    return CustomerRecord(**base)  # type: ignore[arg-type]


def run_day(
    e: OfferEngine, day: dt.date, customers: list[CustomerRecord], offers: dict[str, OfferRecord]
) -> Outcome:
    """All of a day's queries in order, persisting between them as the service does."""
    total = Outcome()
    offers = dict(offers)
    for query in e.day_queries(day):
        found = {c.customer_id: c for c in customers if matches(query, c)}
        mine = {k: o for k, o in offers.items() if o.customer_id in found}
        out = e.on_day(day, query, Snapshot(customers=found, offers=mine))
        offers.update(out.changes.new_offers)
        total.events += out.events
        total.stats.update(out.stats)
        total.changes.new_offers.update(out.changes.new_offers)
    return total


def test_birthday_coupon_on_the_birthday_once_a_year() -> None:
    e = engine()
    c = customer(birth_md="05-17")
    day = dt.date(2026, 5, 17)
    out = run_day(e, day, [c], {})
    [offer] = issued(out)
    assert (offer.kind, offer.discount_percent, offer.sku) == ("birthday", Decimal(15), None)
    assert (offer.valid_from, offer.valid_until) == (day, dt.date(2026, 5, 24))
    assert offer.issued_at == dt.datetime(2026, 5, 17, tzinfo=UTC)
    again = run_day(e, day, [c], out.changes.new_offers)
    assert issued(again) == [offer]
    assert again.changes.new_offers == {}
    next_year = run_day(e, dt.date(2027, 5, 17), [c], out.changes.new_offers)
    assert [o.valid_from for o in issued(next_year)] == [dt.date(2027, 5, 17)]


def test_birthday_is_issued_at_midnight_of_the_calendar_zone() -> None:
    out = run_day(
        engine(timezone="Europe/Paris"), dt.date(2026, 5, 17), [customer(birth_md="05-17")], {}
    )
    assert issued(out)[0].issued_at == dt.datetime(2026, 5, 16, 22, tzinfo=UTC)


def test_leap_day_birthday_is_celebrated_on_28_february_in_other_years() -> None:
    c = customer(birth_md="02-29")
    assert issued(run_day(engine(), dt.date(2026, 2, 28), [c], {}))
    assert issued(run_day(engine(), dt.date(2028, 2, 29), [c], {}))
    assert not issued(run_day(engine(), dt.date(2028, 2, 28), [c], {}))


def test_anniversary_one_year_after_first_purchase_once() -> None:
    e = engine()
    c = customer(first_purchase_date=dt.date(2025, 3, 1))
    out = run_day(e, dt.date(2026, 3, 1), [c], {})
    [offer] = issued(out)
    assert (offer.kind, offer.discount_percent, offer.valid_until) == (
        "anniversary",
        Decimal(10),
        dt.date(2026, 3, 15),
    )
    assert not issued(run_day(e, dt.date(2026, 2, 28), [c], {}))
    moved = customer(first_purchase_date=dt.date(2025, 4, 1))
    later = run_day(e, dt.date(2026, 4, 1), [moved], out.changes.new_offers)
    assert later.changes.new_offers == {}


def test_leap_day_first_purchase_anniversary_is_28_february() -> None:
    c = customer(first_purchase_date=dt.date(2024, 2, 29))
    assert issued(run_day(engine(), dt.date(2025, 2, 28), [c], {}))


@pytest.mark.parametrize(("days_since", "issues"), [(60, False), (61, True)])
def test_win_back_after_sixty_days_without_a_visit(days_since: int, issues: bool) -> None:
    # "No visit in the last 60 days": the last visit is on or before day - 61.
    day = dt.date(2026, 6, 1)
    c = customer(visits=5, last_visit_date=day - dt.timedelta(days=days_since))
    out = run_day(engine(), day, [c], {})
    assert bool(issued(out)) is issues
    if issues:
        assert issued(out)[0].discount_percent == Decimal(20)


def test_win_back_needs_five_visits() -> None:
    day = dt.date(2026, 6, 1)
    c = customer(visits=4, last_visit_date=dt.date(2026, 1, 1))
    assert not issued(run_day(engine(), day, [c], {}))


@pytest.mark.parametrize(("days_later", "issues"), [(89, False), (90, True)])
def test_win_back_once_per_ninety_days(days_later: int, issues: bool) -> None:
    e = engine()
    c = customer(visits=9, last_visit_date=dt.date(2025, 1, 1))
    day = dt.date(2026, 1, 1)
    first = run_day(e, day, [c], {})
    assert issued(first)
    later = run_day(e, day + dt.timedelta(days=days_later), [c], first.changes.new_offers)
    assert bool(issued(later)) is issues


def test_calendar_offers_respect_consent() -> None:
    c = customer(birth_md="05-17", marketing_consent=False)
    out = run_day(engine(), dt.date(2026, 5, 17), [c], {})
    assert issued(out) == []
    assert out.stats["suppressed_consent"] == 1


def test_erased_customers_match_no_calendar_query() -> None:
    c = CustomerRecord(customer_id="c-1", erased=True, birth_md="05-17")
    assert not matches(CustomerQuery("birthday", month_days=("05-17",)), c)


# ---------------------------------------------------------------- frequency cap


def stored(kind: str, day: dt.date, n: int) -> dict[str, OfferRecord]:
    offers = {}
    for i in range(n):
        offer_id = offer_id_for(kind, "c-1", f"K{i}", str(day))  # type: ignore[arg-type]
        offers[offer_id] = OfferRecord(
            issued=OfferIssued(
                offer_id=offer_id,
                customer_id="c-1",
                kind=kind,  # type: ignore[arg-type]
                coupon_code=coupon_code_for(offer_id, KEY),
                discount_percent=Decimal(10),
                sku=f"K{i}",
                valid_from=day,
                valid_until=day + dt.timedelta(days=14),
                issued_at=dt.datetime.combine(day, dt.time(), tzinfo=UTC),
                template="t",
            ),
            rule_key=f"K{i}",
        )
    return offers


def test_fourth_offer_in_seven_days_is_suppressed_by_the_cap() -> None:
    offers = stored("frequent_item", dt.date(2026, 2, 24), 3)  # 6 days before 1 March
    out = engine().on_profiles([profile(sku_times={"MILK": three_milk()})], Snapshot(offers=offers))
    assert issued(out) == []
    assert out.stats["suppressed_cap"] == 1


def test_offers_older_than_seven_days_do_not_count_towards_the_cap() -> None:
    offers = stored("frequent_item", dt.date(2026, 2, 22), 3)  # 7 days before 1 March
    out = engine().on_profiles([profile(sku_times={"MILK": three_milk()})], Snapshot(offers=offers))
    assert len(issued(out)) == 1


def test_birthday_is_exempt_from_the_cap() -> None:
    day = dt.date(2026, 5, 17)
    offers = stored("frequent_item", day, 3)
    out = run_day(engine(), day, [customer(birth_md="05-17")], offers)
    assert [o.kind for o in issued(out)] == ["birthday"]
    capped = engine().on_profiles(
        [profile(when=at(1), sku_times={"MILK": three_milk()})],
        Snapshot(offers=stored("birthday", dt.date(2026, 3, 1), 3)),
    )
    assert len(issued(capped)) == 1  # birthdays do not count either


def test_cap_checks_every_window_containing_the_day() -> None:
    day = dt.date(2026, 3, 10)
    later = [day + dt.timedelta(days=d) for d in (1, 3, 6)]
    assert would_exceed_cap(day, later, max_offers=3, window=7)
    assert not would_exceed_cap(day, [day + dt.timedelta(days=7)] * 3, max_offers=3, window=7)
    assert not would_exceed_cap(day, later, max_offers=4, window=7)


def test_cap_can_be_disabled() -> None:
    rules = OfferRules(frequency_cap=FrequencyCap(enabled=False))
    offers = stored("frequent_item", dt.date(2026, 3, 1), 5)
    out = engine(rules).on_profiles(
        [profile(sku_times={"MILK": three_milk()})], Snapshot(offers=offers)
    )
    assert len(issued(out)) == 1


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


# ---------------------------------------------------------------- redemption


def issued_offer(e: OfferEngine) -> tuple[OfferIssued, Snapshot]:
    out = e.on_profiles([profile(sku_times={"MILK": three_milk()})], Snapshot())
    [offer] = issued(out)
    return offer, Snapshot(offers=dict(out.changes.new_offers))


def redeem(
    e: OfferEngine,
    snapshot: Snapshot,
    code: str,
    *,
    customer_id: str = "c-1",
    when: dt.datetime | None = None,
    event_id: str = "e-9",
) -> Outcome:
    return e.on_profiles(
        [profile(customer=customer_id, when=when or at(5), event_id=event_id, coupons=(code,))],
        snapshot,
    )


def test_listed_code_redeems_the_offer_once() -> None:
    e = engine()
    offer, snapshot = issued_offer(e)
    out = redeem(e, snapshot, offer.coupon_code.lower().replace("-", ""))
    [redeemed] = [ev for ev in out.events if isinstance(ev, OfferRedeemed)]
    assert redeemed.offer_id == offer.offer_id
    assert redeemed.checkout_event_id == "e-9"
    assert redeemed.basket_total == Decimal("12.50")
    record = out.changes.redeemed[offer.offer_id]
    assert record.state == "redeemed"
    snapshot.offers[offer.offer_id] = record
    replay = redeem(e, snapshot, offer.coupon_code)
    assert [ev for ev in replay.events if isinstance(ev, OfferRedeemed)] == [redeemed]
    assert replay.changes.redeemed == {}
    twice = redeem(e, snapshot, offer.coupon_code, event_id="e-10")
    [rejected] = [ev for ev in twice.events if isinstance(ev, RedemptionRejected)]
    assert (rejected.reason, rejected.offer_id) == ("already_redeemed", offer.offer_id)


def test_unknown_code_is_rejected() -> None:
    out = redeem(engine(), Snapshot(), "NOPE-NOPE-NOPE")
    [rejected] = out.events
    assert isinstance(rejected, RedemptionRejected)
    assert (rejected.reason, rejected.offer_id) == ("unknown_code", None)
    assert out.changes.rejections == {rejected.rejection_id: rejected}
    assert out.stats["rejected_unknown_code"] == 1


def test_another_customers_code_is_rejected_without_naming_the_offer() -> None:
    e = engine()
    offer, snapshot = issued_offer(e)
    out = redeem(e, snapshot, offer.coupon_code, customer_id="c-2")
    [rejected] = out.events
    assert isinstance(rejected, RedemptionRejected)
    assert (rejected.reason, rejected.offer_id, rejected.customer_id) == (
        "foreign_code",
        None,
        "c-2",
    )


@pytest.mark.parametrize(("day", "reason"), [(15, None), (16, "expired")])
def test_code_is_valid_through_its_last_day(day: int, reason: str | None) -> None:
    e = engine()
    offer, snapshot = issued_offer(e)  # valid until 15 March
    out = redeem(e, snapshot, offer.coupon_code, when=at(day, hour=20))
    [event] = out.events
    if reason is None:
        assert isinstance(event, OfferRedeemed)
    else:
        assert isinstance(event, RedemptionRejected)
        assert event.reason == reason


def test_rejection_id_is_deterministic() -> None:
    a = redeem(engine(), Snapshot(), "NOPE-NOPE-NOPE").events
    b = redeem(engine(), Snapshot(), "nope nope nope").events
    assert a == b


# ---------------------------------------------------------------- expiry


def test_offers_past_their_last_day_expire_once_and_replays_republish() -> None:
    e = engine()
    offer, snapshot = issued_offer(e)  # valid until 15 March
    [record] = snapshot.offers.values()
    assert e.expire(dt.date(2026, 3, 15), [record]).events == []
    out = e.expire(dt.date(2026, 3, 16), [record])
    [expired] = out.events
    assert expired.type == "offer_expired"
    assert out.changes.expired[offer.offer_id].expired_on == dt.date(2026, 3, 16)
    again = e.expire(dt.date(2026, 3, 16), list(out.changes.expired.values()))
    assert again.events == [expired]
    assert not again.changes
    later = e.expire(dt.date(2026, 3, 17), list(out.changes.expired.values()))
    assert later.events == []
    assert not later.changes


def test_published_events_parse_with_the_offers_topic_adapter() -> None:
    e = engine()
    offer, snapshot = issued_offer(e)
    out = redeem(e, snapshot, "NOPE-NOPE-NOPE")
    for event in [offer, *out.events]:
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
