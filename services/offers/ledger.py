"""What offers knows of one customer, as facts stamped with their event time: pure, no I/O.

Offers decides on the customer's state *as of each trigger's event time* (the consent in force
when the checkout happened, the visits before the start of a calendar day), so it keeps the
customer's facts as timelines rather than as a latest state: consent points, the times an
e-mail address was given, sign-ups and erasures, the checkouts of the recent past with their
baskets, visit times. `fold` adds what one profile change tells and returns from which event
time on the decisions may have changed; `merge_into` moves an alias's facts into the customer
it now feeds. Facts are sets (deduplicated by event id, kept sorted by time then id), so the
ledger is the same whatever order the changes arrive in.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Iterable
from decimal import Decimal
from typing import TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shared.campaigns import SegmentMembershipChanged
from shared.events import BasketLine, OfferKind, OfferScope, OfferTrigger, ProfileChanged

PURCHASE_DAYS = 62
"""Checkouts kept with their baskets: the frequent-item window (30 days), its cooldown (30 days),
and a day either side for time zones."""
VISIT_DAYS = 400
"""Visit times kept: win-back looks back 61 days, the anniversary a year."""
SEEN_IDS = 2000
"""Profile changes remembered by cause event id, to recognize one delivered again."""

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Stamp(_Part):
    """When a fact happened (event time) and the event it came with: the order of facts."""

    at: AwareDatetime
    event_id: str

    @property
    def key(self) -> tuple[dt.datetime, str]:
        return (self.at, self.event_id)


class ConsentPoint(Stamp):
    value: bool


class PurchaseFact(_Part):
    """One checkout: when, where, what, which coupon codes were listed, with which card."""

    event_id: str
    at: AwareDatetime
    store_id: str
    total: Decimal
    lines: tuple[BasketLine, ...] = ()
    coupons: tuple[str, ...] = ()
    products: dict[str, str | None] = Field(default_factory=dict)
    card_id: str | None = None
    arrived_at: AwareDatetime | None = None
    """When it arrived: a basket is let go only once it is older than the allowed lateness,
    whatever its event time, so the baskets a late event may need are still there."""

    @property
    def key(self) -> tuple[dt.datetime, str]:
        return (self.at, self.event_id)

    @property
    def skus(self) -> set[str]:
        return {line.sku for line in self.lines} or set(self.products)


DecisionOutcome = str
"""`issued`, `held_out` or `suppressed`."""


class Decision(_Part):
    """The decision on one trigger of one rule: issued, held out, or suppressed and why; with
    the terms the offer has (or would have had), so that it is re-issued identically."""

    key: str = Field(description="Rule and what it is about: `frequent_item|SKU|checkout`.")
    kind: OfferKind
    at: AwareDatetime = Field(description="Event time of the trigger.")
    outcome: DecisionOutcome
    reason: str | None = None
    offer_id: str
    trigger: OfferTrigger
    decided_at: AwareDatetime = Field(description="Arrival time of what made this decision.")
    valid_from: dt.date
    valid_until: dt.date
    discount_percent: Decimal
    template: str
    scope: OfferScope = "basket"
    sku: str | None = None
    category: str | None = None
    product_name: str | None = None
    campaign_id: str | None = None
    variant: str | None = None


class SegmentPoint(Stamp):
    """The customer entered (`value` true) or left a segment at `at`, because of `event_id`."""

    segment: str
    value: bool

    @property
    def key(self) -> tuple[dt.datetime, str]:
        return (self.at, f"{self.segment}|{self.event_id}|{int(self.value)}")


class Redemption(_Part):
    """What became of one coupon code listed at one checkout."""

    key: str = Field(description="`checkout event id|code`.")
    purchase_event_id: str
    code: str
    at: AwareDatetime
    outcome: str = Field(description="`redeemed` or `rejected`.")
    reason: str | None = None
    offer_id: str | None = None
    discount: Decimal = Decimal(0)
    decided_at: AwareDatetime


class Ledger(BaseModel):
    """One customer's facts and the decisions taken on them (stored as one document)."""

    model_config = ConfigDict(extra="ignore")

    customer_id: str
    version: int = 0
    seen: list[str] = Field(default_factory=list)
    consent: list[ConsentPoint] = Field(default_factory=list)
    emails: list[Stamp] = Field(default_factory=list)
    signups: list[Stamp] = Field(default_factory=list)
    erasures: list[Stamp] = Field(default_factory=list)
    birth_date: dt.date | None = None
    """Month and day of birth, as a day of the leap year 2000 (`crm.profiles.changed` carries
    no year): only the month and day are ever read."""
    birth_known: Stamp | None = None
    merged_into: str | None = None
    merged_at: AwareDatetime | None = None
    aliases: list[str] = Field(default_factory=list)
    cards: list[str] = Field(default_factory=list)
    purchases: list[PurchaseFact] = Field(default_factory=list)
    baskets_since: AwareDatetime | None = Field(
        default=None, description="Baskets older than this were let go (see `PURCHASE_DAYS`)."
    )
    visits: list[Stamp] = Field(default_factory=list)
    total_visits: int = 0
    first_purchase_at: AwareDatetime | None = None
    segments: list[SegmentPoint] = Field(default_factory=list)
    decisions: dict[str, Decision] = Field(default_factory=dict)
    redemptions: dict[str, Redemption] = Field(default_factory=dict)

    # ---------------------------------------------------------------- as of a time

    def consent_at(self, moment: dt.datetime) -> bool:
        """The consent in force at `moment`: the latest point at or before it."""
        value = False
        for point in self.consent:
            if point.at > moment:
                break
            value = point.value
        return value

    def erased_at(self, moment: dt.datetime) -> bool:
        """Whether the customer was erased at `moment` (an erasure with no sign-up after it)."""
        erased = [e.at for e in self.erasures if e.at <= moment]
        if not erased:
            return False
        last = max(erased)
        return not any(last < s.at <= moment for s in self.signups)

    def email_at(self, moment: dt.datetime) -> bool:
        """Whether an e-mail address was known at `moment` (given after the last erasure)."""
        erased = [e.at for e in self.erasures if e.at <= moment]
        since = max(erased) if erased else _EPOCH - dt.timedelta(days=1)
        return any(since < e.at <= moment for e in self.emails)

    def birth_date_at(self, moment: dt.datetime) -> dt.date | None:
        if self.birth_known is None or self.birth_known.at > moment:
            return None
        return self.birth_date

    def first_purchase_before(self, moment: dt.datetime) -> dt.datetime | None:
        """The first checkout before `moment` (from the profile's figure when it is older
        than the visits kept here)."""
        own = next((v.at for v in self.visits if v.at < moment), None)
        known = self.first_purchase_at
        if known is not None and known < moment and (own is None or known < own):
            return known
        return own

    def visits_before(self, moment: dt.datetime) -> int:
        """Checkouts before `moment`: the profile's count less the kept visits since then."""
        later = len(self.visits) - bisect.bisect_left([v.at for v in self.visits], moment)
        return max(0, max(self.total_visits, len(self.visits)) - later)

    def last_visit_before(self, moment: dt.datetime) -> dt.datetime | None:
        """The latest checkout before `moment`; a moment before any kept visit when the
        profile counts older visits than those kept (they are older than `VISIT_DAYS`)."""
        times = [v.at for v in self.visits]
        index = bisect.bisect_left(times, moment)
        if index:
            return times[index - 1]
        if self.total_visits > len(times) and self.first_purchase_at is not None:
            return min(self.first_purchase_at, moment - dt.timedelta(days=VISIT_DAYS))
        return None

    def purchases_from(self, moment: dt.datetime) -> list[PurchaseFact]:
        return [p for p in self.purchases if p.at >= moment]

    def is_alias(self) -> bool:
        return self.merged_into is not None

    def erased_now(self) -> bool:
        """Whether the customer stands erased (an erasure with no sign-up after it)."""
        return bool(self.erasures) and self.erased_at(dt.datetime.max.replace(tzinfo=dt.UTC))

    def in_segment(self, segment: str, moment: dt.datetime) -> bool:
        """Whether the customer was in the segment at `moment`: the latest entry or exit at or
        before it says."""
        value = False
        for point in self.segments:
            if point.at > moment:
                break
            if point.segment == segment:
                value = point.value
        return value

    def segment_entries_from(self, moment: dt.datetime) -> list[SegmentPoint]:
        """The entries from `moment` on that are entries: the customer was not in the segment
        just before. An entry said twice (a rebuilt profiles service says it again, with
        another cause) is not a second entry."""
        inside: dict[str, bool] = {}
        found = []
        for point in self.segments:
            if point.value and not inside.get(point.segment, False) and point.at >= moment:
                found.append(point)
            inside[point.segment] = point.value
        return found

    def decision_of(self, offer_id: str) -> Decision | None:
        """The decision that gives (or would give) this offer id, if the ledger holds it."""
        return next((d for d in self.decisions.values() if d.offer_id == offer_id), None)


