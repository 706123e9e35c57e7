"""The reports, pure: campaigns with lift, products, stores and segments, from the read model's facts.

The read model holds facts taken from events (purchases, offers issued, held out, revoked,
redeemed, deliveries, erasures); every report is a function of those facts and a date, so the
same facts give the same figures. Money is Decimal throughout, statistics included (Decimal has
an exact-enough square root), so no float touches a price.

A revoked offer (a late event showed it should not have been issued) is counted as revoked
only: not as issued or eligible, not in the treated group, and its redemption, if any, adds
nothing to the redemptions, the revenue or the discount given.

Lift: for each offer kind and campaign week, the spend per customer of treated customers (offer
issued) minus that of held-out customers (eligible, no offer), each counted over the offer's
validity: checkouts after the trigger up to the last valid day. The 95 % confidence interval is
Welch's: difference +- 1.96 * sqrt(s_t^2/n_t + s_c^2/n_c) (needs two customers in each group).

The campaigns report also has a row per campaign (and per A/B arm of one): its own hold-out is
its control group, and every arm is measured against the campaign's whole hold-out (arms are
assigned independently of the hold-out, so it is a fair control for each). Customers of the
programme's global control group are counted apart and left out of a campaign's lift: they get
no campaign at all, so against them a campaign would also be credited with the others' effect.
Offers from before campaigns existed carry no campaign id and count for the built-in campaign
of their kind.
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field

from services.reports.sentiment import Opinion, SentimentReport, SentimentRow
from services.reports.settings import StoreGoal
from shared.campaigns import DEFAULT_CAMPAIGNS
from shared.erasure import is_unlinked
from shared.events import OfferKind
from shared.marketing import Segment, campaign_period, rfm_segment

ReportName = Literal["campaigns", "products", "stores", "segments", "sentiment"]
REPORT_NAMES: tuple[ReportName, ...] = (
    "campaigns",
    "products",
    "stores",
    "segments",
    "sentiment",
)

Z_95 = Decimal("1.96")
_CENT = Decimal("0.01")
_RATE = Decimal("0.0001")
_ZERO = Decimal(0)
ALL_WEEKS = "all"
UNCATEGORIZED = "uncategorized"


# ---------------------------------------------------------------- facts


@dataclass(frozen=True, slots=True)
class Line:
    sku: str
    category: str
    quantity: Decimal
    amount: Decimal


@dataclass(frozen=True, slots=True)
class Purchase:
    """A checkout: `day` is the store's local calendar day."""

    event_id: str
    customer_id: str | None
    store_id: str
    at: dt.datetime
    day: dt.date
    total: Decimal
    lines: tuple[Line, ...] = ()


BUILTIN_CAMPAIGN_OF_KIND: Mapping[str, str] = dict(
    zip(("frequent_item", "birthday", "anniversary", "win_back"), DEFAULT_CAMPAIGNS, strict=True)
)
"""The built-in campaign each rule became: where offers issued before campaigns existed count."""


@dataclass(frozen=True, slots=True)
class Campaign:
    """An offer issued, or the offer a held-out customer would have had (one per offer id; the
    name is the read model's, which predates campaigns as data)."""

    offer_id: str
    customer_id: str
    kind: OfferKind
    at: dt.datetime
    valid_from: dt.date
    valid_until: dt.date
    held_out: bool = False
    campaign_id: str | None = None
    """The campaign it came from; None on offers from before campaigns existed."""
    variant: str | None = None
    """The campaign's A/B arm, if it has arms."""
    global_control: bool = False
    """Held out as a member of the programme's global control group (no campaign at all)."""

    @property
    def week(self) -> str:
        return campaign_period(self.valid_from)

    @property
    def campaign(self) -> str:
        """The campaign it counts for: its own, or the built-in one of its kind."""
        if self.campaign_id is not None:
            return self.campaign_id
        return BUILTIN_CAMPAIGN_OF_KIND.get(self.kind, self.kind.replace("_", "-"))


CampaignStatus = Literal["scheduled", "active", "paused", "ended"]


@dataclass(frozen=True, slots=True)
class CampaignDefinition:
    """What the reports keep of a campaign (from `crm.campaigns`): its name, schedule, arms and
    when it was paused or resumed."""

    campaign_id: str
    name: str
    changes: int
    """Entries in its history: of two records of one campaign, the one with more is newer."""
    trigger: str
    starts_on: dt.date | None
    ends_on: dt.date | None
    variants: tuple[str, ...]
    """The arms of its latest version, in their order."""
    history: tuple[tuple[dt.datetime, Literal["active", "paused"]], ...]
    """From each time on, active or paused; oldest first."""

    def status_on(self, day: dt.date) -> CampaignStatus:
        """Where it stood at the end of `day`. (Whether its budget is spent only the offers
        service knows.)"""
        current = self.history[0][1] if self.history else "active"
        for at, status in self.history:
            if at.date() <= day:
                current = status
        if current == "paused":
            return "paused"
        if self.ends_on is not None and day > self.ends_on:
            return "ended"
        if self.starts_on is not None and day < self.starts_on:
            return "scheduled"
        return "active"


