"""The offer rules, pure: which coupons a profile change or a calendar day earns, redemptions, expiry.

No I/O here. The service layer loads a `Snapshot` (the customers of a batch and their offers),
the engine folds the batch into it and returns the `Changes` to persist and the events to
publish. Everything is a function of the input and the snapshot (event times, never the wall
clock), so a batch processed twice gives the same ids, codes and events.
"""

from __future__ import annotations

import base64
import calendar
import datetime as dt
import hashlib
import hmac
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Literal
from zoneinfo import ZoneInfo

from services.offers.settings import OfferRules
from shared.events import (
    OfferExpired,
    OfferHeldOut,
    OfferIssued,
    OfferKind,
    OfferRedeemed,
    ProfileChanged,
    RedemptionRejected,
    RejectionReason,
)
from shared.marketing import campaign_period
from shared.settings import CalendarSettings

OfferState = Literal["issued", "redeemed", "expired"]

OFFER_NAMESPACE = uuid.UUID("5f0c6b1e-3a51-5d47-9f43-6d0c1f2e7a10")
"""Namespace of the deterministic offer and rejection ids (uuid5); never change it."""

_DAY = dt.timedelta(days=1)


# ---------------------------------------------------------------- ids and codes


def offer_id_for(kind: OfferKind, customer_id: str, rule_key: str, trigger: str) -> str:
    """Deterministic offer id: the same kind, customer, rule key and trigger give the same id."""
    return str(uuid.uuid5(OFFER_NAMESPACE, f"{kind}|{customer_id}|{rule_key}|{trigger}"))


def coupon_code_for(offer_id: str, key: bytes) -> str:
    """Three groups of four base32 characters (`K7QX-M2PA-9FHT`): HMAC-SHA-256 of the offer id;
    unguessable without the key."""
    digest = hmac.new(key, offer_id.encode(), hashlib.sha256).digest()
    text = base64.b32encode(digest).decode()[:12]
    return f"{text[:4]}-{text[4:8]}-{text[8:]}"


_NOT_CODE = re.compile(r"[^A-Z0-9]")
MAX_CODE_LENGTH = 64


def normalize_code(code: str) -> str:
    """A code as a till may type it (lower case, no dashes, spaces) in its canonical form."""
    compact = _NOT_CODE.sub("", code.upper())
    if len(compact) == 12:
        return f"{compact[:4]}-{compact[4:8]}-{compact[8:]}"
    return compact[:MAX_CODE_LENGTH]


def is_held_out(customer_id: str, kind: OfferKind, period: str, percent: Decimal) -> bool:
    """Whether a customer is in the hold-out group of a kind for a period.

    A uniform draw from SHA-256 of customer, kind and period: the same on every run and every
    replica, independent between periods (a customer is not held out of every campaign).
    """
    if percent <= 0:
        return False
    digest = hashlib.sha256(f"holdout|{kind}|{period}|{customer_id}".encode()).digest()
    draw = int.from_bytes(digest[:8], "big") % 1_000_000
    return Decimal(draw) < percent * 10_000


def one_year_after(day: dt.date) -> dt.date:
    """The same day a year later; 29 February becomes 28 February."""
    if day.month == 2 and day.day == 29:
        return dt.date(day.year + 1, 2, 28)
    return day.replace(year=day.year + 1)


def birthday_month_days(day: dt.date) -> tuple[str, ...]:
    """Birthdays (`MM-DD`) celebrated on `day`: 29 February counts as 28 February in other years."""
    month_day = f"{day.month:02d}-{day.day:02d}"
    if month_day == "02-28" and not calendar.isleap(day.year):
        return (month_day, "02-29")
    return (month_day,)


# ---------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class CustomerRecord:
    """What offers keeps of a customer (its read model), updated from every ProfileChanged."""

    customer_id: str
    marketing_consent: bool = False
    has_email: bool = False
    erased: bool = False
    birth_md: str | None = None
    """Birthday as `MM-DD` (the year is not kept)."""
    first_purchase_date: dt.date | None = None
    last_visit_date: dt.date | None = None
    visits: int = 0
    home_store_id: str | None = None

    @property
    def anniversary_date(self) -> dt.date | None:
        """The day one year after the first purchase."""
        if self.first_purchase_date is None:
            return None
        return one_year_after(self.first_purchase_date)

    @property
    def reachable(self) -> bool:
        return self.marketing_consent and self.has_email and not self.erased


