"""The reports, pure: figures of a small generated population checked against sums done here."""

from __future__ import annotations

import datetime as dt
import random
import statistics
from decimal import Decimal

import pytest

from services.reports.domain import (
    ALL_WEEKS,
    Campaign,
    Facts,
    Line,
    Purchase,
    Redemption,
    campaigns_report,
    lift_of,
    products_report,
    segments_report,
    stores_report,
)
from services.reports.settings import StoreGoal

UTC = dt.UTC
ISSUE_DAY = dt.date(2026, 3, 2)  # a Monday: ISO week 2026-W10
ISSUED_AT = dt.datetime(2026, 3, 2, 0, 0, tzinfo=UTC)


def purchase(
    n: int,
    customer: str | None,
    day: dt.date,
    total: Decimal,
    store: str = "S1",
    lines: tuple[Line, ...] = (),
) -> Purchase:
    at = dt.datetime.combine(day, dt.time(12), tzinfo=UTC)
    return Purchase(
        f"p{n}",
        customer,
        store,
        at,
        day,
        total,
        lines or (Line("MILK", "dairy", Decimal(1), total),),
    )


def planted_population(
    effect: Decimal, *, treated: int = 400, control: int = 400, seed: int = 3
) -> tuple[Facts, list[Decimal], list[Decimal]]:
    """Customers with random spend in the validity window; treated ones spend `effect` more."""
    rng = random.Random(seed)
    facts = Facts()
    spends: dict[bool, list[Decimal]] = {True: [], False: []}
    n = 0
    for i in range(treated + control):
        held = i >= treated
        customer = f"c{i}"
        facts.campaigns.append(
            Campaign(
                f"o{i}",
                customer,
                "birthday",
                ISSUED_AT,
                ISSUE_DAY,
                ISSUE_DAY + dt.timedelta(days=7),
                held_out=held,
            )
        )
        spend = Decimal(0)
        amounts = [Decimal(rng.randint(500, 3000)) / 100 for _ in range(2)]
        if not held and effect:
            amounts.append(effect)  # the coupon brings one more basket of `effect`
        for amount in amounts:
            n += 1
            facts.purchases.append(
                purchase(n, customer, ISSUE_DAY + dt.timedelta(days=rng.randint(0, 7)), amount)
            )
            spend += amount
        # before the offer and after its validity: never counted
        facts.purchases.append(
            purchase(n + 10_000, customer, ISSUE_DAY - dt.timedelta(days=3), Decimal(99))
        )
        facts.purchases.append(
            purchase(n + 20_000, customer, ISSUE_DAY + dt.timedelta(days=8), Decimal(99))
        )
        spends[not held].append(spend)
    return facts, spends[True], spends[False]


def test_lift_matches_an_independent_welch_computation() -> None:
    facts, treated, control = planted_population(Decimal(10))
    row = next(
        r
        for r in campaigns_report(facts, ISSUE_DAY + dt.timedelta(days=10)).rows
        if r.week == ALL_WEEKS
    )
    t = [float(x) for x in treated]
    c = [float(x) for x in control]
    expected = statistics.mean(t) - statistics.mean(c)
    half = 1.96 * (statistics.variance(t) / len(t) + statistics.variance(c) / len(c)) ** 0.5
    assert row.lift is not None
    assert row.lift_low is not None
    assert row.lift_high is not None
    assert float(row.lift) == pytest.approx(expected, abs=0.01)
    assert float(row.lift_low) == pytest.approx(expected - half, abs=0.01)
    assert float(row.lift_high) == pytest.approx(expected + half, abs=0.01)


def test_a_planted_effect_is_found_inside_the_interval_and_none_is_not_significant() -> None:
    facts, _treated, _ = planted_population(Decimal(10))
    row = next(r for r in campaigns_report(facts).rows if r.week == ALL_WEEKS)
    assert row.lift_low is not None
    assert row.lift_high is not None
    assert row.lift_low > 0
    assert row.lift_low <= Decimal(10) <= row.lift_high
    facts, _, _ = planted_population(Decimal(0), seed=5)
    row = next(r for r in campaigns_report(facts).rows if r.week == ALL_WEEKS)
    assert row.lift_low is not None
    assert row.lift_high is not None
    assert row.lift_low <= 0 <= row.lift_high