@dataclass(frozen=True, slots=True)
class Redemption:
    offer_id: str
    redeemed_at: dt.datetime
    basket_total: Decimal
    discount: Decimal = _ZERO
    """The money the coupon took off the basket."""


@dataclass(slots=True)
class Facts:
    """Everything the reports read, as loaded from the read model."""

    purchases: list[Purchase] = field(default_factory=list)
    campaigns: list[Campaign] = field(default_factory=list)
    redemptions: dict[str, Redemption] = field(default_factory=dict)
    deliveries: dict[str, str] = field(default_factory=dict)
    """offer id -> final delivery state (sent, written, bounced, suppressed, failed)."""
    erased: set[str] = field(default_factory=set)
    revoked: set[str] = field(default_factory=set)
    """Offer ids revoked (and not issued again since)."""
    definitions: dict[str, CampaignDefinition] = field(default_factory=dict)
    """Campaign id -> its latest definition read."""
    opinions: list[Opinion] = field(default_factory=list)
    """Interactions with a sentiment about a brand or category (`sentiment.py`)."""

    def latest_day(self) -> dt.date | None:
        return max((p.day for p in self.purchases), default=None)


DELIVERED_STATES = frozenset({"sent", "written"})


# ---------------------------------------------------------------- statistics


@dataclass(frozen=True, slots=True)
class Lift:
    treated_spend: Decimal | None
    control_spend: Decimal | None
    lift: Decimal | None
    low: Decimal | None
    high: Decimal | None


def _mean_var(values: Sequence[Decimal]) -> tuple[Decimal, Decimal | None]:
    mean = sum(values, _ZERO) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, sum(((v - mean) ** 2 for v in values), _ZERO) / (len(values) - 1)


def lift_of(treated: Sequence[Decimal], control: Sequence[Decimal]) -> Lift:
    """Difference of mean spend (treated - control) with Welch's 95 % interval."""
    if not treated or not control:
        mean_t = _mean_var(treated)[0].quantize(_CENT) if treated else None
        mean_c = _mean_var(control)[0].quantize(_CENT) if control else None
        return Lift(mean_t, mean_c, None, None, None)
    mean_t, var_t = _mean_var(treated)
    mean_c, var_c = _mean_var(control)
    diff = mean_t - mean_c
    low = high = None
    if var_t is not None and var_c is not None:
        half = Z_95 * (var_t / len(treated) + var_c / len(control)).sqrt()
        low, high = (diff - half).quantize(_CENT), (diff + half).quantize(_CENT)
    return Lift(mean_t.quantize(_CENT), mean_c.quantize(_CENT), diff.quantize(_CENT), low, high)


# ---------------------------------------------------------------- campaigns


class CampaignRow(BaseModel):
    kind: OfferKind = Field(description="Offer kind.")
    week: str = Field(description="Campaign week (ISO, `YYYY-Www`) or `all`.")
    eligible: int = Field(description="Customers eligible: issued + held out.")
    held_out: int = Field(description="Eligible customers held out (no offer).")
    issued: int = Field(description="Offers issued (revoked ones not included).")
    revoked: int = Field(
        description="Offers revoked after they were issued: a late event showed they should "
        "not have been (not counted as issued, eligible or redeemed)."
    )
    delivered: int = Field(description="E-mails sent or written.")
    redeemed: int = Field(description="Offers redeemed.")
    redemption_rate: Decimal = Field(description="redeemed / issued.")
    revenue: Decimal = Field(description="Total of the baskets that redeemed.")
    discount: Decimal = Field(description="Money the redeemed coupons took off those baskets.")
    treated_spend: Decimal | None = Field(description="Spend per treated customer in validity.")
    control_spend: Decimal | None = Field(description="Spend per held-out customer in validity.")
    lift: Decimal | None = Field(description="treated_spend - control_spend.")
    lift_low: Decimal | None = Field(description="Lower end of the 95 % interval.")
    lift_high: Decimal | None = Field(description="Upper end of the 95 % interval.")


