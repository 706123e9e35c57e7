"""The campaigns report per campaign and per A/B arm, pure: counts, money and lift against the
campaign's own hold-out; old offers under the built-in campaigns; names and statuses from the
campaign definitions."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from services.reports.domain import (
    Campaign,
    CampaignDefinition,
    CampaignResultRow,
    Facts,
    Purchase,
    Redemption,
    campaigns_report,
    lift_of,
    tables_of,
)

UTC = dt.UTC
DAY = dt.date(2026, 3, 2)
AT = dt.datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
AS_OF = DAY + dt.timedelta(days=20)


def offer(
    offer_id: str,
    customer: str,
    campaign_id: str | None,
    *,
    kind: str = "frequent_item",
    variant: str | None = None,
    held_out: bool = False,
    global_control: bool = False,
) -> Campaign:
    return Campaign(
        offer_id,
        customer,
        kind,  # type: ignore[arg-type]
        AT,
        DAY,
        DAY + dt.timedelta(days=7),
        held_out=held_out or global_control,
        campaign_id=campaign_id,
        variant=variant,
        global_control=global_control,
    )


def spent(customer: str, total: str, n: int = 0) -> Purchase:
    """A checkout the day after the offers, inside their validity."""
    at = AT + dt.timedelta(days=1, minutes=n)
    return Purchase(f"p-{customer}-{n}", customer, "S001", at, at.date(), Decimal(total))


def definition(
    campaign_id: str,
    name: str,
    *,
    variants: tuple[str, ...] = (),
    history: tuple[tuple[dt.datetime, str], ...] = ((AT, "active"),),
    starts_on: dt.date | None = None,
    ends_on: dt.date | None = None,
) -> CampaignDefinition:
    return CampaignDefinition(
        campaign_id=campaign_id,
        name=name,
        changes=len(history),
        trigger="purchase",
        starts_on=starts_on,
        ends_on=ends_on,
        variants=variants,
        history=history,  # type: ignore[arg-type]
    )


def rows_of(
    facts: Facts, as_of: dt.date = AS_OF
) -> dict[tuple[str, str | None], CampaignResultRow]:
    return {(r.campaign_id, r.variant): r for r in campaigns_report(facts, as_of).campaigns}


def test_offers_from_before_campaigns_count_for_the_built_in_campaign_of_their_kind() -> None:
    facts = Facts(
        campaigns=[
            offer("o1", "c1", None, kind="frequent_item"),
            offer("o2", "c2", None, kind="birthday"),
            offer("o3", "c3", None, kind="anniversary"),
            offer("o4", "c4", None, kind="win_back"),
            offer("o5", "c5", "frequent-item", kind="frequent_item"),
        ]
    )
    rows = rows_of(facts)
    assert sorted(rows) == [
        ("anniversary", None),
        ("birthday", None),
        ("frequent-item", None),
        ("win-back", None),
    ]
    assert rows[("frequent-item", None)].issued == 2
    # not yet read from crm.campaigns: no name, no status
    assert (rows[("birthday", None)].name, rows[("birthday", None)].status) == (None, None)


def test_each_campaign_has_a_row_with_its_counts_money_and_deliveries() -> None:
    facts = Facts(
        campaigns=[
            offer("o1", "c1", "coffee"),
            offer("o2", "c2", "coffee"),
            offer("o3", "c3", "coffee"),
            offer("o4", "c4", "coffee", held_out=True),
            offer("o5", "c5", "tea"),
        ],
        redemptions={
            "o1": Redemption("o1", AT, Decimal("30.10"), Decimal("4.50")),
            "o3": Redemption("o3", AT, Decimal(20), Decimal(3)),  # revoked: adds nothing
            "o5": Redemption("o5", AT, Decimal(9), Decimal(1)),
        },
        deliveries={"o1": "sent", "o2": "written", "o3": "sent", "o5": "bounced"},
        revoked={"o3"},
        definitions={"coffee": definition("coffee", "Coffee lovers")},
    )
    coffee = rows_of(facts)[("coffee", None)]
    assert (coffee.name, coffee.status, coffee.variant) == ("Coffee lovers", "active", None)
    assert (coffee.eligible, coffee.held_out, coffee.issued, coffee.revoked) == (3, 1, 2, 1)
    assert (coffee.delivered, coffee.redeemed, coffee.redemption_rate) == (2, 1, Decimal("0.5"))
    assert (coffee.revenue, coffee.discount) == (Decimal("30.10"), Decimal("4.50"))
    tea = rows_of(facts)[("tea", None)]
    assert (tea.issued, tea.delivered, tea.redeemed, tea.revenue) == (1, 0, 1, Decimal(9))


def test_a_campaigns_lift_is_measured_against_its_own_hold_out_only() -> None:
    # Two campaigns of one kind: the per-kind row pools both hold-outs, each campaign's row
    # uses its own.
    facts = Facts(
        campaigns=[
            offer("a1", "a-t1", "a"),
            offer("a2", "a-t2", "a"),
            offer("a3", "a-h1", "a", held_out=True),
            offer("a4", "a-h2", "a", held_out=True),
            offer("b1", "b-t1", "b"),
            offer("b2", "b-h1", "b", held_out=True),
            offer("b3", "b-h2", "b", held_out=True),
        ],
        purchases=[
            spent("a-t1", "30"),
            spent("a-t2", "34"),
            spent("a-h1", "10"),
            spent("a-h2", "14"),
            spent("b-t1", "5"),
            spent("b-h1", "50"),
            spent("b-h2", "60"),
        ],
    )
    a = rows_of(facts)[("a", None)]
    expected = lift_of([Decimal(30), Decimal(34)], [Decimal(10), Decimal(14)])
    assert (a.treated_spend, a.control_spend) == (Decimal("32.00"), Decimal("12.00"))
    assert (a.lift, a.lift_low, a.lift_high) == (expected.lift, expected.low, expected.high)
    assert a.lift == Decimal("20.00")
    kind = next(r for r in campaigns_report(facts, AS_OF).rows if r.week == "all")
    assert kind.control_spend == Decimal("33.50")  # both campaigns' hold-outs pooled


def test_each_variant_is_measured_against_the_campaigns_whole_hold_out() -> None:
    facts = Facts(
        campaigns=[
            offer("o1", "t-a1", "ab", variant="a"),
            offer("o2", "t-a2", "ab", variant="a"),
            offer("o3", "t-b1", "ab", variant="b"),
            offer("o4", "t-b2", "ab", variant="b"),
            offer("o5", "t-b3", "ab", variant="b"),
            offer("o6", "h-a", "ab", variant="a", held_out=True),
            offer("o7", "h-b", "ab", variant="b", held_out=True),
        ],
        purchases=[
            spent("t-a1", "20"),
            spent("t-a2", "22"),
            spent("t-b1", "40"),
            spent("t-b2", "44"),
            spent("t-b3", "42"),
            spent("h-a", "10"),
            spent("h-b", "12"),
        ],
        redemptions={"o3": Redemption("o3", AT, Decimal(40), Decimal(6))},
        definitions={"ab": definition("ab", "A/B", variants=("b", "a"))},
    )
    report = campaigns_report(facts, AS_OF)
    # the campaign's row, then its arms in the order the campaign names them
    assert [(r.campaign_id, r.variant) for r in report.campaigns] == [
        ("ab", None),
        ("ab", "b"),
        ("ab", "a"),
    ]
    whole, b, a = report.campaigns
    assert (whole.issued, whole.held_out, whole.redeemed) == (5, 2, 1)
    assert (a.issued, a.held_out, a.eligible, a.redeemed) == (2, 1, 3, 0)
    assert (b.issued, b.held_out, b.eligible, b.redeemed, b.revenue) == (3, 1, 4, 1, Decimal(40))
    control = [Decimal(10), Decimal(12)]
    for row, treated in ((a, ["20", "22"]), (b, ["40", "44", "42"])):
        expected = lift_of([Decimal(x) for x in treated], control)
        assert row.control_spend == Decimal("11.00")
        assert (row.lift, row.lift_low, row.lift_high) == (
            expected.lift,
            expected.low,
            expected.high,
        )
    assert (a.name, b.status) == ("A/B", "active")


def test_the_global_control_group_is_counted_apart_and_left_out_of_a_campaigns_lift() -> None:
    facts = Facts(
        campaigns=[
            offer("o1", "t1", "c"),
            offer("o2", "t2", "c"),
            offer("o3", "h1", "c", held_out=True),
            offer("o4", "h2", "c", held_out=True),
            offer("o5", "g1", "c", global_control=True),
        ],
        purchases=[
            spent("t1", "10"),
            spent("t2", "12"),
            spent("h1", "4"),
            spent("h2", "6"),
            spent("g1", "500"),
        ],
    )
    row = rows_of(facts)[("c", None)]
    assert (row.eligible, row.held_out, row.global_control, row.issued) == (5, 2, 1, 2)
    assert row.control_spend == Decimal("5.00")


def test_a_campaign_without_offers_yet_has_a_row_of_zeros_for_it_and_each_arm() -> None:
    facts = Facts(definitions={"new": definition("new", "Brand new", variants=("a", "b"))})
    rows = rows_of(facts)
    assert sorted(rows, key=str) == [("new", "a"), ("new", "b"), ("new", None)]
    assert all((r.issued, r.eligible, r.lift) == (0, 0, None) for r in rows.values())
    assert rows[("new", None)].name == "Brand new"


def test_a_campaigns_status_on_the_reports_last_day_follows_its_history_and_schedule() -> None:
    paused_at = AT + dt.timedelta(days=3)
    resumed_at = AT + dt.timedelta(days=6)
    history = ((AT, "active"), (paused_at, "paused"), (resumed_at, "active"))
    c = definition("c", "C", history=history)
    assert c.status_on(DAY) == "active"
    assert c.status_on(paused_at.date()) == "paused"
    assert c.status_on(resumed_at.date()) == "active"
    later = definition(
        "s", "S", starts_on=DAY + dt.timedelta(days=5), ends_on=DAY + dt.timedelta(days=9)
    )
    assert later.status_on(DAY) == "scheduled"
    assert later.status_on(DAY + dt.timedelta(days=5)) == "active"
    assert later.status_on(DAY + dt.timedelta(days=10)) == "ended"
    facts = Facts(campaigns=[offer("o1", "c1", "c")], definitions={"c": c})
    assert rows_of(facts, paused_at.date())[("c", None)].status == "paused"


def test_erased_customers_and_offers_after_the_last_day_leave_the_campaign_rows() -> None:
    facts = Facts(
        campaigns=[offer("o1", "c1", "c"), offer("o2", "c2", "c"), offer("o3", "c3", "c")],
        erased={"c2"},
    )
    assert rows_of(facts)[("c", None)].issued == 2
    # before its first offer (and not yet read from crm.campaigns) it has no row at all
    assert rows_of(facts, DAY - dt.timedelta(days=1)) == {}


def test_the_campaigns_tables_have_the_headline_then_per_kind_then_per_campaign() -> None:
    facts = Facts(
        campaigns=[offer("o1", "c1", "ab", variant="a")],
        definitions={"ab": definition("ab", "A/B", variants=("a",))},
    )
    headline, per_kind, per_campaign = tables_of(campaigns_report(facts, AS_OF))
    assert headline.columns[:3] == ["eligible", "held_out", "issued"]
    assert headline.rows[0][2] == 1
    assert per_kind.columns[:2] == ["kind", "week"]
    assert per_campaign.columns[:4] == ["campaign_id", "name", "status", "variant"]
    assert "lift_high" in per_campaign.columns
    assert [row[:4] for row in per_campaign.rows] == [
        ["ab", "A/B", "active", None],
        ["ab", "A/B", "active", "a"],
    ]