@dataclass(frozen=True, slots=True)
class OfferRecord:
    """An offer and its lifecycle: issued, then redeemed or expired."""

    issued: OfferIssued
    rule_key: str
    """SKU, year, date or `once`: what the rule's repetition limit is about."""
    state: OfferState = "issued"
    redemption: OfferRedeemed | None = None
    expired_on: dt.date | None = None

    @property
    def offer_id(self) -> str:
        return self.issued.offer_id

    @property
    def customer_id(self) -> str:
        return self.issued.customer_id

    @property
    def kind(self) -> OfferKind:
        return self.issued.kind

    @property
    def coupon_code(self) -> str:
        return self.issued.coupon_code

    @property
    def valid_from(self) -> dt.date:
        return self.issued.valid_from

    @property
    def valid_until(self) -> dt.date:
        return self.issued.valid_until

    def expired_event(self) -> OfferExpired:
        if self.expired_on is None:
            raise ValueError(f"offer {self.offer_id} has not expired")
        return OfferExpired(
            offer_id=self.offer_id,
            customer_id=self.customer_id,
            kind=self.kind,
            coupon_code=self.coupon_code,
            valid_until=self.valid_until,
            expired_on=self.expired_on,
        )


CustomerQueryKind = Literal["birthday", "anniversary", "win_back"]


@dataclass(frozen=True, slots=True)
class CustomerQuery:
    """The customers a calendar rule looks at on a day, answered from an index of the read model.

    - birthday: `birth_md` in `month_days`;
    - anniversary: anniversary date (first purchase + 1 year) equal to `on_date`;
    - win_back: `last_visit_date <= on_date` and `visits >= min_visits`.
    Erased customers never match.
    """

    kind: CustomerQueryKind
    month_days: tuple[str, ...] = ()
    on_date: dt.date | None = None
    min_visits: int = 0


@dataclass(slots=True)
class Snapshot:
    """What the store knows of a batch's customers: their records and all their offers, plus the
    offers whose codes the batch lists."""

    customers: dict[str, CustomerRecord] = field(default_factory=dict)
    offers: dict[str, OfferRecord] = field(default_factory=dict)


@dataclass(slots=True)
class Changes:
    """What one batch persists, in one repository write."""

    customers: dict[str, CustomerRecord] = field(default_factory=dict)
    new_offers: dict[str, OfferRecord] = field(default_factory=dict)
    """Insert if absent (an offer id already stored is left as it is)."""
    redeemed: dict[str, OfferRecord] = field(default_factory=dict)
    """Stored offers now redeemed (only an issued or expired offer changes)."""
    expired: dict[str, OfferRecord] = field(default_factory=dict)
    """Stored offers now expired (only an issued offer changes)."""
    rejections: dict[str, RedemptionRejected] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(
            self.customers or self.new_offers or self.redeemed or self.expired or self.rejections
        )


OutEvent = OfferIssued | OfferRedeemed | RedemptionRejected | OfferExpired | OfferHeldOut


@dataclass(slots=True)
class Outcome:
    """The result of a batch: changes to persist, events to publish (in order), what happened."""

    changes: Changes = field(default_factory=Changes)
    events: list[OutEvent] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)


