"""Segments: named rules over a customer's profile figures, and who is in them (pure code).

**Predicates.** A `shared.campaigns.SegmentRule` holds a customer when every predicate it gives
holds (those left out do not constrain); every bound is inclusive (`min_x` is `>=`, `max_x` is
`<=`):

- `min_spend` / `max_spend`: the profile's total spend;
- `min_visits` / `max_visits`: its distinct checkouts;
- `min_average_basket` / `max_average_basket`: total spend / visits, exact (not rounded to the
  cent); a customer without a visit has none, and these predicates fail;
- `min_days_since_last_visit` / `max_days_since_last_visit`: calendar days (in the calendar's
  time zone, `CRM_TIMEZONE`) from the day of the latest checkout to `today`; they fail for a
  customer without a checkout;
- `bought`: each entry holds when its SKU (or any SKU of its category) was in at least
  `min_checkouts` distinct checkouts within the last `within_days` calendar days, today
  included (`within_days: 1` is today only, `7` is today and the six days before); see below;
- `rfm_segment`: the customer's RFM segment as of `today` (`shared.marketing.rfm_segment`, as
  the look-up and the reports compute it) is one of these;
- `home_store`: the profile's home store (chosen, else most visits, else sign-up store) is one
  of these (store ids compared trimmed and upper-cased, as ingest writes them);
- `consent`: the customer's marketing consent is this value;
- `birthday_month`: the month of the customer's date of birth; fails without one.

Erased customers and aliases (a card merged into another profile) are in no segment.

**Built-in segments** are segments like any other, version 1, and cannot be defined: `all`
(every registered customer: signed up, not erased, not an alias) and `rfm-<segment>` for each
RFM segment but `erased` (rule `{"rfm_segment": ["<segment>"]}`). The whole `rfm-` prefix is
reserved for them.

**What `bought` can answer, exactly.** A profile keeps, in `sku_history`, every checkout within
`history_days` (30 by default, `CRM_PROFILE_HISTORY_DAYS`) of its newest checkout, and per SKU
the time of its latest checkout (`skus[sku].last_bought_at`); a SKU's category is the one of
its latest checkout (so a SKU moved to another category counts in its new one, also for its
older checkouts). From these:

- `min_checkouts: 1`, any `within_days`: answered from the latest checkout of the SKU (of any
  SKU of the category): exact;
- `min_checkouts` above 1: answered by counting the checkouts of `sku_history` inside the
  window, which is exact when the history reaches back to the window's first day. Evaluated on
  a day not before the latest checkout (the service never evaluates earlier), it does for
  every `within_days` below `history_days`, and for `within_days == history_days` in a time
  zone whose UTC offset never moves (UTC, the default; checked over 2000-2050): with
  daylight-saving time, the window's days can add up to an hour more than the history keeps.
- anything else (more checkouts over a longer window) cannot be answered from a profile:
  `unanswerable` names the field, and the API refuses such a rule (422) instead of answering
  it wrong. Were a rule accepted under other settings to become unanswerable (a shorter
  history, another time zone), its `bought` predicate does not hold.

**Evaluation model.** `today` is a calendar day in the calendar's time zone. The service
evaluates every segment for each profile a batch of `crm.events` changed, as of the calendar
day of the latest event folded into that profile in the batch, or the latest clock day seen,
or the day of the profile's latest checkout, whichever is latest (so time never runs
backwards for a customer); it publishes the entries and exits at once, in the batch that
folded the change (`at` and `cause_event_id` are that event's). On each new `crm.clock` day it
evaluates every profile as of that day (recency moves with time: `at` is the day's start,
`cause_event_id` is `clock:YYYY-MM-DD`); a day already evaluated, or older, does nothing. A
segment defined (or changed) through the API is evaluated for every profile at once by the
instance that saved it (`cause_event_id` `segment:<name>:v<version>`, `at` the definition's
time); the other instances apply it from the next change on. Entries and exits are published
in segment-name order; a membership of a segment no longer known is left as it is.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final, get_args

from services.profiles.domain import UNCATEGORIZED, CustomerProfile
from shared.campaigns import (
    ALL,
    RFM_PREFIX,
    Bought,
    SegmentDefined,
    SegmentMembershipChanged,
    SegmentRule,
)
from shared.marketing import Segment as RfmSegment

DEFAULT_HISTORY_DAYS: Final = 30
"""The profile's history window when the caller gives none (`FoldOptions.history_days`)."""
MAX_STORE_ID_LENGTH: Final = 64
"""Store ids are at most this long (the raw events' limit): a longer one matches no store."""
RFM_SEGMENTS: tuple[RfmSegment, ...] = tuple(s for s in get_args(RfmSegment) if s != "erased")
"""The RFM segments a customer can be in (an erased customer is in no segment)."""

