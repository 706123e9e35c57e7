"""The offer decisions of one customer, as a function of the customer's facts: pure, no I/O.

The model is Materialize's (Differential Dataflow: an output is a function of the input
collection) with Flink's retractions and allowed lateness: a customer's offers are what the
rules give when the customer's triggers (checkouts, calendar days) are taken in event-time
order, each on the customer's state as of the trigger's time (the consent then in force, the
checkouts before it, the visits before the start of the day). When facts arrive, `recompute`
takes the decisions again from the earliest event time they touch (`since`) and compares: an
offer that should now exist is issued (the same id and code as in event-time order), one that
should no longer exist is revoked; redemptions and expiries are taken again the same way.
Decisions taken longer ago than the allowed lateness (in arrival time) are final and stand.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal
from zoneinfo import ZoneInfo

from services.offers.campaigns import (
    BUILTIN_KIND,
    KIND_OF_TRIGGER,
    CampaignBook,
    in_global_control,
    seeds,
    variant_for,
)
from services.offers.domain import (
    OfferRecord,
    birthday_month_days,
    check_code,
    coupon_code_for,
    is_held_out,
    normalize_code,
    offer_id_for,
    one_year_after,
    rejection_id_for,
    would_exceed_cap,
)
from services.offers.ledger import Decision, Ledger, PurchaseFact, Redemption, SegmentPoint
from services.offers.settings import OfferRules
from shared.campaigns import ALL, CampaignChanged, CampaignSpec, CampaignTrigger
from shared.events import (
    OfferExpired,
    OfferHeldOut,
    OfferIssued,
    OfferKind,
    OfferRedeemed,
    OfferRevoked,
    OfferScope,
    OfferTrigger,
    RedemptionRejected,
)
from shared.marketing import campaign_period
from shared.settings import CalendarSettings

_DAY = dt.timedelta(days=1)
KEEP_ISSUED_DAYS = 400
"""Decisions that issued or held out an offer are kept this long (cooldowns, cap, lineage)."""
KEEP_SUPPRESSED_DAYS = 90
"""Suppressed decisions are kept this long (why a customer did not get a coupon)."""

OutEvent = (
    OfferIssued | OfferRedeemed | RedemptionRejected | OfferHeldOut | OfferRevoked | OfferExpired
)
Outcome = Literal["issued", "held_out", "suppressed"]


@dataclass(frozen=True, slots=True)
class Days:
    """The calendar days completed so far: every day from `first` to `last`."""

    first: dt.date | None = None
    last: dt.date | None = None

    def since(self, day: dt.date) -> list[dt.date]:
        if self.first is None or self.last is None:
            return []
        start = max(day, self.first)
        return [start + n * _DAY for n in range((self.last - start).days + 1)]

    def with_day(self, day: dt.date) -> Days:
        """The days completed once `day` has begun: the range grows to take it in, so the
        completed days are the same whatever order the ticks came in."""
        if self.first is None or self.last is None:
            return Days(day, day)
        return Days(min(self.first, day), max(self.last, day))

    def added(self, other: Days) -> list[dt.date]:
        """The days of `other` that are not days of this range."""
        return [d for d in other.since(other.first or dt.date.min) if not self.holds(d)]

    def holds(self, day: dt.date) -> bool:
        return self.first is not None and self.last is not None and self.first <= day <= self.last


@dataclass(frozen=True, slots=True)
class _Candidate:
    """A rule's trigger for one customer, with the offer it would give."""

    key: str
    kind: OfferKind
    at: dt.datetime
    rule_key: str
    trigger_id: str
    trigger: OfferTrigger
    valid_from: dt.date
    validity_days: int
    discount_percent: Decimal
    template: str
    campaign_id: str
    variant: str | None = None
    scope: OfferScope = "basket"
    sku: str | None = None
    category: str | None = None
    product_name: str | None = None
    series: str = ""
    """What a cooldown spaces apart within the campaign (the SKU or category bought)."""
    cooldown_days: int = 0
    audience: str = ALL
    holdout_percent: Decimal = Decimal(0)
    keep_suppression: bool = True


@dataclass(slots=True)
class Recomputed:
    """What a recompute changed: offers to store, events to publish (in order), counters."""

    offers: dict[str, OfferRecord] = field(default_factory=dict)
    events: list[OutEvent] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)