class CampaignResultRow(BaseModel):
    campaign_id: str = Field(
        description="Campaign id; offers from before campaigns existed count for the built-in "
        "campaign of their kind (`frequent-item`, `birthday`, `anniversary`, `win-back`)."
    )
    name: str | None = Field(
        description="The campaign's name (null until its definition has been read)."
    )
    status: CampaignStatus | None = Field(
        description="Scheduled, active, paused or ended on the report's last day (null until "
        "its definition has been read)."
    )
    variant: str | None = Field(
        description="The A/B arm; null on the row of the whole campaign (every arm)."
    )
    eligible: int = Field(
        description="Customers eligible: issued, held out, or in the global control group."
    )
    held_out: int = Field(description="Eligible customers in the campaign's own hold-out.")
    global_control: int = Field(
        description="Eligible customers in the programme's global control group (no offer; "
        "not in the lift)."
    )
    issued: int = Field(description="Offers issued (revoked ones not included).")
    revoked: int = Field(description="Offers revoked after they were issued.")
    delivered: int = Field(description="E-mails sent or written.")
    redeemed: int = Field(description="Offers redeemed.")
    redemption_rate: Decimal = Field(description="redeemed / issued.")
    revenue: Decimal = Field(description="Total of the baskets that redeemed.")
    discount: Decimal = Field(description="Money the redeemed coupons took off those baskets.")
    treated_spend: Decimal | None = Field(description="Spend per treated customer in validity.")
    control_spend: Decimal | None = Field(
        description="Spend per customer of the campaign's hold-out (every arm) in validity."
    )
    lift: Decimal | None = Field(description="treated_spend - control_spend.")
    lift_low: Decimal | None = Field(description="Lower end of the 95 % interval.")
    lift_high: Decimal | None = Field(description="Upper end of the 95 % interval.")


class CampaignHeadline(BaseModel):
    """The figures marketing reads first: every offer of the period, whatever its campaign."""

    eligible: int = Field(description="Customers eligible: issued + held out.")
    held_out: int = Field(
        description="Eligible customers held out (a campaign's hold-out or the global control)."
    )
    issued: int = Field(description="Offers issued (revoked ones not included).")
    delivered: int = Field(description="E-mails sent or written.")
    redeemed: int = Field(description="Offers redeemed.")
    redemption_rate: Decimal = Field(description="redeemed / issued.")
    revenue: Decimal = Field(description="Total of the baskets that redeemed.")
    discount: Decimal = Field(description="Money the redeemed coupons took off those baskets.")
    treated_spend: Decimal | None = Field(description="Spend per treated customer in validity.")
    control_spend: Decimal | None = Field(description="Spend per held-out customer in validity.")
    lift: Decimal | None = Field(description="treated_spend - control_spend.")
    lift_low: Decimal | None = Field(description="Lower end of the 95 % interval.")
    lift_high: Decimal | None = Field(description="Upper end of the 95 % interval.")


class CampaignsReport(BaseModel):
    name: Literal["campaigns"] = "campaigns"
    as_of: dt.date = Field(description="Latest day of data.")
    since: dt.date | None = Field(
        default=None,
        description="First day of the period: offers valid from this day on are counted (null: "
        "every offer up to `as_of`).",
    )
    weeks: list[str] = Field(
        default_factory=list,
        description="The campaign weeks of the period (ISO, `YYYY-Www`), oldest first, those "
        "without offers included; empty when the period is every offer.",
    )
    headline: CampaignHeadline | None = Field(
        default=None, description="Every offer of the period together."
    )
    rows: list[CampaignRow] = Field(description="Per kind and week, then per kind (`all`).")
    campaigns: list[CampaignResultRow] = Field(
        default_factory=list,
        description="Per campaign (by id) over every week, each followed by its A/B arms.",
    )


class _SpendIndex:
    """Each customer's checkouts in time order, to sum spend over windows."""

    def __init__(self, purchases: Iterable[Purchase]) -> None:
        self._by_customer: dict[str, list[Purchase]] = defaultdict(list)
        for p in purchases:
            if p.customer_id is not None:
                self._by_customer[p.customer_id].append(p)

    def spend(self, customer_id: str, after: dt.datetime, until: dt.date) -> Decimal:
        return sum(
            (
                p.total
                for p in self._by_customer.get(customer_id, ())
                if p.at > after and p.day <= until
            ),
            _ZERO,
        )

    def of(self, campaigns: Iterable[Campaign]) -> list[Decimal]:
        """Each one's customer's spend over its validity, after its trigger."""
        return [self.spend(c.customer_id, c.at, c.valid_until) for c in campaigns]


def _figures(
    offered: Sequence[Campaign], control: Sequence[Campaign], facts: Facts, spend: _SpendIndex
) -> dict[str, Any]:
    """The figures both kinds of rows share: counts of the offers made, what they brought, and
    their lift against `control`."""
    issued = [c for c in offered if c.offer_id not in facts.revoked]
    redeemed = [facts.redemptions[c.offer_id] for c in issued if c.offer_id in facts.redemptions]
    lift = lift_of(spend.of(issued), spend.of(control))
    return {
        "issued": len(issued),
        "revoked": len(offered) - len(issued),
        "delivered": sum(1 for c in issued if facts.deliveries.get(c.offer_id) in DELIVERED_STATES),
        "redeemed": len(redeemed),
        "redemption_rate": (Decimal(len(redeemed)) / len(issued)).quantize(_RATE)
        if issued
        else _ZERO,
        "revenue": sum((r.basket_total for r in redeemed), _ZERO),
        "discount": sum((r.discount for r in redeemed), _ZERO),
        "treated_spend": lift.treated_spend,
        "control_spend": lift.control_spend,
        "lift": lift.lift,
        "lift_low": lift.low,
        "lift_high": lift.high,
    }