# ---------------------------------------------------------------- folding profile changes


_S = TypeVar("_S", bound=Stamp)


def birthday_in_2000(birthday: str | None) -> dt.date | None:
    """A `MM-DD` birthday as a day of the leap year 2000 (so 29 February exists)."""
    if not birthday:
        return None
    month, day = birthday.split("-")
    return dt.date(2000, int(month), int(day))


def _insert(items: list[_S], item: _S) -> bool:
    """Insert keeping (time, event id) order; False when that stamp is already there."""
    keys = [i.key for i in items]
    index = bisect.bisect_left(keys, item.key)
    if index < len(items) and keys[index] == item.key:
        return False
    items.insert(index, item)
    return True


def _newest(times: Iterable[dt.datetime]) -> dt.datetime | None:
    return max(times, default=None)


def _prune(ledger: Ledger, settled: dt.datetime | None) -> None:
    """Drop baskets older than what the rules look back on (from the newest checkout), once
    they arrived before `settled` (longer ago than the allowed lateness): which baskets a
    ledger holds then depends on the events, not on the order they came in. Visit times go
    after `VISIT_DAYS`."""
    newest = _newest(v.at for v in ledger.visits)
    if newest is None:
        return
    baskets = newest - dt.timedelta(days=PURCHASE_DAYS)

    def gone(p: PurchaseFact) -> bool:
        return p.at < baskets and (
            settled is None or p.arrived_at is None or p.arrived_at < settled
        )

    if any(gone(p) for p in ledger.purchases):
        dropped = [p.at for p in ledger.purchases if gone(p)]
        ledger.purchases = [p for p in ledger.purchases if not gone(p)]
        ledger.baskets_since = max(
            [*dropped, *([ledger.baskets_since] if ledger.baskets_since else [])]
        ) + dt.timedelta(microseconds=1)
    visits = newest - dt.timedelta(days=VISIT_DAYS)
    ledger.visits = [v for v in ledger.visits if v.at >= visits]