class OfferDecider:
    """Takes a customer's offer decisions again from an event time on."""

    def __init__(
        self,
        *,
        rules: OfferRules,
        coupon_key: bytes,
        calendar: CalendarSettings,
        lateness: dt.timedelta,
        book: CampaignBook | None = None,
        global_control_percent: Decimal = Decimal(0),
    ) -> None:
        self.rules = rules
        if book is None:  # the built-in campaigns, as the rules describe them
            book = CampaignBook()
            for record in seeds({}, rules, dt.datetime.now(dt.UTC)):
                book.apply(record)
        self.book = book
        self.global_control_percent = global_control_percent
        self._coupon_key = coupon_key
        self._calendar = calendar
        self._zone = ZoneInfo(calendar.timezone)
        self.lateness = lateness

    # ------------------------------------------------------------ time

    def day_start(self, day: dt.date) -> dt.datetime:
        """The start of a calendar day: midnight in the calendar's time zone, in UTC."""
        return dt.datetime.combine(day, dt.time(0), tzinfo=self._zone).astimezone(dt.UTC)

    def day_of(self, moment: dt.datetime) -> dt.date:
        """The calendar day a moment falls in (the calendar's time zone)."""
        return moment.astimezone(self._zone).date()

    def store_day(self, moment: dt.datetime, store_id: str | None) -> dt.date:
        return moment.astimezone(self._calendar.zone_of(store_id)).date()

    # ------------------------------------------------------------ what a ledger is found by

    def anniversary_date(self, ledger: Ledger) -> dt.date | None:
        first = ledger.first_purchase_at
        return one_year_after(self.day_of(first)) if first is not None else None

    def _inactive_campaigns(self) -> list[tuple[str, CampaignTrigger]]:
        """The inactivity triggers of the campaigns not paused now (any version in force)."""
        found = []
        for campaign in self.book.ordered():
            for spec in campaign.versions:
                if spec.trigger.type == "inactive":
                    found.append((campaign.campaign_id, spec.trigger))
        return found

    def win_back_due(self, ledger: Ledger, days: Days) -> dt.date | None:
        """The first day not yet completed on which the customer may be due an inactivity
        offer of any campaign: away long enough as of its start (with enough visits before),
        and past that campaign's cooldown; None when no such day can come. A visit after that
        day (arrived before its tick) does not hide it: the days between two visits far enough
        apart count."""
        if ledger.is_alias() or not ledger.visits:
            return None
        after = days.last + _DAY if days.last is not None else None
        visits = [self.day_of(v.at) for v in ledger.visits]
        older = max(0, ledger.total_visits - len(visits))  # counted, but not kept here
        due: list[dt.date] = []
        for campaign_id, trigger in self._inactive_campaigns():
            cooldown = trigger.cooldown_days if trigger.cooldown_days is not None else 90
            cooldown_end = max(
                (
                    d.valid_from + cooldown * _DAY
                    for d in ledger.decisions.values()
                    if d.outcome == "issued" and _campaign_of(d) == campaign_id
                ),
                default=None,
            )
            gap = ((trigger.days or 0) + 1) * _DAY
            for index, day in enumerate(visits):
                if older + index + 1 < trigger.min_visits:
                    continue  # not a regular customer yet after this visit
                first = day + gap  # away long enough from the start of this day on
                last = visits[index + 1] if index + 1 < len(visits) else None  # a visit ends it
                start = max(d for d in (first, after, cooldown_end) if d is not None)
                if last is None or start <= last:
                    due.append(start)
                    break
        return min(due, default=None)

    # ------------------------------------------------------------ the recompute

    def recompute(
        self,
        ledger: Ledger,
        *,
        since: dt.datetime,
        days: Days,
        arrival: dt.datetime,
        offers: Mapping[str, OfferRecord],
        owners: Mapping[str, str],
        refused: Collection[str] = (),
    ) -> Recomputed:
        """Take the customer's decisions again from `since` on; update `ledger` and return the
        changed offers and the events that say so.

        `refused`: redemptions (`checkout event id|code`) its campaign's budget refused.

        `offers`: the stored offers of the customer and of its aliases; `owners`: code ->
        customer for the codes its checkouts list that are not its own (a foreign code).
        """
        out = Recomputed()
        if ledger.baskets_since is not None:
            # Before this the baskets are gone: those decisions cannot be taken again.
            horizon = ledger.baskets_since + self._longest_window() * _DAY
            since = max(since, horizon)
        cutoff = arrival - self.lateness
        before = dict(ledger.decisions)
        decisions = {k: d for k, d in before.items() if d.at < since or d.decided_at < cutoff}
        if not ledger.is_alias():  # an alias's facts feed another customer now
            for candidate in self._candidates(ledger, since, days):
                self._decide(ledger, candidate, decisions, before, arrival)
        ledger.decisions = _pruned(decisions)
        if ledger.erased_now():
            # An erased customer keeps no open coupon, whichever came first, the erasure or
            # the checkouts before it: the same offers in the end, in any order.
            for key, decision in list(ledger.decisions.items()):
                stored = offers.get(decision.offer_id)
                if decision.outcome == "issued" and (stored is None or stored.state == "issued"):
                    ledger.decisions[key] = decision.model_copy(
                        update={"outcome": "suppressed", "reason": "erased"}
                    )

        for key, old in sorted(before.items(), key=lambda kv: (kv[1].at, kv[0])):
            now = ledger.decisions.get(key)
            if old.outcome == "issued" and (now is None or now.outcome != "issued"):
                self._revoke(offers.get(old.offer_id), now, max(since, old.at), out)
        for key, new in sorted(ledger.decisions.items(), key=lambda kv: (kv[1].at, kv[0])):
            previous = before.get(key)
            stored = offers.get(new.offer_id)
            if new.outcome == "issued" and (stored is None or stored.state == "revoked"):
                record = OfferRecord(
                    issued=self._issued(ledger.customer_id, new),
                    rule_key=new.key.split("|")[1],
                    delivery=stored.delivery if stored is not None else None,
                    message_id=stored.message_id if stored is not None else None,
                )
                out.offers[new.offer_id] = record
                out.events.append(record.issued)
                out.stats[f"issued_{new.kind}"] += 1
            elif new.outcome == "held_out" and (previous is None or previous.outcome != "held_out"):
                out.events.append(self._held_out(ledger.customer_id, new))
                out.stats[f"held_out_{new.kind}"] += 1
            elif new.outcome == "suppressed" and (
                previous is None or previous.reason != new.reason
            ):
                out.stats[f"suppressed_{new.reason}"] += 1

        # The customer's live offers as they now stand, states to be taken again below.
        live: dict[str, OfferRecord] = {}
        for decision in ledger.decisions.values():
            if decision.outcome == "issued":
                found = out.offers.get(decision.offer_id) or offers.get(decision.offer_id)
                if found is not None and found.state != "revoked":
                    live[decision.offer_id] = found
        for other in offers.values():  # an alias's offers that stand (final) are usable too
            if other.customer_id != ledger.customer_id and other.state != "revoked":
                live.setdefault(other.offer_id, other)
        redeemed_by = self._redeem(
            ledger, since, live, offers, owners, arrival, cutoff, out, refused
        )
        self._settle(ledger, live, redeemed_by, offers, days, out)
        return out

    # ------------------------------------------------------------ candidates

    def _candidates(self, ledger: Ledger, since: dt.datetime, days: Days) -> list[_Candidate]:
        """Every campaign's triggers from `since` on, in event-time order (a day's calendar
        triggers at its start, before that day's checkouts), each with the campaign as it stood
        at the trigger's time."""
        campaigns = self.book.ordered()
        triggers: list[tuple[tuple[dt.datetime, int, str], list[_Candidate]]] = []
        for day in days.since(self.day_of(since) - _DAY):
            start = self.day_start(day)
            if start >= since:
                found = self._calendar_candidates(ledger, day, campaigns)
                triggers.append(((start, 0, day.isoformat()), found))
        for purchase in ledger.purchases_from(since):
            key = (purchase.at, 1, purchase.event_id)
            triggers.append((key, self._purchase_candidates(ledger, purchase, campaigns)))
        for entry in ledger.segment_entries_from(since):
            key = (entry.at, 2, f"{entry.segment}|{entry.event_id}")
            triggers.append((key, self._segment_candidates(ledger, entry, campaigns)))
        triggers.sort(key=lambda item: item[0])
        return [candidate for _, found in triggers for candidate in found]

    def _in_force(
        self, campaign: CampaignChanged, at: dt.datetime, day: dt.date
    ) -> CampaignSpec | None:
        """The campaign's spec at `at` if it was active then and `day` is in its schedule."""
        found = campaign.in_force(at)
        if found is None or not found[1]:
            return None
        spec = found[0]
        if spec.starts_on is not None and day < spec.starts_on:
            return None
        if spec.ends_on is not None and day > spec.ends_on:
            return None
        return spec

    def _candidate(
        self,
        ledger: Ledger,
        campaign_id: str,
        spec: CampaignSpec,
        *,
        at: dt.datetime,
        day: dt.date,
        rule_key: str,
        trigger_id: str,
        trigger: OfferTrigger,
        sku: str | None = None,
        category: str | None = None,
        product_name: str | None = None,
        keep_suppression: bool = True,
    ) -> _Candidate | None:
        """The offer a campaign's trigger would give this customer (its A/B arm's terms)."""
        variant = variant_for(campaign_id, ledger.customer_id, spec.variants)
        offer = variant.offer if variant is not None else spec.offer
        builtin = BUILTIN_KIND.get(campaign_id)
        kind = builtin or KIND_OF_TRIGGER[spec.trigger.type]
        scope_sku = offer.sku or sku if offer.scope == "sku" else None
        if offer.scope == "sku" and scope_sku is None:
            return None  # a product coupon needs a product
        scope_category = offer.category or category if offer.scope == "category" else None
        if offer.scope == "category" and scope_category is None:
            return None
        trig = spec.trigger
        if trig.cooldown_days is not None:
            cooldown = trig.cooldown_days
        elif trig.type == "purchase":
            cooldown = trig.window_days
        elif trig.type == "inactive":
            cooldown = 90
        else:
            cooldown = 0
        if builtin is not None:
            key = f"{kind}|{rule_key}" + (f"|{trigger_id}" if kind == "frequent_item" else "")
            id_rule = rule_key
        else:
            key = f"{campaign_id}|{rule_key}|{trigger_id}"
            id_rule = f"{campaign_id}:{rule_key}"
        return _Candidate(
            key=key,
            kind=kind,
            at=at,
            rule_key=id_rule,
            trigger_id=trigger_id,
            trigger=trigger,
            valid_from=day,
            validity_days=offer.validity_days,
            discount_percent=offer.discount_percent,
            template=(variant.template if variant is not None else None) or spec.template,
            campaign_id=campaign_id,
            variant=variant.name if variant is not None else None,
            scope=offer.scope,
            sku=scope_sku,
            category=scope_category,
            product_name=product_name if scope_sku == sku else None,
            series=rule_key if trig.type == "purchase" else "",
            cooldown_days=cooldown,
            audience=spec.audience.segment,
            holdout_percent=spec.holdout_percent,
            keep_suppression=keep_suppression,
        )

    def _purchase_candidates(
        self, ledger: Ledger, purchase: PurchaseFact, campaigns: list[CampaignChanged]
    ) -> list[_Candidate]:
        zone = self._calendar.zone_of(purchase.store_id)
        day = purchase.at.astimezone(zone).date()
        found: list[_Candidate] = []
        for campaign in campaigns:
            spec = self._in_force(campaign, purchase.at, day)
            if spec is None or spec.trigger.type != "purchase":
                continue
            trig = spec.trigger
            earliest = day - trig.window_days * _DAY
            window = [
                p
                for p in ledger.purchases
                if p.key <= purchase.key and p.at.astimezone(zone).date() >= earliest
            ]
            if trig.category is not None:
                wanted = trig.category
                with_it = [p for p in window if wanted in {line.category for line in p.lines}]
                if wanted not in {line.category for line in purchase.lines}:
                    continue
                if len(with_it) < trig.min_checkouts:
                    continue
                candidate = self._candidate(
                    ledger,
                    campaign.campaign_id,
                    spec,
                    at=purchase.at,
                    day=day,
                    rule_key=wanted,
                    trigger_id=purchase.event_id,
                    trigger=OfferTrigger(
                        type="purchase", event_ids=tuple(p.event_id for p in with_it)
                    ),
                    category=wanted,
                )
                if candidate is not None:
                    found.append(candidate)
                continue
            skus = sorted(purchase.skus) if trig.any_sku else [trig.sku or ""]
            for sku in skus:
                if sku not in purchase.skus:
                    continue
                with_sku = [p for p in window if sku in p.skus]
                if len(with_sku) < trig.min_checkouts:
                    continue
                candidate = self._candidate(
                    ledger,
                    campaign.campaign_id,
                    spec,
                    at=purchase.at,
                    day=day,
                    rule_key=sku,
                    trigger_id=purchase.event_id,
                    trigger=OfferTrigger(
                        type="purchase", event_ids=tuple(p.event_id for p in with_sku)
                    ),
                    sku=sku,
                    product_name=purchase.products.get(sku),
                )
                if candidate is not None:
                    found.append(candidate)
        return found

    def _calendar_candidates(
        self, ledger: Ledger, day: dt.date, campaigns: list[CampaignChanged]
    ) -> list[_Candidate]:
        """Birthday, anniversary and inactivity triggers of `day`, on the state as of its
        start."""
        start = self.day_start(day)
        clock = OfferTrigger(type="clock", day=day)
        found: list[_Candidate] = []
        born = ledger.birth_date_at(start)
        first = ledger.first_purchase_before(start)
        last = ledger.last_visit_before(start)
        for campaign in campaigns:
            spec = self._in_force(campaign, start, day)
            if spec is None:
                continue
            trig = spec.trigger
            candidate: _Candidate | None = None
            if trig.type == "birthday":
                if born is not None and f"{born.month:02d}-{born.day:02d}" in birthday_month_days(
                    day
                ):
                    year = str(day.year)
                    candidate = self._candidate(
                        ledger,
                        campaign.campaign_id,
                        spec,
                        at=start,
                        day=day,
                        rule_key=year,
                        trigger_id=year,
                        trigger=clock,
                    )
            elif trig.type == "anniversary":
                if first is not None and one_year_after(self.day_of(first)) == day:
                    candidate = self._candidate(
                        ledger,
                        campaign.campaign_id,
                        spec,
                        at=start,
                        day=day,
                        rule_key="once",
                        trigger_id="once",
                        trigger=clock,
                    )
            elif trig.type == "inactive":
                lapsed = day - ((trig.days or 0) + 1) * _DAY
                if (
                    last is not None
                    and self.day_of(last) <= lapsed
                    and ledger.visits_before(start) >= trig.min_visits
                ):
                    candidate = self._candidate(
                        ledger,
                        campaign.campaign_id,
                        spec,
                        at=start,
                        day=day,
                        rule_key=day.isoformat(),
                        trigger_id=day.isoformat(),
                        trigger=clock,
                        # Someone away for months is a candidate every day: only the day they
                        # became one keeps a suppression (why they got nothing), not every day.
                        keep_suppression=self.day_of(last) == lapsed,
                    )
            if candidate is not None:
                found.append(candidate)
        return found

    def _segment_candidates(
        self, ledger: Ledger, entry: SegmentPoint, campaigns: list[CampaignChanged]
    ) -> list[_Candidate]:
        """The `segment_entered` campaigns of a segment the customer entered, once per entry."""
        day = self.day_of(entry.at)
        found: list[_Candidate] = []
        for campaign in campaigns:
            spec = self._in_force(campaign, entry.at, day)
            if spec is None or spec.trigger.type != "segment_entered":
                continue
            if spec.trigger.segment != entry.segment:
                continue
            candidate = self._candidate(
                ledger,
                campaign.campaign_id,
                spec,
                at=entry.at,
                day=day,
                rule_key=entry.segment,
                trigger_id=entry.event_id,
                trigger=OfferTrigger(
                    type="segment", segment=entry.segment, event_ids=(entry.event_id,)
                ),
            )
            if candidate is not None:
                found.append(candidate)
        return found

    # ------------------------------------------------------------ deciding

    def _decide(
        self,
        ledger: Ledger,
        candidate: _Candidate,
        decisions: dict[str, Decision],
        before: Mapping[str, Decision],
        arrival: dt.datetime,
    ) -> None:
        if candidate.key in decisions:
            return  # taken before `since`, or final (older than the allowed lateness)
        old = before.get(candidate.key)
        reason = self._suppression(ledger, candidate, decisions, new=old is None)
        outcome: Outcome
        if reason is not None:
            if not candidate.keep_suppression:
                return
            outcome = "suppressed"
        elif in_global_control(ledger.customer_id, self.global_control_percent):
            outcome, reason = "held_out", "global_control"
        else:
            period = campaign_period(candidate.valid_from)
            builtin = BUILTIN_KIND.get(candidate.campaign_id)
            held = is_held_out(
                ledger.customer_id,
                builtin or candidate.campaign_id,
                period,
                candidate.holdout_percent,
            )
            outcome = "held_out" if held else "issued"
        same = old is not None and old.outcome == outcome and old.reason == reason
        decisions[candidate.key] = Decision(
            key=candidate.key,
            kind=candidate.kind,
            at=candidate.at,
            outcome=outcome,
            reason=reason,
            offer_id=offer_id_for(
                candidate.kind, ledger.customer_id, candidate.rule_key, candidate.trigger_id
            ),
            trigger=candidate.trigger,
            decided_at=old.decided_at if same and old is not None else arrival,
            valid_from=candidate.valid_from,
            valid_until=candidate.valid_from + candidate.validity_days * _DAY,
            discount_percent=candidate.discount_percent,
            template=candidate.template,
            scope=candidate.scope,
            sku=candidate.sku,
            category=candidate.category,
            product_name=candidate.product_name,
            campaign_id=candidate.campaign_id,
            variant=candidate.variant,
        )

    def _suppression(
        self,
        ledger: Ledger,
        candidate: _Candidate,
        decisions: Mapping[str, Decision],
        *,
        new: bool,
    ) -> str | None:
        """Why the candidate gets no offer, on the state as of its time; None if it does.
        Only the offers decided before it (event time, then key) count for cooldown and cap.
        A campaign whose budget is spent makes no new decision (one taken stands)."""
        at = candidate.at
        if ledger.erased_at(at):
            return "erased"
        if not ledger.consent_at(at):
            return "consent"
        if not ledger.email_at(at):
            return "no_email"
        if candidate.audience != ALL and not ledger.in_segment(candidate.audience, at):
            return "audience"
        if new and candidate.campaign_id in self.book.spent:
            return "budget_spent"
        earlier = [
            d
            for d in decisions.values()
            if d.outcome == "issued" and (d.at, d.key) < (at, candidate.key)
        ]
        if candidate.cooldown_days and any(
            _same_series(candidate, d)
            and (candidate.valid_from - d.valid_from).days < candidate.cooldown_days
            for d in earlier
        ):
            return "cooldown"
        cap = self.rules.frequency_cap
        if cap.enabled and candidate.kind not in cap.exempt_kinds:
            counted = [d.valid_from for d in earlier if d.kind not in cap.exempt_kinds]
            if would_exceed_cap(
                candidate.valid_from, counted, most=cap.max_offers, window=cap.window_days
            ):
                return "cap"
        return None

    # ------------------------------------------------------------ events of decisions

    def _longest_window(self) -> int:
        """The longest purchase window of any campaign: how far back a checkout's decision
        looks at the baskets before it."""
        return max(
            (
                spec.trigger.window_days
                for campaign in self.book.ordered()
                for spec in campaign.versions
                if spec.trigger.type == "purchase"
            ),
            default=0,
        )

    def _issued(self, customer_id: str, decision: Decision) -> OfferIssued:
        return OfferIssued(
            offer_id=decision.offer_id,
            customer_id=customer_id,
            kind=decision.kind,
            coupon_code=coupon_code_for(decision.offer_id, self._coupon_key),
            discount_percent=decision.discount_percent,
            sku=decision.sku,
            product_name=decision.product_name,
            valid_from=decision.valid_from,
            valid_until=decision.valid_until,
            issued_at=decision.at,
            template=decision.template,
            scope=decision.scope,
            category=decision.category,
            trigger=decision.trigger,
            campaign_id=decision.campaign_id,
            variant=decision.variant,
        )

    def _held_out(self, customer_id: str, decision: Decision) -> OfferHeldOut:
        return OfferHeldOut(
            offer_id=decision.offer_id,
            customer_id=customer_id,
            kind=decision.kind,
            period=campaign_period(decision.valid_from),
            sku=decision.sku,
            valid_from=decision.valid_from,
            valid_until=decision.valid_until,
            decided_at=decision.at,
            campaign_id=decision.campaign_id,
            variant=decision.variant,
            control="global" if decision.reason == "global_control" else "campaign",
        )

    def _revoke(
        self,
        stored: OfferRecord | None,
        new: Decision | None,
        at: dt.datetime,
        out: Recomputed,
    ) -> None:
        if stored is None or stored.state == "revoked":
            return
        if new is not None and new.outcome == "held_out":
            reason = "held_out"
        else:
            reason = (new.reason if new is not None else None) or "not_eligible"
        revocation = OfferRevoked(
            offer_id=stored.offer_id,
            customer_id=stored.customer_id,
            kind=stored.kind,
            coupon_code=stored.coupon_code,
            reason=reason,
            revoked_at=at,
        )
        out.offers[stored.offer_id] = stored.model_copy(
            update={"state": "revoked", "revocation": revocation}
        )
        out.events.append(revocation)
        out.stats["revoked"] += 1

    # ------------------------------------------------------------ redemptions and expiry

    def _redeem(
        self,
        ledger: Ledger,
        since: dt.datetime,
        live: Mapping[str, OfferRecord],
        offers: Mapping[str, OfferRecord],
        owners: Mapping[str, str],
        arrival: dt.datetime,
        cutoff: dt.datetime,
        out: Recomputed,
        refused: Collection[str] = (),
    ) -> dict[str, Redemption]:
        """Take the redemptions of the checkouts from `since` on again, in event-time order:
        a code redeems at the first checkout that may use it. Returns the redemption of each
        redeemed live offer."""
        before = dict(ledger.redemptions)
        result = {k: r for k, r in before.items() if r.at < since or r.decided_at < cutoff}
        redeemed_by = {
            r.offer_id: r for r in result.values() if r.outcome == "redeemed" and r.offer_id
        }
        by_code = {record.coupon_code: record for record in live.values()}
        gone = {r.coupon_code: r for r in offers.values() if r.offer_id not in live}
        mine = {ledger.customer_id, *ledger.aliases}
        for purchase in ledger.purchases_from(since):
            day = self.store_day(purchase.at, purchase.store_id)
            for code in dict.fromkeys(normalize_code(c) for c in purchase.coupons):
                key = f"{purchase.event_id}|{code}"
                if not code or key in result:
                    continue
                record = by_code.get(code)
                reason: str | None
                discount = Decimal(0)
                if record is None:
                    if code in gone and gone[code].customer_id in mine:
                        reason = "revoked"
                    else:
                        reason = "foreign_code" if code in owners else "unknown_code"
                elif record.issued.issued_at > purchase.at:
                    reason = "unknown_code"  # it did not exist when the checkout happened
                elif record.offer_id in redeemed_by:
                    reason = "already_redeemed"
                elif key in refused:
                    reason = "budget_spent"
                else:
                    fresh = record.model_copy(update={"state": "issued"})
                    reason, discount = check_code(
                        fresh,
                        customer_id=ledger.customer_id,
                        owners=mine,
                        day=day,
                        lines=purchase.lines,
                    )
                old = before.get(key)
                outcome = "redeemed" if reason is None else "rejected"
                same = old is not None and old.outcome == outcome and old.reason == reason
                result[key] = Redemption(
                    key=key,
                    purchase_event_id=purchase.event_id,
                    code=code,
                    at=purchase.at,
                    outcome=outcome,
                    reason=reason,
                    offer_id=record.offer_id if record is not None else None,
                    discount=discount,
                    decided_at=old.decided_at if same and old is not None else arrival,
                )
                if reason is None and record is not None:
                    redeemed_by[record.offer_id] = result[key]
        horizon = ledger.purchases[0].at if ledger.purchases else None
        ledger.redemptions = {
            k: r for k, r in sorted(result.items()) if horizon is None or r.at >= horizon
        }
        purchases = {p.event_id: p for p in ledger.purchases}
        for key, r in ledger.redemptions.items():
            old = before.get(key)
            if r.outcome != "rejected" or (old is not None and old.reason == r.reason):
                continue
            purchase = purchases[r.purchase_event_id]
            out.events.append(
                RedemptionRejected(
                    rejection_id=rejection_id_for(r.purchase_event_id, r.code),
                    customer_id=ledger.customer_id,
                    coupon_code=r.code,
                    reason=r.reason,
                    offer_id=None if r.reason in ("foreign_code", "unknown_code") else r.offer_id,
                    checkout_event_id=r.purchase_event_id,
                    store_id=purchase.store_id,
                    rejected_at=r.at,
                )
            )
            out.stats[f"rejected_{r.reason}"] += 1
        return {oid: r for oid, r in redeemed_by.items() if r.purchase_event_id in purchases}

    def _settle(
        self,
        ledger: Ledger,
        live: Mapping[str, OfferRecord],
        redeemed_by: Mapping[str, Redemption],
        offers: Mapping[str, OfferRecord],
        days: Days,
        out: Recomputed,
    ) -> None:
        """Each live offer's state: redeemed by its redemption, else expired on the first
        completed day after its last valid day, else issued."""
        purchases = {p.event_id: p for p in ledger.purchases}
        for offer_id, record in sorted(live.items()):
            if record.customer_id not in {ledger.customer_id, *ledger.aliases}:
                continue
            redemption = redeemed_by.get(offer_id)
            if redemption is not None:
                purchase = purchases[redemption.purchase_event_id]
                event = OfferRedeemed(
                    offer_id=offer_id,
                    customer_id=record.customer_id,
                    kind=record.kind,
                    coupon_code=record.coupon_code,
                    redeemed_at=purchase.at,
                    checkout_event_id=purchase.event_id,
                    store_id=purchase.store_id,
                    basket_total=purchase.total,
                    discount=redemption.discount,
                )
                settled = record.model_copy(
                    update={"state": "redeemed", "redemption": event, "expired_on": None}
                )
                if record.redemption != event:
                    out.events.append(event)
                    out.stats["redeemed"] += 1
            elif (
                record.state == "redeemed"
                and record.redemption is not None
                and (record.redemption.checkout_event_id in purchases)
            ):
                # Its checkout no longer redeems it (another, earlier one does, or it was
                # revoked): it is open again, and expires as any open offer.
                settled = record.model_copy(update={"state": "issued", "redemption": None})
            else:
                settled = record
            if (
                settled.state in ("issued", "expired")
                and settled.redemption is None
                and days.last is not None
                and days.first is not None
                and settled.valid_until < days.last
            ):
                expired_on = max(settled.valid_until + _DAY, days.first)
                settled = settled.model_copy(update={"state": "expired", "expired_on": expired_on})
                if record.state != "expired" or record.expired_on != expired_on:
                    out.events.append(settled.expired_event())
                    out.stats["expired"] += 1
            stored = offers.get(offer_id)
            if settled != stored or offer_id in out.offers:
                out.offers[offer_id] = settled