def _campaign_row(
    kind: OfferKind, week: str, group: list[Campaign], facts: Facts, spend: _SpendIndex
) -> CampaignRow:
    offered = [c for c in group if not c.held_out]
    held = [c for c in group if c.held_out]
    figures = _figures(offered, held, facts, spend)
    return CampaignRow(
        kind=kind,
        week=week,
        eligible=figures["issued"] + len(held),
        held_out=len(held),
        **figures,
    )


def _result_row(
    campaign_id: str,
    variant: str | None,
    group: Sequence[Campaign],
    control: Sequence[Campaign],
    definition: CampaignDefinition | None,
    as_of: dt.date,
    facts: Facts,
    spend: _SpendIndex,
) -> CampaignResultRow:
    offered = [c for c in group if not c.held_out]
    held = sum(1 for c in group if c.held_out and not c.global_control)
    global_control = sum(1 for c in group if c.global_control)
    figures = _figures(offered, control, facts, spend)
    return CampaignResultRow(
        campaign_id=campaign_id,
        name=definition.name if definition is not None else None,
        status=definition.status_on(as_of) if definition is not None else None,
        variant=variant,
        eligible=figures["issued"] + held + global_control,
        held_out=held,
        global_control=global_control,
        **figures,
    )


def _result_rows(
    campaigns: Sequence[Campaign], facts: Facts, as_of: dt.date, spend: _SpendIndex
) -> list[CampaignResultRow]:
    """A row per campaign (every campaign defined, and every one offers name), each followed
    by a row per A/B arm when it has arms."""
    by_campaign: dict[str, list[Campaign]] = defaultdict(list)
    for c in campaigns:
        by_campaign[c.campaign].append(c)
    rows = []
    for campaign_id in sorted(set(by_campaign) | set(facts.definitions)):
        group = by_campaign.get(campaign_id, [])
        definition = facts.definitions.get(campaign_id)
        control = [c for c in group if c.held_out and not c.global_control]
        rows.append(_result_row(campaign_id, None, group, control, definition, as_of, facts, spend))
        arms = list(definition.variants) if definition is not None else []
        arms += sorted({c.variant for c in group if c.variant is not None} - set(arms))
        for arm in arms:
            in_arm = [c for c in group if c.variant == arm]
            rows.append(
                _result_row(campaign_id, arm, in_arm, control, definition, as_of, facts, spend)
            )
    return rows


def period_start(as_of: dt.date, weeks: int) -> dt.date:
    """The Monday that starts the last `weeks` campaign weeks up to `as_of` (its own included)."""
    return as_of - dt.timedelta(days=as_of.weekday() + 7 * (weeks - 1))


def weeks_between(since: dt.date, as_of: dt.date) -> list[str]:
    """Every campaign week from the one of `since` to the one of `as_of`, oldest first."""
    monday = since - dt.timedelta(days=since.weekday())
    weeks = []
    while monday <= as_of:
        weeks.append(campaign_period(monday))
        monday += dt.timedelta(days=7)
    return weeks


def campaigns_report(
    facts: Facts,
    as_of: dt.date | None = None,
    *,
    weeks: int | None = None,
    since: dt.date | None = None,
) -> CampaignsReport:
    """Per kind and week, then per kind over all weeks; per campaign and arm; and the headline
    of them all. The period is the offers valid from `since` (or the first day of the last
    `weeks` campaign weeks) to `as_of`; without either, every offer up to `as_of`. Erased
    customers are left out; revoked offers are counted as revoked only."""
    as_of = as_of or facts.latest_day() or dt.datetime.now(dt.UTC).date()
    if since is None and weeks is not None:
        since = period_start(as_of, weeks)
    campaigns = [
        c
        for c in facts.campaigns
        if c.customer_id not in facts.erased
        and c.valid_from <= as_of
        and (since is None or c.valid_from >= since)
    ]
    spend = _SpendIndex(p for p in facts.purchases if p.day <= as_of)
    weekly: dict[tuple[OfferKind, str], list[Campaign]] = defaultdict(list)
    per_kind: dict[OfferKind, list[Campaign]] = defaultdict(list)
    for c in campaigns:
        weekly[(c.kind, c.week)].append(c)
        per_kind[c.kind].append(c)
    rows = [_campaign_row(k, w, weekly[(k, w)], facts, spend) for k, w in sorted(weekly)]
    rows += [_campaign_row(k, ALL_WEEKS, per_kind[k], facts, spend) for k in sorted(per_kind)]
    offered = [c for c in campaigns if not c.held_out]
    held = [c for c in campaigns if c.held_out]
    figures = _figures(offered, held, facts, spend)
    headline = CampaignHeadline(
        eligible=figures["issued"] + len(held),
        held_out=len(held),
        **{k: v for k, v in figures.items() if k != "revoked"},
    )
    return CampaignsReport(
        as_of=as_of,
        since=since,
        weeks=weeks_between(since, as_of) if since is not None and since <= as_of else [],
        headline=headline,
        rows=rows,
        campaigns=_result_rows(campaigns, facts, as_of, spend),
    )