Memberships = dict[str, dt.datetime]
"""One customer's segments: segment name -> when the customer entered it."""
Loc = tuple[str | int, ...]
"""Where a problem is in a rule, as pydantic names it (`("bought", 0, "within_days")`)."""


@dataclass(frozen=True, slots=True)
class Definition:
    """A segment as evaluated: its rule and the version of the definition."""

    name: str
    rule: SegmentRule
    version: int
    builtin: bool = False
    description: str | None = None

    @classmethod
    def of(cls, record: SegmentDefined) -> Definition:
        return cls(
            name=record.name,
            rule=record.rule,
            version=record.version,
            description=record.description,
        )


def _builtins() -> dict[str, Definition]:
    found = {
        ALL: Definition(
            name=ALL,
            rule=SegmentRule(),
            version=1,
            builtin=True,
            description="Every registered customer (not erased).",
        )
    }
    for rfm in RFM_SEGMENTS:
        name = f"{RFM_PREFIX}{rfm}"
        found[name] = Definition(
            name=name,
            rule=SegmentRule(rfm_segment=(rfm,)),
            version=1,
            builtin=True,
            description=f"Customers in the RFM segment `{rfm}` (fixed thresholds).",
        )
    return found


BUILTINS: Mapping[str, Definition] = _builtins()
"""`all` and the `rfm-<segment>` segments, by name."""


def is_reserved(name: str) -> bool:
    """A name the built-in segments use (`all`, anything starting with `rfm-`)."""
    return name == ALL or name.startswith(RFM_PREFIX)


def newer(record: SegmentDefined, than: SegmentDefined | None) -> bool:
    """Whether `record` replaces `than`: a higher version, or (two instances saving the same
    version at once) the later save; every instance ends with the same definition."""
    if than is None:
        return True
    return (record.version, record.defined_at, record.defined_by) > (
        than.version,
        than.defined_at,
        than.defined_by,
    )


def catalogue(defined: Iterable[SegmentDefined]) -> dict[str, Definition]:
    """Built-in and defined segments by name, in name order (a defined record with a reserved
    name is left out: the built-in stands)."""
    found: dict[str, Definition] = dict(BUILTINS)
    for record in defined:
        if not is_reserved(record.name):
            found[record.name] = Definition.of(record)
    return dict(sorted(found.items()))


# ---------------------------------------------------------------- days


def day_start(day: dt.date, zone: dt.tzinfo) -> dt.datetime:
    """The first instant of a calendar day of the zone, in UTC."""
    return dt.datetime.combine(day, dt.time(0), tzinfo=zone).astimezone(dt.UTC)


def local_day(moment: dt.datetime, zone: dt.tzinfo) -> dt.date:
    return moment.astimezone(zone).date()


def evaluation_day(profile: CustomerProfile, day: dt.date, zone: dt.tzinfo) -> dt.date:
    """`day`, or the day of the profile's latest checkout when that is later: a profile is
    never evaluated as of a day before its own latest checkout."""
    if profile.last_purchase_at is None:
        return day
    return max(day, local_day(profile.last_purchase_at, zone))


@functools.lru_cache(maxsize=64)
def offset_spread(zone: dt.tzinfo) -> dt.timedelta:
    """How far the zone's UTC offset moves (daylight-saving time, changes of standard time):
    the largest minus the smallest offset over 2000-2050, sampled twice a month."""
    offsets = {
        dt.datetime(year, month, day, 12, tzinfo=dt.UTC).astimezone(zone).utcoffset()
        for year in range(2000, 2051)
        for month in range(1, 13)
        for day in (1, 15)
    }
    known = [o for o in offsets if o is not None]
    return max(known) - min(known) if known else dt.timedelta(0)


