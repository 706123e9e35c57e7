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
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal
from zoneinfo import ZoneInfo

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
from services.offers.ledger import Decision, Ledger, PurchaseFact, Redemption
from services.offers.settings import OfferRules
from shared.events import (
    OfferExpired,
    OfferHeldOut,
    OfferIssued,
    OfferKind,
    OfferRedeemed,
    OfferRevoked,
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
    sku: str | None = None
    product_name: str | None = None
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
    ) -> None:
        self.rules = rules
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

    def win_back_due(self, ledger: Ledger, days: Days) -> dt.date | None:
        """The first day not yet completed on which the customer may be due a win-back: away
        long enough as of its start (with enough visits before), and past the cooldown of the
        last one; None when no such day can come. A visit after that day (arrived before
        its tick) does not hide it: the days between two visits far enough apart count."""
        rule = self.rules.win_back
        if not rule.enabled or ledger.is_alias() or not ledger.visits:
            return None
        after = days.last + _DAY if days.last is not None else None
        cooldown_end = max(
            (
                d.valid_from + rule.cooldown_days * _DAY
                for d in ledger.decisions.values()
                if d.kind == "win_back" and d.outcome == "issued"
            ),
            default=None,
        )
        visits = [self.day_of(v.at) for v in ledger.visits]
        older = max(0, ledger.total_visits - len(visits))  # counted, but not kept here
        gap = (rule.inactive_days + 1) * _DAY
        for index, day in enumerate(visits):
            if older + index + 1 < rule.min_visits:
                continue  # not a regular customer yet after this visit
            first = day + gap  # away long enough from the start of this day on
            last = visits[index + 1] if index + 1 < len(visits) else None  # a visit ends it
            start = max(d for d in (first, after, cooldown_end) if d is not None)
            if last is None or start <= last:
                return start
        return None

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
    ) -> Recomputed:
        """Take the customer's decisions again from `since` on; update `ledger` and return the
        changed offers and the events that say so.

        `offers`: the stored offers of the customer and of its aliases; `owners`: code ->
        customer for the codes its checkouts list that are not its own (a foreign code).
        """
        out = Recomputed()
        if ledger.baskets_since is not None:
            # Before this the baskets are gone: those decisions cannot be taken again.
            horizon = ledger.baskets_since + self.rules.frequent_item.window_days * _DAY
            since = max(since, horizon)
        cutoff = arrival - self.lateness
        before = dict(ledger.decisions)
        decisions = {k: d for k, d in before.items() if d.at < since or d.decided_at < cutoff}
        if not ledger.is_alias():  # an alias's facts feed another customer now
            for candidate in self._candidates(ledger, since, days):
                self._decide(ledger, candidate, decisions, before, arrival)
        ledger.decisions = _pruned(decisions)

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
        redeemed_by = self._redeem(ledger, since, live, offers, owners, arrival, cutoff, out)
        self._settle(ledger, live, redeemed_by, offers, days, out)
        return out

    # ------------------------------------------------------------ candidates

    def _candidates(self, ledger: Ledger, since: dt.datetime, days: Days) -> list[_Candidate]:
        """Every rule's triggers from `since` on, in event-time order (a day's calendar rules
        at its start, before that day's checkouts)."""
        triggers: list[tuple[tuple[dt.datetime, int, str], list[_Candidate]]] = []
        for day in days.since(self.day_of(since) - _DAY):
            start = self.day_start(day)
            if start >= since:
                triggers.append(((start, 0, day.isoformat()), self._calendar_rules(ledger, day)))
        for purchase in ledger.purchases_from(since):
            key = (purchase.at, 1, purchase.event_id)
            triggers.append((key, self._frequent_items(ledger, purchase)))
        triggers.sort(key=lambda item: item[0])
        return [candidate for _, found in triggers for candidate in found]

    def _frequent_items(self, ledger: Ledger, purchase: PurchaseFact) -> list[_Candidate]:
        rule = self.rules.frequent_item
        if not rule.enabled:
            return []
        zone = self._calendar.zone_of(purchase.store_id)
        day = purchase.at.astimezone(zone).date()
        earliest = day - rule.window_days * _DAY
        window = [
            p
            for p in ledger.purchases
            if p.key <= purchase.key and p.at.astimezone(zone).date() >= earliest
        ]
        found = []
        for sku in sorted(purchase.skus):
            with_sku = [p for p in window if sku in p.skus]
            if len(with_sku) < rule.min_checkouts:
                continue
            found.append(
                _Candidate(
                    key=f"frequent_item|{sku}|{purchase.event_id}",
                    kind="frequent_item",
                    at=purchase.at,
                    rule_key=sku,
                    trigger_id=purchase.event_id,
                    trigger=OfferTrigger(
                        type="purchase", event_ids=tuple(p.event_id for p in with_sku)
                    ),
                    valid_from=day,
                    validity_days=rule.validity_days,
                    discount_percent=rule.discount_percent,
                    template=rule.template,
                    sku=sku,
                    product_name=purchase.products.get(sku),
                )
            )
        return found

    def _calendar_rules(self, ledger: Ledger, day: dt.date) -> list[_Candidate]:
        """Birthday, anniversary and win-back of `day`, on the state as of its start."""
        start = self.day_start(day)
        clock = OfferTrigger(type="clock", day=day)
        found: list[_Candidate] = []
        birthday = self.rules.birthday
        born = ledger.birth_date_at(start)
        if (
            birthday.enabled
            and born is not None
            and f"{born.month:02d}-{born.day:02d}" in birthday_month_days(day)
        ):
            found.append(
                _Candidate(
                    key=f"birthday|{day.year}",
                    kind="birthday",
                    at=start,
                    rule_key=str(day.year),
                    trigger_id=str(day.year),
                    trigger=clock,
                    valid_from=day,
                    validity_days=birthday.validity_days,
                    discount_percent=birthday.discount_percent,
                    template=birthday.template,
                )
            )
        anniversary = self.rules.anniversary
        first = ledger.first_purchase_before(start)
        if anniversary.enabled and first is not None and one_year_after(self.day_of(first)) == day:
            found.append(
                _Candidate(
                    key="anniversary|once",
                    kind="anniversary",
                    at=start,
                    rule_key="once",
                    trigger_id="once",
                    trigger=clock,
                    valid_from=day,
                    validity_days=anniversary.validity_days,
                    discount_percent=anniversary.discount_percent,
                    template=anniversary.template,
                )
            )
        win_back = self.rules.win_back
        last = ledger.last_visit_before(start)
        lapsed = day - (win_back.inactive_days + 1) * _DAY
        if (
            win_back.enabled
            and last is not None
            and self.day_of(last) <= lapsed
            and ledger.visits_before(start) >= win_back.min_visits
        ):
            found.append(
                _Candidate(
                    key=f"win_back|{day.isoformat()}",
                    kind="win_back",
                    at=start,
                    rule_key=day.isoformat(),
                    trigger_id=day.isoformat(),
                    trigger=clock,
                    valid_from=day,
                    validity_days=win_back.validity_days,
                    discount_percent=win_back.discount_percent,
                    template=win_back.template,
                    # Someone away for months is a candidate every day: only the day they
                    # became one keeps a suppression (why they got nothing), not every day.
                    keep_suppression=self.day_of(last) == lapsed,
                )
            )
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
        reason = self._suppression(ledger, candidate, decisions)
        outcome: Outcome
        if reason is not None:
            if not candidate.keep_suppression:
                return
            outcome = "suppressed"
        else:
            period = campaign_period(candidate.valid_from)
            held = is_held_out(
                ledger.customer_id, candidate.kind, period, self.rules.holdout.percent
            )
            outcome = "held_out" if held else "issued"
        old = before.get(candidate.key)
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
            scope="sku" if candidate.sku is not None else "basket",
            sku=candidate.sku,
            product_name=candidate.product_name,
        )

    def _suppression(
        self, ledger: Ledger, candidate: _Candidate, decisions: Mapping[str, Decision]
    ) -> str | None:
        """Why the candidate gets no offer, on the state as of its time; None if it does.
        Only the offers decided before it (event time, then key) count for cooldown and cap."""
        at = candidate.at
        if ledger.erased_at(at):
            return "erased"
        if not ledger.consent_at(at):
            return "consent"
        if not ledger.email_at(at):
            return "no_email"
        earlier = [
            d
            for d in decisions.values()
            if d.outcome == "issued" and (d.at, d.key) < (at, candidate.key)
        ]
        cooldown = self._cooldown_days(candidate.kind)
        if cooldown and any(
            _same_series(candidate, d) and (candidate.valid_from - d.valid_from).days < cooldown
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

    def _cooldown_days(self, kind: OfferKind) -> int:
        if kind == "frequent_item":
            return self.rules.frequent_item.cooldown_days
        if kind == "win_back":
            return self.rules.win_back.cooldown_days
        return 0  # birthday and anniversary repeat by key (once a year, once ever)

    # ------------------------------------------------------------ events of decisions

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


def _same_series(candidate: _Candidate, other: Decision) -> bool:
    """Offers a cooldown spaces apart: same kind, and for frequent items the same SKU."""
    if other.kind != candidate.kind:
        return False
    return candidate.kind != "frequent_item" or other.sku == candidate.sku


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