# ---------------------------------------------------------------- products


class ProductRow(BaseModel):
    key: str = Field(description="SKU or category.")
    revenue: Decimal = Field(description="Revenue in the period.")
    units: Decimal = Field(description="Units (or weight) in the period.")
    buyers: int = Field(description="Distinct known customers who bought it.")
    previous_revenue: Decimal = Field(description="Revenue in the previous period.")
    previous_units: Decimal = Field(description="Units in the previous period.")
    previous_buyers: int = Field(description="Buyers in the previous period.")
    revenue_change_percent: Decimal | None = Field(
        description="Revenue change against the previous period, in percent."
    )


class PairRow(BaseModel):
    """Two SKUs bought in one checkout: the association rule both ways."""

    sku_a: str = Field(description="One SKU of the pair (the first in text order).")
    sku_b: str = Field(description="The other SKU.")
    baskets: int = Field(description="Checkouts with both.")
    support: Decimal = Field(description="Share of all checkouts with both.")
    confidence_a_b: Decimal = Field(description="Share of the checkouts with sku_a that had sku_b.")
    confidence_b_a: Decimal = Field(description="Share of the checkouts with sku_b that had sku_a.")
    lift: Decimal = Field(
        description="support / (share with sku_a * share with sku_b): above 1, bought together "
        "more often than if they were independent."
    )


class Affinity(BaseModel):
    """What is bought together: pairs of SKUs over the checkouts of a window."""

    start: dt.date = Field(description="First day of the checkouts read.")
    as_of: dt.date = Field(description="Last day of the checkouts read.")
    baskets: int = Field(description="Checkouts read (anonymous ones included).")
    min_support: Decimal = Field(description="Least support of a pair listed.")
    pairs: list[PairRow] = Field(description="Top pairs by lift, then support.")


class ProductsReport(BaseModel):
    name: Literal["products"] = "products"
    as_of: dt.date = Field(description="Last day of the period.")
    start: dt.date = Field(description="First day of the period.")
    previous_start: dt.date = Field(description="First day of the previous period.")
    skus: list[ProductRow] = Field(description="Top SKUs by revenue.")
    categories: list[ProductRow] = Field(description="Top categories by revenue.")
    bought_together: Affinity | None = Field(
        default=None, description="Pairs of SKUs bought in one checkout, over the last weeks."
    )


@dataclass(slots=True)
class _Tally:
    revenue: Decimal = _ZERO
    units: Decimal = _ZERO
    buyers: set[str] = field(default_factory=set)


def _tally(
    purchases: Iterable[Purchase], start: dt.date, end: dt.date
) -> tuple[dict[str, _Tally], dict[str, _Tally]]:
    skus: dict[str, _Tally] = defaultdict(_Tally)
    categories: dict[str, _Tally] = defaultdict(_Tally)
    for p in purchases:
        if not start <= p.day <= end:
            continue
        for line in p.lines:
            for table, key in ((skus, line.sku), (categories, line.category)):
                tally = table[key]
                tally.revenue += line.amount
                tally.units += line.quantity
                if p.customer_id is not None:
                    tally.buyers.add(p.customer_id)
    return skus, categories


def _product_rows(now: dict[str, _Tally], before: dict[str, _Tally], top: int) -> list[ProductRow]:
    ranked = sorted(now.items(), key=lambda kv: (-kv[1].revenue, kv[0]))[:top]
    rows = []
    for key, t in ranked:
        p = before.get(key, _Tally())
        change = (
            ((t.revenue - p.revenue) * 100 / p.revenue).quantize(Decimal("0.1"))
            if p.revenue
            else None
        )
        rows.append(
            ProductRow(
                key=key,
                revenue=t.revenue,
                units=t.units,
                buyers=len(t.buyers),
                previous_revenue=p.revenue,
                previous_units=p.units,
                previous_buyers=len(p.buyers),
                revenue_change_percent=change,
            )
        )
    return rows


MIN_PAIR_BASKETS = 2
"""A pair seen in a single checkout says nothing, whatever its lift: never listed."""