def days_since_last_visit(profile: CustomerProfile, today: dt.date, zone: dt.tzinfo) -> int | None:
    """Calendar days from the day of the latest checkout to `today`; None without one."""
    if profile.last_purchase_at is None:
        return None
    return (today - local_day(profile.last_purchase_at, zone)).days


# ---------------------------------------------------------------- predicates


def _category_of(profile: CustomerProfile, sku: str) -> str | None:
    stats = profile.skus.get(sku)
    if stats is None:
        return None
    return (stats.category or UNCATEGORIZED).strip().lower()


def _wanted(profile: CustomerProfile, bought: Bought) -> Callable[[str], bool]:
    if bought.sku is not None:
        sku = bought.sku.strip().upper()
        return lambda candidate: candidate == sku
    category = (bought.category or "").strip().lower()
    return lambda candidate: _category_of(profile, candidate) == category


def _latest_checkout(profile: CustomerProfile, wanted: Callable[[str], bool]) -> dt.datetime | None:
    times = [
        stats.last_bought_at
        for sku, stats in profile.skus.items()
        if stats.last_bought_at is not None and wanted(sku)
    ]
    return max(times) if times else None


def bought_within(
    bought: Bought,
    profile: CustomerProfile,
    today: dt.date,
    *,
    zone: dt.tzinfo = dt.UTC,
    history_days: int = DEFAULT_HISTORY_DAYS,
) -> bool:
    """Whether the SKU (any SKU of the category) was in at least `min_checkouts` distinct
    checkouts within the last `within_days` calendar days, today included (see the module's
    docstring for what a profile can answer)."""
    start = day_start(today - dt.timedelta(days=bought.within_days - 1), zone)
    end = day_start(today + dt.timedelta(days=1), zone)
    wanted = _wanted(profile, bought)
    history = profile.sku_history
    newest = history[-1].at if history else None
    covered = profile.visits == 0 or (
        newest is not None and start >= newest - dt.timedelta(days=history_days)
    )
    if covered:
        checkouts = sum(
            1 for entry in history if start <= entry.at < end and any(map(wanted, entry.skus))
        )
        return checkouts >= bought.min_checkouts
    if bought.min_checkouts == 1:
        latest = _latest_checkout(profile, wanted)
        if latest is not None and latest < end:
            return latest >= start
    return False


def matches(
    rule: SegmentRule,
    profile: CustomerProfile,
    today: dt.date,
    *,
    zone: dt.tzinfo = dt.UTC,
    history_days: int = DEFAULT_HISTORY_DAYS,
) -> bool:
    """Whether the profile satisfies every predicate of the rule on `today` (a calendar day of
    `zone`); erased profiles and aliases satisfy none."""
    if profile.erased or profile.merged_into is not None:
        return False
    spend, visits = profile.total_spend, profile.visits
    if rule.min_spend is not None and spend < rule.min_spend:
        return False
    if rule.max_spend is not None and spend > rule.max_spend:
        return False
    if rule.min_visits is not None and visits < rule.min_visits:
        return False
    if rule.max_visits is not None and visits > rule.max_visits:
        return False
    if rule.min_average_basket is not None or rule.max_average_basket is not None:
        if visits == 0:
            return False
        average = spend / Decimal(visits)
        if rule.min_average_basket is not None and average < rule.min_average_basket:
            return False
        if rule.max_average_basket is not None and average > rule.max_average_basket:
            return False
    if rule.min_days_since_last_visit is not None or rule.max_days_since_last_visit is not None:
        days = days_since_last_visit(profile, today, zone)
        if days is None:
            return False
        if rule.min_days_since_last_visit is not None and days < rule.min_days_since_last_visit:
            return False
        if rule.max_days_since_last_visit is not None and days > rule.max_days_since_last_visit:
            return False
    if rule.rfm_segment and profile.segment(today) not in rule.rfm_segment:
        return False
    if rule.home_store:
        stores = {s.strip().upper() for s in rule.home_store}
        if profile.home_store_id is None or profile.home_store_id.strip().upper() not in stores:
            return False
    if rule.consent is not None and profile.marketing_consent != rule.consent:
        return False
    if rule.birthday_month is not None and (
        profile.birth_date is None or profile.birth_date.month != rule.birthday_month
    ):
        return False
    return all(
        bought_within(b, profile, today, zone=zone, history_days=history_days) for b in rule.bought
    )


