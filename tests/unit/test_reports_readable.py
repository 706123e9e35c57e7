"""Reports people can read, pure: the campaigns' period and headline, goals pro-rated to the days
elapsed with teams of stores, and what is bought together (support, confidence, lift)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from services.reports.charts import issued_redeemed_chart
from services.reports.domain import (
    Campaign,
    Facts,
    Line,
    Purchase,
    Redemption,
    basket_affinity,
    campaigns_report,
    goal_to_date,
    products_report,
    stores_report,
    tables_of,
)
from services.reports.settings import StoreGoal

UTC = dt.UTC


def checkout(
    n: int, day: dt.date, skus: str, *, store: str = "S1", total: str = "10", customer: str = "c"
) -> Purchase:
    at = dt.datetime.combine(day, dt.time(12), tzinfo=UTC)
    lines = tuple(Line(sku, "grocery", Decimal(1), Decimal(1)) for sku in skus.split())
    return Purchase(f"p{n}", customer or None, store, at, day, Decimal(total), lines)


# ---------------------------------------------------------------- goals pro-rated, teams


def test_a_monthly_goal_is_pro_rated_to_the_days_elapsed_at_month_boundaries() -> None:
    # day 10 of a 30-day month: a third
    assert goal_to_date(Decimal(3000), dt.date(2026, 4, 10)) == Decimal("1000.00")
    # the first day of a 31-day month, and its last day: the whole goal
    assert goal_to_date(Decimal(3100), dt.date(2026, 3, 1)) == Decimal("100.00")
    assert goal_to_date(Decimal(3100), dt.date(2026, 3, 31)) == Decimal("3100.00")
    # February: 28 days, 29 in a leap year
    assert goal_to_date(2800, dt.date(2026, 2, 14)) == Decimal("1400.00")
    assert goal_to_date(2900, dt.date(2028, 2, 28)) == Decimal("2800.00")
    assert goal_to_date(None, dt.date(2026, 2, 14)) is None


def test_stores_are_measured_against_the_goal_due_so_far_and_a_new_month_starts_over() -> None:
    facts = Facts(
        purchases=[
            checkout(1, dt.date(2026, 3, 31), "A", total="3100"),
            checkout(2, dt.date(2026, 4, 1), "A", total="50"),
            checkout(3, dt.date(2026, 4, 10), "A", total="950"),
        ]
    )
    goals = {"S1": StoreGoal(revenue=Decimal(3000), visits=30)}
    april = {r.store_id: r for r in stores_report(facts, goals, dt.date(2026, 4, 10)).rows}["S1"]
    # 1000 of the 1000 due by day 10: on track, though a third of the month's goal
    assert (april.revenue, april.revenue_goal_to_date) == (Decimal(1000), Decimal("1000.00"))
    assert april.revenue_percent_of_goal_to_date == Decimal("100.0")
    assert april.revenue_percent_of_goal == Decimal("33.3")
    assert (april.visits_goal_to_date, april.visits_percent_of_goal_to_date) == (
        Decimal("10.00"),
        Decimal("20.0"),
    )
    first = stores_report(facts, goals, dt.date(2026, 4, 1))
    assert (first.days_elapsed, first.days_in_month) == (1, 30)
    assert first.rows[0].revenue == Decimal(50)
    assert first.rows[0].revenue_goal_to_date == Decimal("100.00")
    last = stores_report(facts, {"S1": StoreGoal(revenue=Decimal(3100))}, dt.date(2026, 3, 31))
    assert last.rows[0].revenue_goal_to_date == Decimal("3100.00")
    assert last.rows[0].revenue_percent_of_goal_to_date == Decimal("100.0")


def test_a_team_sums_its_stores_and_their_goals_and_a_store_can_be_in_two() -> None:
    day = dt.date(2026, 4, 15)
    facts = Facts(
        purchases=[
            checkout(1, day, "A", store="S1", total="300"),
            checkout(2, day, "A", store="S2", total="200"),
            checkout(3, day, "A", store="S3", total="700"),
        ]
    )
    goals = {"S1": StoreGoal(revenue=Decimal(1200)), "S2": StoreGoal(revenue=Decimal(800))}
    teams = {"North": ["S1", "S2"], "City": ["S2", "S4"]}
    report = stores_report(facts, goals, day, teams)
    stores = {r.store_id: r for r in report.rows}
    assert stores["S2"].teams == ["City", "North"]
    assert stores["S3"].teams == []
    assert stores["S4"].revenue == 0  # in a team, no checkout yet: still listed
    north, city = report.teams[1], report.teams[0]
    assert (north.team, north.stores, north.revenue, north.visits) == (
        "North",
        ["S1", "S2"],
        Decimal(500),
        2,
    )
    assert (north.revenue_goal, north.revenue_goal_to_date) == (Decimal(2000), Decimal("1000.00"))
    assert north.revenue_percent_of_goal_to_date == Decimal("50.0")
    # a team of which only one store has a goal: that goal; none has a visits goal: none
    assert (city.revenue_goal, city.visits_goal, city.visits_percent_of_goal_to_date) == (
        Decimal(800),
        None,
        None,
    )
    titles = [t.title for t in tables_of(report)]
    assert titles == ["stores (2026-04, day 15 of 30)", "teams (2026-04, day 15 of 30)"]


# ---------------------------------------------------------------- bought together

AS_OF = dt.date(2026, 3, 28)
BASKETS = ["A B"] * 4 + ["A"] * 2 + ["B C"] * 2 + ["C", "A B C"]
"""Ten checkouts: A in 7, B in 7, C in 4; A and B together in 5, B and C in 3, A and C in 1."""


def known_baskets() -> list[Purchase]:
    purchases = [checkout(n, AS_OF - dt.timedelta(days=n), b) for n, b in enumerate(BASKETS)]
    # outside the window, and a line twice in one basket: neither changes a figure
    purchases.append(checkout(99, AS_OF - dt.timedelta(days=28), "A C"))
    purchases.append(checkout(98, AS_OF + dt.timedelta(days=1), "A C"))
    return purchases


def test_support_confidence_and_lift_of_pairs_on_a_known_set_of_baskets() -> None:
    affinity = basket_affinity(known_baskets(), AS_OF - dt.timedelta(days=27), AS_OF)
    assert affinity.baskets == 10
    # B+C: lift 3 * 10 / (7 * 4) = 1.07; A+B: 5 * 10 / (7 * 7) = 1.02; A+C seen once: left out
    assert [(p.sku_a, p.sku_b) for p in affinity.pairs] == [("B", "C"), ("A", "B")]
    bc, ab = affinity.pairs
    assert (bc.baskets, bc.support, bc.lift) == (3, Decimal("0.3000"), Decimal("1.07"))
    assert (bc.confidence_a_b, bc.confidence_b_a) == (Decimal("0.4286"), Decimal("0.7500"))
    assert (ab.baskets, ab.support, ab.lift) == (5, Decimal("0.5000"), Decimal("1.02"))
    assert ab.confidence_a_b == ab.confidence_b_a == Decimal("0.7143")


def test_pairs_below_the_minimum_support_are_left_out_and_top_cuts_the_list() -> None:
    window = (AS_OF - dt.timedelta(days=27), AS_OF)
    assert [
        p.sku_b for p in basket_affinity(known_baskets(), *window, min_support=Decimal("0.4")).pairs
    ] == ["B"]
    assert len(basket_affinity(known_baskets(), *window, top=1).pairs) == 1


def test_a_repeated_line_counts_its_sku_once_in_the_basket() -> None:
    purchases = [checkout(1, AS_OF, "A A B"), checkout(2, AS_OF, "A B"), checkout(3, AS_OF, "C")]
    (pair,) = basket_affinity(purchases, AS_OF, AS_OF).pairs
    assert (pair.sku_a, pair.sku_b, pair.baskets) == ("A", "B", 2)
    assert (pair.confidence_a_b, pair.lift) == (Decimal("1.0000"), Decimal("1.50"))


def test_the_products_report_reads_the_pairs_over_the_last_weeks() -> None:
    facts = Facts(purchases=known_baskets())
    four = products_report(facts, AS_OF, affinity_weeks=4).bought_together
    assert four is not None
    assert (four.start, four.as_of, four.baskets) == (dt.date(2026, 3, 1), AS_OF, 10)
    one = products_report(facts, AS_OF, affinity_weeks=1).bought_together
    assert one is not None
    assert one.baskets == 7
    assert [t.title.split(" (")[0] for t in tables_of(products_report(facts, AS_OF))] == [
        "top SKUs",
        "top categories",
        "bought together",
    ]


# ---------------------------------------------------------------- campaigns: the period


def offer(n: int, week_start: dt.date, held_out: bool = False) -> Campaign:
    at = dt.datetime.combine(week_start, dt.time(8), tzinfo=UTC)
    return Campaign(
        f"o{n}",
        f"c{n}",
        "birthday",
        at,
        week_start,
        week_start + dt.timedelta(days=6),
        held_out=held_out,
    )


def test_the_campaigns_period_counts_the_last_weeks_and_its_headline_sums_them() -> None:
    monday = dt.date(2026, 3, 30)  # 2026-W14
    weeks_ago = [monday - dt.timedelta(days=7 * k) for k in range(4)]
    campaigns = [offer(n, weeks_ago[n % 4], held_out=n % 5 == 0) for n in range(40)]
    facts = Facts(
        campaigns=campaigns,
        redemptions={
            "o1": Redemption("o1", dt.datetime(2026, 3, 31, tzinfo=UTC), Decimal("20.50")),
            "o4": Redemption("o4", dt.datetime(2026, 3, 31, tzinfo=UTC), Decimal("9.50")),
            "o3": Redemption("o3", dt.datetime(2026, 3, 10, tzinfo=UTC), Decimal(99)),
        },
    )
    report = campaigns_report(facts, monday + dt.timedelta(days=2), weeks=2)
    assert (report.since, report.weeks) == (dt.date(2026, 3, 23), ["2026-W13", "2026-W14"])
    assert {r.week for r in report.rows} == {"2026-W13", "2026-W14", "all"}
    h = report.headline
    assert h is not None
    # offers 0..39 of the two latest weeks: n % 4 in (0, 1): 20, of which 4 held out (n % 5 == 0)
    assert (h.eligible, h.held_out, h.issued) == (20, 4, 16)
    assert (h.redeemed, h.revenue) == (2, Decimal("30.00"))  # o3 is three weeks old
    assert h.redemption_rate == Decimal("0.1250")
    # since: a first day; its week (no offer valid from then on) is still on the axis
    since = campaigns_report(facts, monday, since=dt.date(2026, 3, 4))
    assert since.weeks == ["2026-W10", "2026-W11", "2026-W12", "2026-W13", "2026-W14"]
    assert since.headline is not None
    assert since.headline.eligible == 40
    # neither: every offer, as before
    whole = campaigns_report(facts, monday)
    assert (whole.since, whole.weeks) == (None, [])
    assert whole.headline is not None
    assert whole.headline.eligible == 40


def test_twelve_weeks_on_the_chart_axis_are_labelled_every_other_week_ending_with_the_latest() -> (
    None
):
    monday = dt.date(2026, 3, 30)  # 2026-W14
    facts = Facts(
        campaigns=[offer(n, monday - dt.timedelta(days=7 * n), held_out=False) for n in range(3)]
    )
    report = campaigns_report(facts, monday, weeks=12)
    assert len(report.weeks) == 12
    svg = issued_redeemed_chart(report)
    # the weeks without offers are on the axis too; a label every other week, the latest one
    labelled = [w for w in range(1, 16) if f"<!-- W{w:02d} 2026 -->" in svg]
    assert labelled == [4, 6, 8, 10, 12, 14]