def test_campaign_counts_rates_and_revenue_per_kind_and_week() -> None:
    week1 = dt.date(2026, 3, 2)
    week2 = dt.date(2026, 3, 9)
    facts = Facts()
    for i in range(10):
        day = week1 if i < 6 else week2
        at = dt.datetime.combine(day, dt.time(9), tzinfo=UTC)
        facts.campaigns.append(
            Campaign(
                f"o{i}",
                f"c{i}",
                "frequent_item",
                at,
                day,
                day + dt.timedelta(days=14),
                held_out=i in (0, 9),
            )
        )
    facts.redemptions = {
        "o1": Redemption("o1", ISSUED_AT, Decimal("12.50")),
        "o2": Redemption("o2", ISSUED_AT, Decimal("7.50")),
        "o7": Redemption("o7", ISSUED_AT, Decimal(5)),
    }
    facts.deliveries = {"o1": "sent", "o2": "written", "o3": "suppressed", "o7": "sent"}
    rows = {(r.kind, r.week): r for r in campaigns_report(facts, week2 + dt.timedelta(days=1)).rows}
    first = rows[("frequent_item", "2026-W10")]
    assert (first.eligible, first.held_out, first.issued, first.delivered, first.redeemed) == (
        6,
        1,
        5,
        2,
        2,
    )
    assert first.redemption_rate == Decimal("0.4000")
    assert first.revenue == Decimal("20.00")
    second = rows[("frequent_item", "2026-W11")]
    assert (second.eligible, second.held_out, second.issued, second.redeemed) == (4, 1, 3, 1)
    total = rows[("frequent_item", ALL_WEEKS)]
    assert (total.eligible, total.held_out, total.issued, total.redeemed, total.revenue) == (
        10,
        2,
        8,
        3,
        Decimal("25.00"),
    )


def test_erased_customers_leave_the_campaign_figures() -> None:
    facts = Facts(
        campaigns=[Campaign("o1", "c1", "birthday", ISSUED_AT, ISSUE_DAY, ISSUE_DAY)], erased={"c1"}
    )
    assert campaigns_report(facts, ISSUE_DAY).rows == []


def test_lift_without_a_control_group_has_no_figure() -> None:
    result = lift_of([Decimal(10), Decimal(20)], [])
    assert result.treated_spend == Decimal("15.00")
    assert result.lift is None


def test_products_rank_by_revenue_and_compare_with_the_previous_period() -> None:
    day = dt.date(2026, 3, 14)
    milk = lambda q, a: Line("MILK", "dairy", Decimal(q), Decimal(a))  # noqa: E731
    bread = lambda q, a: Line("BREAD", "bakery", Decimal(q), Decimal(a))  # noqa: E731
    facts = Facts(
        purchases=[
            purchase(1, "a", day, Decimal(5), lines=(milk(2, "2.40"), bread(1, "2.60"))),
            purchase(2, "b", day - dt.timedelta(days=6), Decimal(10), lines=(bread(4, "10"),)),
            purchase(
                3, None, day - dt.timedelta(days=2), Decimal("1.20"), lines=(milk(1, "1.20"),)
            ),
            purchase(
                4, "a", day - dt.timedelta(days=7), Decimal(8), lines=(bread(2, "8"),)
            ),  # previous period
            purchase(
                5, "a", day - dt.timedelta(days=14), Decimal(1), lines=(milk(1, "1"),)
            ),  # older: ignored
        ]
    )
    report = products_report(facts, day, days=7)
    assert [r.key for r in report.skus] == ["BREAD", "MILK"]
    bread_row, milk_row = report.skus
    assert (bread_row.revenue, bread_row.units, bread_row.buyers) == (
        Decimal("12.60"),
        Decimal(5),
        2,
    )
    assert bread_row.previous_revenue == Decimal(8)
    assert bread_row.revenue_change_percent == Decimal("57.5")
    assert (milk_row.revenue, milk_row.units, milk_row.buyers) == (Decimal("3.60"), Decimal(3), 1)
    assert milk_row.revenue_change_percent is None
    assert [r.key for r in report.categories] == ["bakery", "dairy"]