def fold(
    ledger: Ledger,
    change: ProfileChanged,
    *,
    arrived_at: dt.datetime | None = None,
    settled: dt.datetime | None = None,
) -> dt.datetime | None:
    """Add what a profile change tells; returns the earliest event time from which decisions
    may have changed, or None when it told nothing new (a change delivered again).

    `arrived_at`: when the change arrived; `settled`: facts that arrived before it are past
    the allowed lateness and may be let go."""
    if change.cause_event_id in ledger.seen:
        return None
    ledger.seen.append(change.cause_event_id)
    if len(ledger.seen) > SEEN_IDS:
        del ledger.seen[: len(ledger.seen) - SEEN_IDS]
    at = change.occurred_at
    stamp = Stamp(at=at, event_id=change.cause_event_id)
    affected: list[dt.datetime] = []
    for card in change.card_ids:
        if card not in ledger.cards:
            bisect.insort(ledger.cards, card)
    if change.cause_type == "customer_erased" or change.erased:
        if _insert(ledger.erasures, stamp):
            affected.append(at)
        # Nothing personal stays: the decisions need only the erasure's time from now on.
        ledger.birth_date = None
        ledger.birth_known = None
        ledger.purchases = []
    if change.cause_type == "customer_signed_up" and _insert(ledger.signups, stamp):
        affected.append(at)
    if change.consent_given is not None:
        point = ConsentPoint(at=at, event_id=change.cause_event_id, value=change.consent_given)
        if _insert(ledger.consent, point):
            affected.append(at)
    if change.email_given and _insert(ledger.emails, stamp):
        affected.append(at)
    born = birthday_in_2000(change.birthday) if change.birth_date_given else None
    if born is not None:
        known = ledger.birth_known
        if known is None or stamp.key < known.key or born != ledger.birth_date:
            ledger.birth_known = stamp if known is None or stamp.key < known.key else known
            ledger.birth_date = born
            affected.append(min(at, ledger.birth_known.at))
    if change.first_purchase_at is not None and (
        ledger.first_purchase_at is None or change.first_purchase_at < ledger.first_purchase_at
    ):
        ledger.first_purchase_at = change.first_purchase_at
        affected.append(change.first_purchase_at)
    ledger.total_visits = max(ledger.total_visits, change.visits)
    purchase = change.purchase
    if purchase is not None and not ledger.erased_at(at):
        fact = PurchaseFact(
            event_id=purchase.event_id,
            at=at,
            store_id=purchase.store_id,
            total=purchase.total,
            lines=purchase.lines,
            coupons=purchase.coupons,
            products=purchase.products,
            card_id=purchase.card_id,
            arrived_at=arrived_at,
        )
        if _insert(ledger.visits, Stamp(at=at, event_id=purchase.event_id)):
            keys = [p.key for p in ledger.purchases]
            ledger.purchases.insert(bisect.bisect_left(keys, fact.key), fact)
            affected.append(at)
        _prune(ledger, settled)
    if change.merged_into is not None and ledger.merged_into is None:
        ledger.merged_into = change.merged_into
        ledger.merged_at = at
        affected.append(_EPOCH)  # an alias has no decisions of its own any more
    return min(affected) if affected else None