def basket_affinity(
    purchases: Iterable[Purchase],
    start: dt.date,
    as_of: dt.date,
    *,
    min_support: Decimal = Decimal("0.01"),
    top: int = 10,
    min_baskets: int = MIN_PAIR_BASKETS,
) -> Affinity:
    """Support, confidence and lift of every pair of SKUs bought in one checkout between
    `start` and `as_of` (each checkout a set of SKUs: quantities do not count); the `top` pairs
    by lift with at least `min_support` and `min_baskets` checkouts."""
    singles: Counter[str] = Counter()
    pairs: Counter[tuple[str, str]] = Counter()
    baskets = 0
    for p in purchases:
        if not start <= p.day <= as_of:
            continue
        skus = sorted({line.sku for line in p.lines})
        if not skus:
            continue
        baskets += 1
        singles.update(skus)
        pairs.update((a, b) for i, a in enumerate(skus) for b in skus[i + 1 :])
    rows = []
    for (a, b), both in pairs.items():
        support = Decimal(both) / baskets
        if both < min_baskets or support < min_support:
            continue
        rows.append(
            PairRow(
                sku_a=a,
                sku_b=b,
                baskets=both,
                support=support.quantize(_RATE),
                confidence_a_b=(Decimal(both) / singles[a]).quantize(_RATE),
                confidence_b_a=(Decimal(both) / singles[b]).quantize(_RATE),
                lift=(Decimal(both) * baskets / (singles[a] * singles[b])).quantize(_CENT),
            )
        )
    rows.sort(key=lambda r: (-r.lift, -r.support, r.sku_a, r.sku_b))
    return Affinity(
        start=start, as_of=as_of, baskets=baskets, min_support=min_support, pairs=rows[:top]
    )


def products_report(
    facts: Facts,
    as_of: dt.date | None = None,
    *,
    days: int = 7,
    top: int = 10,
    affinity_weeks: int = 4,
    min_support: Decimal = Decimal("0.01"),
) -> ProductsReport:
    """Top SKUs and categories of the `days` ending `as_of`, against the `days` before; and the
    pairs bought together over the `affinity_weeks` ending `as_of`."""
    as_of = as_of or facts.latest_day() or dt.datetime.now(dt.UTC).date()
    start = as_of - dt.timedelta(days=days - 1)
    previous_start = start - dt.timedelta(days=days)
    skus, categories = _tally(facts.purchases, start, as_of)
    prev_skus, prev_categories = _tally(
        facts.purchases, previous_start, start - dt.timedelta(days=1)
    )
    return ProductsReport(
        as_of=as_of,
        start=start,
        previous_start=previous_start,
        skus=_product_rows(skus, prev_skus, top),
        categories=_product_rows(categories, prev_categories, top),
        bought_together=basket_affinity(
            facts.purchases,
            as_of - dt.timedelta(days=7 * affinity_weeks - 1),
            as_of,
            min_support=min_support,
            top=top,
        ),
    )


# ---------------------------------------------------------------- stores


class StoreRow(BaseModel):
    store_id: str = Field(description="Store.")
    revenue: Decimal = Field(description="Revenue in the month so far.")
    visits: int = Field(description="Checkouts in the month so far (anonymous included).")
    revenue_goal: Decimal | None = Field(description="Monthly revenue goal.")
    visits_goal: int | None = Field(description="Monthly checkouts goal.")
    revenue_percent_of_goal: Decimal | None = Field(description="revenue / goal, in percent.")
    visits_percent_of_goal: Decimal | None = Field(description="visits / goal, in percent.")
    revenue_goal_to_date: Decimal | None = Field(
        default=None,
        description="The monthly revenue goal pro-rated to the days elapsed (goal * days "
        "elapsed / days in the month).",
    )
    visits_goal_to_date: Decimal | None = Field(
        default=None, description="The monthly checkouts goal pro-rated to the days elapsed."
    )
    revenue_percent_of_goal_to_date: Decimal | None = Field(
        default=None,
        description="revenue / pro-rated goal, in percent: 100 is on track.",
    )
    visits_percent_of_goal_to_date: Decimal | None = Field(
        default=None, description="visits / pro-rated goal, in percent: 100 is on track."
    )
    teams: list[str] = Field(default_factory=list, description="The teams the store is in.")


class TeamRow(BaseModel):
    team: str = Field(description="Team (a group of stores, `CRM_STORE_TEAMS`).")
    stores: list[str] = Field(description="Its stores.")
    revenue: Decimal = Field(description="Revenue of its stores in the month so far.")
    visits: int = Field(description="Checkouts of its stores in the month so far.")
    revenue_goal: Decimal | None = Field(
        description="Sum of its stores' monthly revenue goals (null: none has one)."
    )
    visits_goal: int | None = Field(description="Sum of its stores' monthly checkouts goals.")
    revenue_percent_of_goal: Decimal | None = Field(description="revenue / goal, in percent.")
    visits_percent_of_goal: Decimal | None = Field(description="visits / goal, in percent.")
    revenue_goal_to_date: Decimal | None = Field(
        description="The revenue goal pro-rated to the days elapsed."
    )
    visits_goal_to_date: Decimal | None = Field(
        description="The checkouts goal pro-rated to the days elapsed."
    )
    revenue_percent_of_goal_to_date: Decimal | None = Field(
        description="revenue / pro-rated goal, in percent: 100 is on track."
    )
    visits_percent_of_goal_to_date: Decimal | None = Field(
        description="visits / pro-rated goal, in percent: 100 is on track."
    )