def test_stores_count_the_month_so_far_against_goals() -> None:
    facts = Facts(
        purchases=[
            purchase(1, "a", dt.date(2026, 3, 1), Decimal(100), store="S1"),
            purchase(2, None, dt.date(2026, 3, 5), Decimal(50), store="S1"),
            purchase(3, "b", dt.date(2026, 2, 28), Decimal(70), store="S1"),
            purchase(4, "b", dt.date(2026, 3, 6), Decimal(30), store="S2"),
        ]
    )
    report = stores_report(
        facts,
        {"S1": StoreGoal(revenue=Decimal(600), visits=4), "S3": StoreGoal(revenue=Decimal(1))},
        dt.date(2026, 3, 6),
    )
    rows = {r.store_id: r for r in report.rows}
    assert report.month == "2026-03"
    assert (rows["S1"].revenue, rows["S1"].visits) == (Decimal(150), 2)
    assert rows["S1"].revenue_percent_of_goal == Decimal("25.0")
    assert rows["S1"].visits_percent_of_goal == Decimal("50.0")
    assert rows["S2"].revenue_goal is None
    assert rows["S2"].revenue_percent_of_goal is None
    assert rows["S3"].revenue == 0


def test_segments_show_who_moved_between_two_dates() -> None:
    today = dt.date(2026, 3, 31)
    since = today - dt.timedelta(days=28)
    purchases = []
    n = 0
    # "loyal" by both dates: 6 visits in the two weeks before `since`, then more
    for k in range(10):
        n += 1
        purchases.append(
            purchase(
                n,
                "loyal",
                since - dt.timedelta(days=k) if k < 6 else today - dt.timedelta(days=k),
                Decimal(10),
            )
        )
    # "new" on the first date, lapsed to "active" on the second
    n += 1
    purchases.append(purchase(n, "fresh", since - dt.timedelta(days=5), Decimal(10)))
    # only buys after the first date: prospect -> new
    n += 1
    purchases.append(purchase(n, "late", today - dt.timedelta(days=1), Decimal(10)))
    report = segments_report(Facts(purchases=purchases), today, since)
    moves = {(m.from_segment, m.to_segment): m.customers for m in report.moves}
    assert moves == {("loyal", "loyal"): 1, ("new", "active"): 1, ("prospect", "new"): 1}
    assert report.after == {"active": 1, "loyal": 1, "new": 1}


def test_revoked_offers_count_as_revoked_only_and_their_redemptions_do_not_count() -> None:
    facts = Facts()
    for i in range(1, 6):
        facts.campaigns.append(
            Campaign(f"o{i}", f"c{i}", "win_back", ISSUED_AT, ISSUE_DAY, ISSUE_DAY, held_out=i == 5)
        )
        facts.purchases.append(purchase(i, f"c{i}", ISSUE_DAY, Decimal(10 * i)))
    facts.revoked = {"o2", "o5"}  # a held-out customer had no offer to revoke
    facts.redemptions = {
        "o2": Redemption("o2", ISSUED_AT, Decimal(40), Decimal(4)),
        "o3": Redemption("o3", ISSUED_AT, Decimal(30), Decimal("4.50")),
    }
    facts.deliveries = {"o1": "sent", "o2": "sent", "o3": "written"}
    row = next(r for r in campaigns_report(facts, ISSUE_DAY).rows if r.week == ALL_WEEKS)
    assert (row.eligible, row.held_out, row.issued, row.revoked) == (4, 1, 3, 1)
    assert (row.delivered, row.redeemed, row.redemption_rate) == (2, 1, Decimal("0.3333"))
    assert (row.revenue, row.discount) == (Decimal(30), Decimal("4.50"))
    # The treated group is c1, c3 and c4: the revoked offer's customer is in neither group.
    assert row.treated_spend == Decimal("26.67")
    assert row.control_spend == Decimal("50.00")


def test_discount_given_is_summed_exactly_per_week_and_per_kind() -> None:
    week1, week2 = dt.date(2026, 3, 2), dt.date(2026, 3, 9)
    facts = Facts()
    for i, day in enumerate([week1, week1, week2]):
        at = dt.datetime.combine(day, dt.time(9), tzinfo=UTC)
        facts.campaigns.append(Campaign(f"o{i}", f"c{i}", "birthday", at, day, day))
        facts.redemptions[f"o{i}"] = Redemption(f"o{i}", at, Decimal("1.10"), Decimal("0.10"))
    rows = {r.week: r for r in campaigns_report(facts, week2).rows}
    assert rows["2026-W10"].discount == Decimal("0.20")
    assert rows["2026-W11"].discount == Decimal("0.10")
    assert str(rows[ALL_WEEKS].discount) == "0.30"  # exact: no float's 0.30000000000000004
    assert rows[ALL_WEEKS].revoked == 0