class _Book:
    """The batch's working view: the snapshot plus what the batch did so far."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.customers = dict(snapshot.customers)
        self.offers: dict[str, OfferRecord] = {}
        self.by_customer: dict[str, dict[str, OfferRecord]] = {}
        self.by_code: dict[str, OfferRecord] = {}
        for offer in snapshot.offers.values():
            self.put(offer)

    def put(self, offer: OfferRecord) -> None:
        self.offers[offer.offer_id] = offer
        self.by_customer.setdefault(offer.customer_id, {})[offer.offer_id] = offer
        self.by_code[offer.coupon_code] = offer

    def offers_of(self, customer_id: str) -> Iterable[OfferRecord]:
        return self.by_customer.get(customer_id, {}).values()


# ---------------------------------------------------------------- the engine


class OfferEngine:
    """Applies the offer rules to batches of profile changes and to calendar days."""

    def __init__(self, *, rules: OfferRules, coupon_key: bytes, calendar: CalendarSettings) -> None:
        self.rules = rules
        self._coupon_key = coupon_key
        self._calendar = calendar
        self._zone = ZoneInfo(calendar.timezone)

    # ------------------------------------------------------------ profile changes

    def customer_from(self, event: ProfileChanged) -> CustomerRecord:
        """The read-model record a profile change leaves; an erased customer keeps only the flag."""
        if event.erased or event.merged_into:
            # A merged customer lives on under the other id: it gets no offers of its own.
            return CustomerRecord(customer_id=event.customer_id, erased=True)
        zone = self._calendar.zone_of(event.home_store_id)
        birth = event.birth_date
        return CustomerRecord(
            customer_id=event.customer_id,
            marketing_consent=event.marketing_consent,
            has_email=event.has_email,
            birth_md=f"{birth.month:02d}-{birth.day:02d}" if birth else None,
            first_purchase_date=(
                event.first_purchase_at.astimezone(zone).date() if event.first_purchase_at else None
            ),
            last_visit_date=(
                event.last_purchase_at.astimezone(zone).date() if event.last_purchase_at else None
            ),
            visits=event.visits,
            home_store_id=event.home_store_id,
        )

    def on_profiles(self, events: Sequence[ProfileChanged], snapshot: Snapshot) -> Outcome:
        """Fold a batch of profile changes, in order: read model, redemptions, frequent items."""
        book = _Book(snapshot)
        out = Outcome()
        for event in events:
            customer = self.customer_from(event)
            book.customers[customer.customer_id] = customer
            out.changes.customers[customer.customer_id] = customer
            self._redeem(book, out, event)
            self._frequent_items(book, out, event, customer)
            out.stats["profiles_applied"] += 1
        return out

    def _purchase_day(self, event: ProfileChanged, store_id: str) -> dt.date:
        return event.occurred_at.astimezone(self._calendar.zone_of(store_id)).date()

    def _redeem(self, book: _Book, out: Outcome, event: ProfileChanged) -> None:
        purchase = event.purchase
        if purchase is None or not purchase.coupons:
            return
        day = self._purchase_day(event, purchase.store_id)
        for code in dict.fromkeys(normalize_code(c) for c in purchase.coupons):
            if not code:
                continue
            offer = book.by_code.get(code)
            reason: RejectionReason | None = None
            if offer is None:
                reason = "unknown_code"
            elif offer.customer_id != event.customer_id:
                reason = "foreign_code"
            elif offer.state == "redeemed":
                redemption = offer.redemption
                if redemption is not None and redemption.checkout_event_id == purchase.event_id:
                    out.events.append(redemption)  # the same checkout again: republish
                    out.stats["republished"] += 1
                    continue
                reason = "already_redeemed"
            elif day > offer.valid_until:
                reason = "expired"
            if offer is None or reason is not None:
                reason = reason or "unknown_code"
                rejection = RedemptionRejected(
                    rejection_id=str(uuid.uuid5(OFFER_NAMESPACE, f"{purchase.event_id}|{code}")),
                    customer_id=event.customer_id,
                    coupon_code=code,
                    reason=reason,
                    offer_id=None if reason == "foreign_code" or offer is None else offer.offer_id,
                    checkout_event_id=purchase.event_id,
                    store_id=purchase.store_id,
                    rejected_at=event.occurred_at,
                )
                out.changes.rejections[rejection.rejection_id] = rejection
                out.events.append(rejection)
                out.stats[f"rejected_{reason}"] += 1
                continue
            redemption = OfferRedeemed(
                offer_id=offer.offer_id,
                customer_id=offer.customer_id,
                kind=offer.kind,
                coupon_code=offer.coupon_code,
                redeemed_at=event.occurred_at,
                checkout_event_id=purchase.event_id,
                store_id=purchase.store_id,
                basket_total=purchase.total,
            )
            redeemed = replace(offer, state="redeemed", redemption=redemption)
            book.put(redeemed)
            if offer.offer_id in out.changes.new_offers:
                out.changes.new_offers[offer.offer_id] = redeemed
            else:
                out.changes.redeemed[offer.offer_id] = redeemed
            out.events.append(redemption)
            out.stats["redeemed"] += 1

    def _frequent_items(
        self, book: _Book, out: Outcome, event: ProfileChanged, customer: CustomerRecord
    ) -> None:
        rule = self.rules.frequent_item
        purchase = event.purchase
        if not rule.enabled or purchase is None or not event.sku_checkouts:
            return
        zone = self._calendar.zone_of(purchase.store_id)
        day = event.occurred_at.astimezone(zone).date()
        earliest = day - rule.window_days * _DAY
        for sku in sorted(event.sku_checkouts):
            checkouts = {
                moment
                for moment in event.sku_checkouts[sku]
                if moment <= event.occurred_at and moment.astimezone(zone).date() >= earliest
            }
            if len(checkouts) < rule.min_checkouts:
                continue
            candidate = self._new_offer(
                kind="frequent_item",
                customer_id=customer.customer_id,
                rule_key=sku,
                trigger=purchase.event_id,
                day=day,
                issued_at=event.occurred_at,
                discount_percent=rule.discount_percent,
                validity_days=rule.validity_days,
                template=rule.template,
                sku=sku,
                product_name=purchase.products.get(sku),
            )
            self._consider(book, out, customer, candidate)

    # ------------------------------------------------------------ calendar days

    def day_queries(self, day: dt.date) -> list[CustomerQuery]:
        """The read-model queries of a day, one per enabled calendar rule, in issue order."""
        queries: list[CustomerQuery] = []
        if self.rules.birthday.enabled:
            queries.append(CustomerQuery("birthday", month_days=birthday_month_days(day)))
        if self.rules.anniversary.enabled:
            queries.append(CustomerQuery("anniversary", on_date=day))
        win_back = self.rules.win_back
        if win_back.enabled:
            queries.append(
                CustomerQuery(
                    "win_back",
                    on_date=day - (win_back.inactive_days + 1) * _DAY,
                    min_visits=win_back.min_visits,
                )
            )
        return queries

    def on_day(self, day: dt.date, query: CustomerQuery, snapshot: Snapshot) -> Outcome:
        """Issue the offers of one calendar rule to a page of the customers its query found."""
        book = _Book(snapshot)
        out = Outcome()
        issued_at = dt.datetime.combine(day, dt.time(0), tzinfo=self._zone).astimezone(dt.UTC)
        for customer_id in sorted(snapshot.customers):
            customer = snapshot.customers[customer_id]
            if not matches(query, customer):
                continue
            candidate: OfferRecord
            if query.kind == "birthday":
                birthday = self.rules.birthday
                candidate = self._new_offer(
                    kind="birthday",
                    customer_id=customer_id,
                    rule_key=str(day.year),
                    trigger=str(day.year),
                    day=day,
                    issued_at=issued_at,
                    discount_percent=birthday.discount_percent,
                    validity_days=birthday.validity_days,
                    template=birthday.template,
                )
            elif query.kind == "anniversary":
                anniversary = self.rules.anniversary
                candidate = self._new_offer(
                    kind="anniversary",
                    customer_id=customer_id,
                    rule_key="once",
                    trigger="once",
                    day=day,
                    issued_at=issued_at,
                    discount_percent=anniversary.discount_percent,
                    validity_days=anniversary.validity_days,
                    template=anniversary.template,
                )
            else:
                win_back = self.rules.win_back
                candidate = self._new_offer(
                    kind="win_back",
                    customer_id=customer_id,
                    rule_key=day.isoformat(),
                    trigger=day.isoformat(),
                    day=day,
                    issued_at=issued_at,
                    discount_percent=win_back.discount_percent,
                    validity_days=win_back.validity_days,
                    template=win_back.template,
                )
            self._consider(book, out, customer, candidate)
        return out

    def expire(self, day: dt.date, offers: Iterable[OfferRecord]) -> Outcome:
        """Issued offers whose last day is before `day` expire; those expired on `day` republish."""
        out = Outcome()
        for offer in offers:
            if offer.state == "issued" and offer.valid_until < day:
                expired = replace(offer, state="expired", expired_on=day)
                out.changes.expired[offer.offer_id] = expired
                out.events.append(expired.expired_event())
                out.stats["expired"] += 1
            elif offer.state == "expired" and offer.expired_on == day:
                out.events.append(offer.expired_event())
                out.stats["republished"] += 1
        return out

    # ------------------------------------------------------------ issuing

    def _new_offer(
        self,
        *,
        kind: OfferKind,
        customer_id: str,
        rule_key: str,
        trigger: str,
        day: dt.date,
        issued_at: dt.datetime,
        discount_percent: Decimal,
        validity_days: int,
        template: str,
        sku: str | None = None,
        product_name: str | None = None,
    ) -> OfferRecord:
        offer_id = offer_id_for(kind, customer_id, rule_key, trigger)
        issued = OfferIssued(
            offer_id=offer_id,
            customer_id=customer_id,
            kind=kind,
            coupon_code=coupon_code_for(offer_id, self._coupon_key),
            discount_percent=discount_percent,
            sku=sku,
            product_name=product_name,
            valid_from=day,
            valid_until=day + validity_days * _DAY,
            issued_at=issued_at,
            template=template,
        )
        return OfferRecord(issued=issued, rule_key=rule_key)

    def _consider(
        self, book: _Book, out: Outcome, customer: CustomerRecord, candidate: OfferRecord
    ) -> None:
        """Issue a candidate unless suppressed; one already issued is republished as it was."""
        existing = book.offers.get(candidate.offer_id)
        if existing is not None:
            out.events.append(existing.issued)
            out.stats["republished"] += 1
            return
        reason = self._suppression(book, customer, candidate)
        if reason is not None:
            out.stats[f"suppressed_{reason}"] += 1
            return
        period = campaign_period(candidate.valid_from)
        if is_held_out(customer.customer_id, candidate.kind, period, self.rules.holdout.percent):
            # Eligible but in the control group: no offer, no e-mail, only the decision.
            issued = candidate.issued
            out.events.append(
                OfferHeldOut(
                    offer_id=issued.offer_id,
                    customer_id=issued.customer_id,
                    kind=issued.kind,
                    period=period,
                    sku=issued.sku,
                    valid_from=issued.valid_from,
                    valid_until=issued.valid_until,
                    decided_at=issued.issued_at,
                )
            )
            out.stats[f"held_out_{candidate.kind}"] += 1
            return
        book.put(candidate)
        out.changes.new_offers[candidate.offer_id] = candidate
        out.events.append(candidate.issued)
        out.stats[f"issued_{candidate.kind}"] += 1

    def _suppression(
        self, book: _Book, customer: CustomerRecord, candidate: OfferRecord
    ) -> str | None:
        if customer.erased:
            return "erased"
        if not customer.marketing_consent:
            return "consent"
        if not customer.has_email:
            return "no_email"
        day = candidate.valid_from
        others = list(book.offers_of(customer.customer_id))
        cooldown = self._cooldown_days(candidate.kind)
        if cooldown and any(
            _same_series(candidate, other) and abs((day - other.valid_from).days) < cooldown
            for other in others
        ):
            return "cooldown"
        cap = self.rules.frequency_cap
        if cap.enabled and candidate.kind not in cap.exempt_kinds:
            counted = [other.valid_from for other in others if other.kind not in cap.exempt_kinds]
            if would_exceed_cap(day, counted, max_offers=cap.max_offers, window=cap.window_days):
                return "cap"
        return None

    def _cooldown_days(self, kind: OfferKind) -> int:
        if kind == "frequent_item":
            return self.rules.frequent_item.cooldown_days
        if kind == "win_back":
            return self.rules.win_back.cooldown_days
        # birthday and anniversary repeat by id (once a year, once ever)
        return 0


def _same_series(candidate: OfferRecord, other: OfferRecord) -> bool:
    """Offers a cooldown spaces apart: same kind, and for frequent items the same SKU."""
    if other.kind != candidate.kind:
        return False
    return candidate.kind != "frequent_item" or other.rule_key == candidate.rule_key


def matches(query: CustomerQuery, customer: CustomerRecord) -> bool:
    """Whether a customer answers a calendar query (the store's index does the same)."""
    if customer.erased:
        return False
    if query.kind == "birthday":
        return customer.birth_md in query.month_days
    if query.kind == "anniversary":
        return query.on_date is not None and customer.anniversary_date == query.on_date
    return (
        query.on_date is not None
        and customer.last_visit_date is not None
        and customer.last_visit_date <= query.on_date
        and customer.visits >= query.min_visits
    )


def would_exceed_cap(
    day: dt.date, issued_days: Iterable[dt.date], *, max_offers: int, window: int
) -> bool:
    """Whether one more offer on `day` would put more than `max_offers` in some `window`-day span.

    Every span containing `day` is checked, so the answer does not depend on the order in which
    offers were issued (a replay of older events sees later offers too).
    """
    days = [d for d in issued_days if abs((d - day).days) < window]
    for start in range(window):
        first = day - start * _DAY
        last = first + (window - 1) * _DAY
        if sum(1 for d in days if first <= d <= last) >= max_offers:
            return True
    return False