def _campaign_of(decision: Decision) -> str:
    """The campaign of a decision (decisions taken before campaigns: the built-in one of its
    kind)."""
    if decision.campaign_id is not None:
        return decision.campaign_id
    return next((cid for cid, kind in BUILTIN_KIND.items() if kind == decision.kind), "")


def _same_series(candidate: _Candidate, other: Decision) -> bool:
    """Offers a cooldown spaces apart: the same campaign, and for a purchase trigger the same
    SKU or category (the second part of the decision key)."""
    if _campaign_of(other) != candidate.campaign_id:
        return False
    return not candidate.series or other.key.split("|")[1] == candidate.series


def _pruned(decisions: dict[str, Decision]) -> dict[str, Decision]:
    """Old decisions go: issued ones after a year, suppressed ones after three months (of
    the newest decision's time)."""
    newest = max((d.at for d in decisions.values()), default=None)
    if newest is None:
        return decisions
    keep_issued = newest - dt.timedelta(days=KEEP_ISSUED_DAYS)
    keep_suppressed = newest - dt.timedelta(days=KEEP_SUPPRESSED_DAYS)
    return {
        key: d
        for key, d in sorted(decisions.items(), key=lambda kv: (kv[1].at, kv[0]))
        if d.at >= (keep_suppressed if d.outcome == "suppressed" else keep_issued)
    }


def codes_listed(ledger: Ledger, since: dt.datetime) -> set[str]:
    """The codes the customer's checkouts from `since` on list (to look their owners up)."""
    return {
        code
        for purchase in ledger.purchases_from(since)
        for code in (normalize_code(c) for c in purchase.coupons)
        if code
    }