class StoresReport(BaseModel):
    name: Literal["stores"] = "stores"
    as_of: dt.date = Field(description="Last day counted.")
    month: str = Field(description="Month reported, `YYYY-MM`.")
    days_elapsed: int = Field(default=0, description="Days of the month up to `as_of`, included.")
    days_in_month: int = Field(default=0, description="Days in the month.")
    rows: list[StoreRow] = Field(description="One row per store, by store id.")
    teams: list[TeamRow] = Field(default_factory=list, description="One row per team, by name.")


_R = TypeVar("_R", StoreRow, TeamRow)


def _percent(value: Decimal, goal: Decimal | int | None) -> Decimal | None:
    if not goal:
        return None
    return (value * 100 / Decimal(goal)).quantize(Decimal("0.1"))


def goal_to_date(goal: Decimal | int | None, as_of: dt.date) -> Decimal | None:
    """A monthly goal pro-rated to the days of the month elapsed at the end of `as_of`: at day
    10 of a 30-day month, a third of it; on the month's last day, all of it."""
    if goal is None:
        return None
    days = calendar.monthrange(as_of.year, as_of.month)[1]
    return (Decimal(goal) * as_of.day / days).quantize(_CENT)


def _sum_goals(goals: Iterable[Decimal | int | None]) -> Decimal | None:
    given = [Decimal(g) for g in goals if g is not None]
    return sum(given, _ZERO) if given else None


def stores_report(
    facts: Facts,
    goals: Mapping[str, StoreGoal],
    as_of: dt.date | None = None,
    teams: Mapping[str, Sequence[str]] | None = None,
) -> StoresReport:
    """Revenue and visits per store and per team in the month of `as_of` (up to it), against
    monthly goals and against the goals pro-rated to the days elapsed."""
    as_of = as_of or facts.latest_day() or dt.datetime.now(dt.UTC).date()
    teams = teams or {}
    first = as_of.replace(day=1)
    revenue: dict[str, Decimal] = defaultdict(Decimal)
    visits: Counter[str] = Counter()
    for p in facts.purchases:
        if first <= p.day <= as_of:
            revenue[p.store_id] += p.total
            visits[p.store_id] += 1
    teams_of: dict[str, list[str]] = defaultdict(list)
    for team, members in sorted(teams.items()):
        for store_id in members:
            teams_of[store_id].append(team)
    rows = []
    for store_id in sorted(set(revenue) | set(goals) | set(teams_of)):
        goal = goals.get(store_id, StoreGoal())
        rows.append(
            _store_row(
                StoreRow,
                as_of,
                revenue.get(store_id, _ZERO),
                visits.get(store_id, 0),
                goal.revenue,
                goal.visits,
                store_id=store_id,
                teams=teams_of.get(store_id, []),
            )
        )
    team_rows = []
    for team, members in sorted(teams.items()):
        stores = sorted(set(members))
        member_goals = [goals.get(s, StoreGoal()) for s in stores]
        visits_goal = _sum_goals(g.visits for g in member_goals)
        team_rows.append(
            _store_row(
                TeamRow,
                as_of,
                sum((revenue.get(s, _ZERO) for s in stores), _ZERO),
                sum(visits.get(s, 0) for s in stores),
                _sum_goals(g.revenue for g in member_goals),
                int(visits_goal) if visits_goal is not None else None,
                team=team,
                stores=stores,
            )
        )
    return StoresReport(
        as_of=as_of,
        month=f"{first:%Y-%m}",
        days_elapsed=as_of.day,
        days_in_month=calendar.monthrange(as_of.year, as_of.month)[1],
        rows=rows,
        teams=team_rows,
    )


def _store_row(
    model: type[_R],
    as_of: dt.date,
    revenue: Decimal,
    visits: int,
    revenue_goal: Decimal | None,
    visits_goal: int | None,
    **who: Any,
) -> _R:
    revenue_to_date = goal_to_date(revenue_goal, as_of)
    visits_to_date = goal_to_date(visits_goal, as_of)
    return model(
        **who,
        revenue=revenue,
        visits=visits,
        revenue_goal=revenue_goal,
        visits_goal=visits_goal,
        revenue_percent_of_goal=_percent(revenue, revenue_goal),
        visits_percent_of_goal=_percent(Decimal(visits), visits_goal),
        revenue_goal_to_date=revenue_to_date,
        visits_goal_to_date=visits_to_date,
        revenue_percent_of_goal_to_date=_percent(revenue, revenue_to_date),
        visits_percent_of_goal_to_date=_percent(Decimal(visits), visits_to_date),
    )


# ---------------------------------------------------------------- segments


class SegmentMove(BaseModel):
    from_segment: Segment = Field(description="Segment on the first date.")
    to_segment: Segment = Field(description="Segment on the second date.")
    customers: int = Field(description="Customers who made that move.")