def fold_segment(ledger: Ledger, change: SegmentMembershipChanged) -> dt.datetime | None:
    """Add a segment entry or exit; returns its time, or None when it was known (delivered
    again). Entries and exits are a set, so their arrival order does not matter."""
    point = SegmentPoint(
        at=change.at,
        event_id=change.cause_event_id,
        segment=change.segment,
        value=change.type == "segment_entered",
    )
    keys = [p.key for p in ledger.segments]
    index = bisect.bisect_left(keys, point.key)
    if index < len(keys) and keys[index] == point.key:
        return None
    ledger.segments.insert(index, point)
    horizon = max(p.at for p in ledger.segments) - dt.timedelta(days=VISIT_DAYS)
    ledger.segments = [p for p in ledger.segments if p.at >= horizon]
    return change.at


def merge_into(
    target: Ledger, alias: Ledger, *, settled: dt.datetime | None = None
) -> dt.datetime | None:
    """Move an alias's facts into the customer it now feeds (a card link merged the two
    profiles); returns the earliest fact time moved, from which the target's decisions may
    change. The union does not depend on when the link came."""
    earliest: list[dt.datetime] = []
    for point in alias.consent:
        if _insert(target.consent, point):
            earliest.append(point.at)
    for name in ("emails", "signups", "erasures"):
        mine: list[Stamp] = getattr(target, name)
        for stamp in getattr(alias, name):
            if _insert(mine, stamp):
                earliest.append(stamp.at)
    if alias.birth_known is not None and (
        target.birth_known is None or alias.birth_known.key > target.birth_known.key
    ):
        target.birth_known, target.birth_date = alias.birth_known, alias.birth_date
        earliest.append(alias.birth_known.at)
    for visit in alias.visits:
        _insert(target.visits, visit)
    keys = {p.event_id for p in target.purchases}
    for fact in alias.purchases:
        if fact.event_id not in keys:
            index = bisect.bisect_left([p.key for p in target.purchases], fact.key)
            target.purchases.insert(index, fact)
            earliest.append(fact.at)
    if alias.first_purchase_at is not None and (
        target.first_purchase_at is None or alias.first_purchase_at < target.first_purchase_at
    ):
        target.first_purchase_at = alias.first_purchase_at
    target.total_visits = max(target.total_visits, len(target.visits))
    for card in alias.cards:
        if card not in target.cards:
            bisect.insort(target.cards, card)
    for name in (alias.customer_id, *alias.aliases):
        if name not in target.aliases:
            bisect.insort(target.aliases, name)
    _prune(target, settled)
    return min(earliest, default=None)