def unanswerable(
    rule: SegmentRule, *, zone: dt.tzinfo = dt.UTC, history_days: int = DEFAULT_HISTORY_DAYS
) -> list[tuple[Loc, str]]:
    """The predicates a profile cannot answer exactly (where, and why): a rule with any is
    refused rather than answered wrong."""
    problems: list[tuple[Loc, str]] = []
    longest = history_days if offset_spread(zone) == dt.timedelta(0) else history_days - 1
    for index, bought in enumerate(rule.bought):
        if bought.min_checkouts > 1 and bought.within_days > longest:
            problems.append(
                (
                    ("bought", index, "within_days"),
                    f"counting {bought.min_checkouts} checkouts needs every checkout of the "
                    f"window, and profiles keep {history_days} days of them: give "
                    f"within_days up to {longest}, or min_checkouts 1",
                )
            )
    for index, store in enumerate(rule.home_store):
        if len(store) > MAX_STORE_ID_LENGTH:
            problems.append(
                (("home_store", index), f"a store id has at most {MAX_STORE_ID_LENGTH} characters")
            )
    return problems


# ---------------------------------------------------------------- membership


def members_of(
    segments: Mapping[str, Definition],
    profile: CustomerProfile,
    today: dt.date,
    *,
    zone: dt.tzinfo = dt.UTC,
    history_days: int = DEFAULT_HISTORY_DAYS,
) -> set[str]:
    """The names of the segments the profile is in on `today`."""
    if profile.erased or profile.merged_into is not None:
        return set()
    return {
        name
        for name, segment in segments.items()
        if (name != ALL or profile.registered)
        and matches(segment.rule, profile, today, zone=zone, history_days=history_days)
    }


def membership_changes(
    segments: Mapping[str, Definition],
    *,
    customer_id: str,
    before: Collection[str],
    after: Collection[str],
    at: dt.datetime,
    cause_event_id: str,
) -> list[SegmentMembershipChanged]:
    """The entries and exits from `before` to `after`, by segment name; a segment that is not
    in `segments` (no longer known) gives none."""
    changes = []
    for name in sorted(set(before) ^ set(after)):
        segment = segments.get(name)
        if segment is None:
            continue
        changes.append(
            SegmentMembershipChanged(
                type="segment_entered" if name in after else "segment_exited",
                customer_id=customer_id,
                segment=name,
                at=at,
                cause_event_id=cause_event_id,
                segment_version=segment.version,
            )
        )
    return changes


@dataclass(slots=True)
class Evaluated:
    """One profile evaluated: its memberships after, and the entries and exits to publish."""

    memberships: Memberships
    changes: list[SegmentMembershipChanged] = field(default_factory=list)


def evaluate(
    segments: Mapping[str, Definition],
    profile: CustomerProfile,
    before: Mapping[str, dt.datetime],
    *,
    today: dt.date,
    at: dt.datetime,
    cause_event_id: str,
    zone: dt.tzinfo = dt.UTC,
    history_days: int = DEFAULT_HISTORY_DAYS,
) -> Evaluated:
    """Evaluate `segments` for a profile whose memberships were `before`: a segment it stays in
    keeps its time of entry, one it enters gets `at`, and a membership of a segment not
    evaluated here stays as it was."""
    inside = members_of(segments, profile, today, zone=zone, history_days=history_days)
    memberships: Memberships = {n: t for n, t in before.items() if n not in segments}
    for name in sorted(inside):
        memberships[name] = before.get(name, at)
    changes = membership_changes(
        segments,
        customer_id=profile.customer_id,
        before=[n for n in before if n in segments],
        after=inside,
        at=at,
        cause_event_id=cause_event_id,
    )
    return Evaluated(memberships=dict(sorted(memberships.items())), changes=changes)


def clock_cause(day: dt.date) -> str:
    return f"clock:{day.isoformat()}"


def definition_cause(name: str, version: int) -> str:
    return f"segment:{name}:v{version}"