class SegmentsReport(BaseModel):
    name: Literal["segments"] = "segments"
    as_of: dt.date = Field(description="The second date.")
    since: dt.date = Field(description="The first date.")
    before: dict[str, int] = Field(description="Customers per segment on the first date.")
    after: dict[str, int] = Field(description="Customers per segment on the second date.")
    moves: list[SegmentMove] = Field(description="Moves between the dates (same segment too).")


def segment_on(purchases: Sequence[Purchase], day: dt.date) -> Segment:
    """The RFM segment a customer had at the end of `day` (the profiles' fixed thresholds)."""
    seen = [p for p in purchases if p.day <= day]
    if not seen:
        return "prospect"
    return rfm_segment(
        today=day,
        first_purchase=min(p.at for p in seen).date(),
        last_purchase=max(p.at for p in seen).date(),
        visits=len(seen),
        spend=sum((p.total for p in seen), _ZERO),
    )


def segments_report(
    facts: Facts, as_of: dt.date | None = None, since: dt.date | None = None
) -> SegmentsReport:
    """Known customers per segment on two dates, and how they moved (erased ones left out)."""
    as_of = as_of or facts.latest_day() or dt.datetime.now(dt.UTC).date()
    since = since or as_of - dt.timedelta(days=28)
    by_customer: dict[str, list[Purchase]] = defaultdict(list)
    for p in facts.purchases:
        # An erased customer's purchases are unlinked (no id, or a random token): left out.
        if p.customer_id is None or is_unlinked(p.customer_id):
            continue
        if p.customer_id not in facts.erased:
            by_customer[p.customer_id].append(p)
    before: Counter[str] = Counter()
    after: Counter[str] = Counter()
    moves: Counter[tuple[Segment, Segment]] = Counter()
    for purchases in by_customer.values():
        if min(p.day for p in purchases) > as_of:
            continue
        a = segment_on(purchases, since)
        b = segment_on(purchases, as_of)
        before[a] += 1
        after[b] += 1
        moves[(a, b)] += 1
    return SegmentsReport(
        as_of=as_of,
        since=since,
        before=dict(sorted(before.items())),
        after=dict(sorted(after.items())),
        moves=[
            SegmentMove(from_segment=a, to_segment=b, customers=n)
            for (a, b), n in sorted(moves.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
    )


# ---------------------------------------------------------------- tables (CSV, terminal)

AnyReport = CampaignsReport | ProductsReport | StoresReport | SegmentsReport | SentimentReport


@dataclass(frozen=True, slots=True)
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]


def _table(title: str, models: Sequence[BaseModel], columns: list[str]) -> Table:
    return Table(
        title,
        columns,
        [[getattr(m, c) for c in columns] for m in models],
    )


def tables_of(report: AnyReport) -> list[Table]:
    """A report as flat tables, for CSV and the terminal."""
    if isinstance(report, CampaignsReport):
        period = (
            f"offers valid from {report.since} to {report.as_of}"
            if report.since
            else f"every offer up to {report.as_of}"
        )
        headline = (
            [_table(period, [report.headline], list(CampaignHeadline.model_fields))]
            if report.headline is not None
            else []
        )
        return [
            *headline,
            _table(
                f"campaigns (as of {report.as_of})", report.rows, list(CampaignRow.model_fields)
            ),
            _table(
                f"per campaign and variant (as of {report.as_of})",
                report.campaigns,
                list(CampaignResultRow.model_fields),
            ),
        ]
    if isinstance(report, ProductsReport):
        cols = list(ProductRow.model_fields)
        span = f"{report.start} to {report.as_of}, against {report.previous_start} on"
        tables = [
            _table(f"top SKUs ({span})", report.skus, cols),
            _table(f"top categories ({span})", report.categories, cols),
        ]
        pairs = report.bought_together
        if pairs is not None:
            title = (
                f"bought together ({pairs.start} to {pairs.as_of}, {pairs.baskets} checkouts, "
                f"support at least {pairs.min_support})"
            )
            tables.append(_table(title, pairs.pairs, list(PairRow.model_fields)))
        return tables
    if isinstance(report, StoresReport):
        month = f"{report.month}, day {report.days_elapsed} of {report.days_in_month}"
        return [
            _table(f"stores ({month})", report.rows, list(StoreRow.model_fields)),
            _table(f"teams ({month})", report.teams, list(TeamRow.model_fields)),
        ]
    if isinstance(report, SentimentReport):
        title = f"sentiment per brand and category ({report.since} to {report.as_of})"
        return [_table(title, report.rows, list(SentimentRow.model_fields))]
    segments = sorted(set(report.before) | set(report.after))
    counts = Table(
        f"segments ({report.since} and {report.as_of})",
        ["segment", str(report.since), str(report.as_of)],
        [[s, report.before.get(s, 0), report.after.get(s, 0)] for s in segments],
    )
    return [counts, _table("segment moves", report.moves, list(SegmentMove.model_fields))]
