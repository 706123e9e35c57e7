"""The customer profile and how normalized events fold into it: pure code, no I/O.

One `CustomerProfile` document per customer. A document is one of three things:
- a live profile (the usual case);
- a tombstone (`erased=True`): no personal data and no history, only what is needed to
  ignore later events (`erased_at`, `recent_event_ids`);
- an alias (`merged_into` set): this customer's card was linked into another profile, and
  every later event addressed to this customer is applied to the target.

`ProfileBook` holds the documents of one batch in memory and applies its events; the service
loads the documents before and saves `book.changed()` after, in one call each.

**A profile is a function of the set of events, not of their arrival.** Events reach
profiles late, out of order, across partitions (a card's checkouts go to the card's own
customer until ingest learns of a link) and in arbitrary batches; the same events must give
the same profile, so that offers, which decides from what profiles publishes, decides the
same. Every part of the fold is therefore order-independent:

- stated values (marketing consent, e-mail, first name, birth date, chosen store, sign-up
  store) are each the value of the latest event stating it, by event time then event id: the
  profile keeps that event's `Stamp` per field (`stamps`), so an older statement arriving
  late changes nothing, and a merge keeps, per field, the newer statement of the two;
- sums, counts, first/last times and sets (cards, coupon codes, merged customers, kept
  sorted) commute; `registered_at` is the earliest sign-up;
- bounded lists (latest purchases, latest interactions, the history window) are ordered by
  (time, event id) and cut by that key, so the same entries survive whatever the order;
- the home store is derived: the chosen store, else the store of most visits (a tie goes to
  the smallest store id), else the sign-up store;
- a SKU's name and category are those of its latest checkout by (time, event id);
- a card link merges the other customer's profile whenever it comes: before or after that
  customer's events, the union is the same; so does a card's sign-up that matches a lead (a
  sign-up without a card, `l-…`) by its e-mail address (`merged_customer_id`, decided by
  ingest): the lead's profile merges in and its id becomes an alias.

Two fields are bookkeeping and legitimately depend on arrival: `recent_event_ids` (the
de-duplication window, in the order events were applied) and `version` (the write guard).
`CustomerProfile.content()` is the document without them: what tests compare.

**Erasure is the one exception, on purpose.** Privacy wins over order-independence: an
erasure wipes whatever the profile holds when it is applied, and later events (other than a
new sign-up newer than the erasure) build nothing. So a sign-up newer than an erasure that
arrives *before* it is wiped by it, whereas in event-time order it would have started a new
profile. Keeping it would mean keeping personal data past an erasure in case a newer sign-up
turns out to precede it; we do not keep personal data on a maybe.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, computed_field

from shared.basket import basket_lines
from shared.events import (
    CardLinked,
    ConsentChanged,
    ContactChanged,
    CustomerErased,
    CustomerSignedUp,
    CustomerUpdated,
    InteractionRecorded,
    NormalizedEvent,
    OfferEvent,
    OfferExpired,
    OfferIssued,
    OfferKind,
    OfferRedeemed,
    OfferRevoked,
    ProfileChanged,
    PurchaseRecorded,
    PurchaseSummary,
)
from shared.marketing import DEFAULT_RFM, RfmThresholds, Segment, rfm_segment

UNCATEGORIZED = "uncategorized"
"""Category bucket of lines sent without a category."""

_CENT = Decimal("0.01")
_ZERO = Decimal(0)


# ---------------------------------------------------------------- the document


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore")


@dataclass(frozen=True, slots=True, order=True)
class Stamp:
    """When a value was stated: the stating event's time, then its id. Ordered by both, so
    that of two statements of the same instant the same one wins in any arrival order."""

    at: Annotated[AwareDatetime, Field(description="Time of the event that stated the value.")]
    event_id: Annotated[str, Field(description="Id of that event.")]


StampedField = Literal[
    "marketing_consent",
    "email",
    "first_name",
    "birth_date",
    "preferred_store_id",
    "signup_store_id",
]
"""The profile's stated fields: each is the value of the latest event stating it."""
STAMPED_FIELDS: tuple[StampedField, ...] = get_args(StampedField)


# The parts below are many per profile and change on every checkout: plain slotted
# dataclasses are several times cheaper to build and update than models; pydantic still
# validates and serializes them as part of `CustomerProfile`.


@dataclass(slots=True)
class SkuStats:
    """What a customer bought of one SKU."""

    name: Annotated[str | None, Field(description="Name at the latest checkout.")] = None
    category: Annotated[str | None, Field(description="Category at the latest checkout.")] = None
    quantity: Annotated[Decimal, Field(description="Units (or weight) bought.")] = _ZERO
    spend: Annotated[Decimal, Field(description="Money spent on it.")] = _ZERO
    checkouts: Annotated[int, Field(description="Distinct checkouts containing it.")] = 0
    last_bought_at: Annotated[AwareDatetime | None, Field(description="Latest checkout.")] = None
    last_event_id: Annotated[
        str | None,
        Field(description="Event id of the latest checkout: orders checkouts of the same time."),
    ] = None


@dataclass(slots=True)
class CategoryStats:
    """What a customer bought in one category."""

    quantity: Annotated[Decimal, Field(description="Units (or weight) bought.")] = _ZERO
    spend: Annotated[Decimal, Field(description="Money spent in it.")] = _ZERO
    checkouts: Annotated[int, Field(description="Distinct checkouts with a line in it.")] = 0


@dataclass(slots=True)
class SentimentCounts:
    """A customer's opinions of one brand or category (interactions that carry a sentiment)."""

    positive: Annotated[int, Field(description="Positive opinions (likes...).")] = 0
    neutral: Annotated[int, Field(description="Neutral opinions.")] = 0
    negative: Annotated[int, Field(description="Negative opinions (dislikes, complaints...).")] = 0


def _count_opinion(
    table: dict[str, SentimentCounts], label: str | None, sentiment: str | None
) -> None:
    if label is None or sentiment is None:
        return
    counts = table.setdefault(label, SentimentCounts())
    setattr(counts, sentiment, getattr(counts, sentiment) + 1)


def _add_opinions(mine: dict[str, SentimentCounts], theirs: dict[str, SentimentCounts]) -> None:
    for label, other in theirs.items():
        counts = mine.setdefault(label, SentimentCounts())
        counts.positive += other.positive
        counts.neutral += other.neutral
        counts.negative += other.negative


@dataclass(slots=True)
class RecentPurchase:
    """One of the latest checkouts, for the call-centre view."""

    event_id: Annotated[str, Field(description="The checkout's event id.")]
    at: Annotated[AwareDatetime, Field(description="When it happened.")]
    store_id: Annotated[str, Field(description="Store of the checkout.")]
    total: Annotated[Decimal, Field(description="Basket total.")]
    lines: Annotated[int, Field(description="Number of basket lines.")]
    skus: Annotated[list[str], Field(description="Distinct SKUs of the basket.")]


@dataclass(slots=True)
class HistoryEntry:
    """A checkout within the history window (used by the frequent-item rule)."""

    at: Annotated[AwareDatetime, Field(description="When it happened.")]
    event_id: Annotated[str, Field(description="The checkout's event id.")]
    skus: Annotated[list[str], Field(description="Distinct SKUs of the basket.")]


@dataclass(slots=True)
class InteractionEntry:
    """One of the latest interactions."""

    event_id: Annotated[str, Field(description="The interaction's event id.")]
    type: Annotated[str, Field(description="Interaction type.")]
    channel: Annotated[str | None, Field(description="Channel.")]
    at: Annotated[AwareDatetime, Field(description="When it happened.")]
    details: Annotated[
        dict[str, str | int | float | bool | None], Field(description="Details as sent.")
    ] = field(default_factory=dict)


@dataclass(slots=True)
class ConsentRecord:
    """One statement of marketing consent: what a data-protection audit asks to be shown."""

    event_id: Annotated[str, Field(description="The statement's event id.")]
    at: Annotated[AwareDatetime, Field(description="When it was stated.")]
    given: Annotated[bool, Field(description="Consent given (true) or withdrawn/refused.")]
    source: Annotated[
        str | None, Field(description="Where: till, desk, web, unsubscribe_link, admin...")
    ] = None
    channel: Annotated[str | None, Field(description="The channel it is for (email...).")] = None
    text_version: Annotated[
        str | None, Field(description="Version of the consent wording shown.")
    ] = None


CONSENT_HISTORY = 100
"""Consent statements kept per profile (the latest, by time then event id)."""


class Favourite(_Part):
    """A product or category ranked by checkouts, then spend."""

    key: str = Field(description="SKU or category.")
    checkouts: int = Field(description="Distinct checkouts.")
    spend: Decimal = Field(description="Money spent.")


BOOKKEEPING: frozenset[str] = frozenset({"recent_event_ids", "version"})
"""Fields of the document that depend on the arrival of events, not only on which events."""


class CustomerProfile(_Part):
    """Everything crm-stream knows of one customer, as stored (Decimal as string in JSON)."""

    customer_id: str = Field(description="Pseudonymous customer id.")
    card_ids: list[str] = Field(
        default_factory=list, description="Keyed hashes of its cards, sorted."
    )
    registered: bool = Field(default=False, description="Whether the customer signed up.")
    registered_at: AwareDatetime | None = Field(
        default=None, description="Time of the earliest sign-up."
    )
    email: str | None = Field(default=None, description="E-mail address.")
    first_name: str | None = Field(default=None, description="First name.")
    birth_date: dt.date | None = Field(default=None, description="Date of birth.")
    marketing_consent: bool = Field(default=False, description="Opt-in to marketing.")
    preferred_store_id: str | None = Field(
        default=None, description="Home store the customer chose (wins over the visits)."
    )
    signup_store_id: str | None = Field(
        default=None, description="Store of the latest sign-up that named one."
    )
    stamps: dict[StampedField, Stamp] = Field(
        default_factory=dict,
        description="Per stated field, the event that stated its current value: a statement "
        "older than it changes nothing, whenever it arrives.",
    )
    home_store_id: str | None = Field(
        default=None,
        description="Chosen store, else store of most visits (the smallest id on a tie), "
        "else sign-up store.",
    )
    first_purchase_at: AwareDatetime | None = Field(default=None, description="First checkout.")
    last_purchase_at: AwareDatetime | None = Field(default=None, description="Latest checkout.")
    visits: int = Field(default=0, description="Distinct checkouts.")
    total_spend: Decimal = Field(default=_ZERO, description="Sum of the checkouts' totals.")
    skus: dict[str, SkuStats] = Field(default_factory=dict, description="Per SKU bought.")
    categories: dict[str, CategoryStats] = Field(
        default_factory=dict, description="Per category bought."
    )
    stores: dict[str, int] = Field(default_factory=dict, description="Visits per store.")
    recent_purchases: list[RecentPurchase] = Field(
        default_factory=list, description="Latest checkouts, oldest first (time, then event id)."
    )
    sku_history: list[HistoryEntry] = Field(
        default_factory=list,
        description="Checkouts within the history window of the newest one, oldest first.",
    )
    interactions: dict[str, int] = Field(default_factory=dict, description="Count per type.")
    latest_interactions: list[InteractionEntry] = Field(
        default_factory=list, description="Latest interactions, oldest first (time, then id)."
    )
    sentiment_by_brand: dict[str, SentimentCounts] = Field(
        default_factory=dict,
        description="Per brand, the interactions with a sentiment about it (counts commute).",
    )
    sentiment_by_category: dict[str, SentimentCounts] = Field(
        default_factory=dict,
        description="Per category, the interactions with a sentiment about it.",
    )
    coupons_redeemed: list[str] = Field(
        default_factory=list, description="Coupon codes listed at checkouts, sorted."
    )
    consent_history: list[ConsentRecord] = Field(
        default_factory=list,
        description="Marketing consent statements (sign-ups, updates, consent changes), oldest "
        "first (time, then event id): when, given or not, source, channel, wording version.",
    )
    recent_event_ids: list[str] = Field(
        default_factory=list,
        description="Latest applied event ids, in the order applied: the idempotency guard.",
    )
    erased: bool = Field(default=False, description="Whether this is an erasure tombstone.")
    erased_at: AwareDatetime | None = Field(
        default=None, description="Time of the latest erasure (kept after a new sign-up)."
    )
    merged_into: str | None = Field(default=None, description="Alias: the profile it feeds.")
    merged_from: list[str] = Field(
        default_factory=list, description="Customers merged into this profile (aliases), sorted."
    )
    bounced_at: AwareDatetime | None = Field(
        default=None,
        description="When the latest e-mail to the customer bounced (the notifier's outcomes "
        "on crm.deliveries); it applies to the address stated before it.",
    )
    version: int = Field(default=0, description="Incremented per write.")

    @computed_field(description="total_spend / visits, to the cent.")  # type: ignore[prop-decorator]
    @property
    def average_spend(self) -> Decimal:
        if self.visits == 0:
            return _ZERO
        return (self.total_spend / self.visits).quantize(_CENT)

    @property
    def is_alias(self) -> bool:
        return self.merged_into is not None

    @property
    def frequency(self) -> int:
        return self.visits

    @property
    def monetary(self) -> Decimal:
        return self.total_spend

    def content(self) -> dict[str, Any]:
        """What the profile says of the customer: the JSON document without its bookkeeping
        (`BOOKKEEPING`: `recent_event_ids`, the de-duplication window, in arrival order, and
        `version`, the write guard). The same set of events gives the same content in any
        arrival order and batches (erasure aside, see the module docstring); tests compare
        profiles with it. Mappings compare equal whatever their key order."""
        return self.model_dump(mode="json", exclude=set(BOOKKEEPING))

    def recency_days(self, today: dt.date) -> int | None:
        """Days from the last purchase (UTC date) to `today`; None without purchases."""
        if self.last_purchase_at is None:
            return None
        return (today - self.last_purchase_at.date()).days

    def segment(self, today: dt.date, thresholds: RfmThresholds = DEFAULT_RFM) -> Segment:
        """RFM segment with fixed thresholds (`shared.marketing.RfmThresholds`)."""
        return rfm_segment(
            today=today,
            first_purchase=self.first_purchase_at.date() if self.first_purchase_at else None,
            last_purchase=self.last_purchase_at.date() if self.last_purchase_at else None,
            visits=self.visits,
            spend=self.total_spend,
            erased=self.erased,
            thresholds=thresholds,
        )

    def favourite_products(self, limit: int = 5) -> list[Favourite]:
        """Top SKUs by checkouts, then spend, then SKU."""
        ranked = sorted(self.skus.items(), key=lambda kv: (-kv[1].checkouts, -kv[1].spend, kv[0]))
        return [Favourite(key=k, checkouts=s.checkouts, spend=s.spend) for k, s in ranked[:limit]]

    def favourite_categories(self, limit: int = 5) -> list[Favourite]:
        """Top categories by checkouts, then spend, then name."""
        ranked = sorted(
            self.categories.items(), key=lambda kv: (-kv[1].checkouts, -kv[1].spend, kv[0])
        )
        return [Favourite(key=k, checkouts=s.checkouts, spend=s.spend) for k, s in ranked[:limit]]


UnreachableReason = Literal["erased", "no_email", "bounced", "unsubscribed", "no_consent"]


@dataclass(frozen=True, slots=True)
class Reachability:
    """Whether offers and e-mails can reach the customer; if not, why and since when (None when
    unknown: a value stated before the profile kept its statements' times)."""

    reachable: bool
    reason: UnreachableReason | None = None
    since: dt.datetime | None = None


def reachability(profile: CustomerProfile) -> Reachability:
    """Derived from the profile when asked, so it is as order-independent as the profile: a
    bounce counts against the address stated before it (a newer address is reachable again);
    consent stated false (withdrawn, or refused at sign-up) is `unsubscribed` since that
    statement, consent never stated `no_consent`."""
    stamps = profile.stamps
    if profile.erased:
        return Reachability(False, "erased", profile.erased_at)
    if profile.email is None:
        email_stamp = stamps.get("email")
        return Reachability(False, "no_email", email_stamp.at if email_stamp else None)
    consent = stamps.get("marketing_consent")
    if not profile.marketing_consent:
        if consent is None:
            return Reachability(False, "no_consent")
        return Reachability(False, "unsubscribed", consent.at)
    email_stamp = stamps.get("email")
    if profile.bounced_at is not None and (
        email_stamp is None or profile.bounced_at >= email_stamp.at
    ):
        return Reachability(False, "bounced", profile.bounced_at)
    return Reachability(True)


def tombstone(
    customer_id: str, erased_at: dt.datetime, *, keep: CustomerProfile
) -> CustomerProfile:
    """An erased customer's document: nothing personal, no history."""
    return CustomerProfile(
        customer_id=customer_id,
        erased=True,
        erased_at=erased_at,
        recent_event_ids=keep.recent_event_ids,
        version=keep.version,
    )


# ---------------------------------------------------------------- folding


@dataclass(frozen=True, slots=True)
class FoldOptions:
    """Bounds of the profile's lists."""

    history_days: int = 30
    recent_event_ids: int = 1000
    recent_purchases: int = 20
    latest_interactions: int = 20


Status = Literal["applied", "duplicate", "anonymous", "ignored_erased"]


@dataclass(slots=True)
class Outcome:
    """What applying one event did, and what to tell the other services."""

    status: Status
    customer_id: str | None = None
    profile_changed: ProfileChanged | None = None
    contacts: list[tuple[str, ContactChanged | None]] = field(default_factory=list)
    """(customer id, contact details); None is a tombstone."""
    also_changed: list[ProfileChanged] = field(default_factory=list)
    """Other profiles the event changed: a merged customer, now an alias."""
    merged: bool = False


_ContactKey = tuple[str | None, str | None, bool, str | None]


def _contact_key(p: CustomerProfile) -> _ContactKey:
    return (p.email, p.first_name, p.marketing_consent, p.home_store_id)


def _update_home_store(p: CustomerProfile) -> None:
    if p.preferred_store_id is not None:
        p.home_store_id = p.preferred_store_id
        return
    if p.stores:
        # A tie goes to the smallest store id, not to the current home store: which store
        # got there first depends on the arrival order.
        best = max(p.stores.values())
        p.home_store_id = min(s for s, n in p.stores.items() if n == best)
        return
    p.home_store_id = p.signup_store_id


def _state(doc: CustomerProfile, name: StampedField, value: object, stamp: Stamp) -> None:
    """Set a stated field to `value` unless a statement as new or newer set it already."""
    current = doc.stamps.get(name)
    if current is not None and current >= stamp:
        return
    doc.stamps[name] = stamp
    setattr(doc, name, value)


def _min(a: dt.datetime | None, b: dt.datetime | None) -> dt.datetime | None:
    if a is None:
        return b
    return a if b is None or a <= b else b


def _max(a: dt.datetime | None, b: dt.datetime | None) -> dt.datetime | None:
    if a is None:
        return b
    return a if b is None or a >= b else b


def _add_sorted(items: list[str], item: str) -> None:
    """Add to a sorted list of distinct strings (a set, stored in a canonical order)."""
    index = bisect.bisect_left(items, item)
    if index == len(items) or items[index] != item:
        items.insert(index, item)


_T = TypeVar("_T")
_Entry = TypeVar("_Entry", RecentPurchase, HistoryEntry, InteractionEntry, ConsentRecord)


def _order(
    entry: RecentPurchase | HistoryEntry | InteractionEntry | ConsentRecord,
) -> tuple[dt.datetime, str]:
    """The order of a profile's lists: time, then event id (unique, so the order is total)."""
    return (entry.at, entry.event_id)


def _keep_latest(items: list[_T], limit: int) -> list[_T]:
    return items[-limit:] if len(items) > limit else items


def _newer_checkout(stats: SkuStats, at: dt.datetime, event_id: str) -> bool:
    """Whether the checkout (at, event_id) is newer than the SKU's latest one. A document
    stored before event ids were kept has none: its checkout counts as the first of its time."""
    if stats.last_bought_at is None:
        return True
    return (at, event_id) > (stats.last_bought_at, stats.last_event_id or "")


class ProfileBook:
    """The documents of one batch, and the application of its events.

    Pure: the caller loads the documents (`needs()` tells which ids, `add()` takes them),
    applies the events, then saves `changed()`. The events may come in any order: the
    profiles they build do not depend on it (see the module docstring).
    """

    def __init__(self, options: FoldOptions | None = None) -> None:
        self.options = options or FoldOptions()
        self._docs: dict[str, CustomerProfile] = {}
        self._seen: dict[str, set[str]] = {}
        self._dirty: set[str] = set()
        self._asked: set[str] = set()

    # -- loading

    @staticmethod
    def ids_of(events: Iterable[NormalizedEvent]) -> set[str]:
        """Customer ids the events are addressed to (and profiles they merge)."""
        ids: set[str] = set()
        for event in events:
            if event.customer_id is not None:
                ids.add(event.customer_id)
            if isinstance(event, CardLinked | CustomerSignedUp) and event.merged_customer_id:
                ids.add(event.merged_customer_id)
        return ids

    def add(self, asked: Iterable[str], documents: Mapping[str, CustomerProfile]) -> None:
        """Record what the store returned for `asked` ids (missing ones are new customers)."""
        self._asked.update(asked)
        for customer_id, doc in documents.items():
            self._docs.setdefault(customer_id, doc)

    def needs(self) -> set[str]:
        """Alias targets not loaded yet (follow them before applying)."""
        return {
            doc.merged_into
            for doc in self._docs.values()
            if doc.merged_into is not None and doc.merged_into not in self._asked
        }

    def get(self, customer_id: str) -> CustomerProfile | None:
        return self._docs.get(customer_id)

    def resolve(self, customer_id: str) -> str:
        """The customer id whose profile receives events addressed to `customer_id`."""
        seen = {customer_id}
        doc = self._docs.get(customer_id)
        while doc is not None and doc.merged_into is not None and doc.merged_into not in seen:
            customer_id = doc.merged_into
            seen.add(customer_id)
            doc = self._docs.get(customer_id)
        return customer_id

    def changed(self) -> list[CustomerProfile]:
        """The documents to save, each with its version incremented (one write each)."""
        out = []
        for customer_id in sorted(self._dirty):
            doc = self._docs[customer_id]
            out.append(doc.model_copy(update={"version": doc.version + 1}))
        return out

    # -- applying

    def _seen_ids(self, doc: CustomerProfile) -> set[str]:
        seen = self._seen.get(doc.customer_id)
        if seen is None:
            seen = self._seen[doc.customer_id] = set(doc.recent_event_ids)
        return seen

    def _remember(self, doc: CustomerProfile, event_id: str) -> None:
        doc.recent_event_ids.append(event_id)
        self._seen_ids(doc).add(event_id)
        limit = self.options.recent_event_ids
        if len(doc.recent_event_ids) > limit:
            doc.recent_event_ids = doc.recent_event_ids[-limit:]
            self._seen[doc.customer_id] = set(doc.recent_event_ids)

    def _put(self, doc: CustomerProfile) -> None:
        self._docs[doc.customer_id] = doc
        self._seen.pop(doc.customer_id, None)
        self._dirty.add(doc.customer_id)

    def apply(self, event: NormalizedEvent) -> Outcome:
        """Fold one event into its profile."""
        if event.customer_id is None:
            return Outcome("anonymous")
        target = self.resolve(event.customer_id)
        doc = self._docs.get(target)
        if doc is not None and event.event_id in self._seen_ids(doc):
            return Outcome("duplicate", target)
        if doc is not None and doc.erased_at is not None and event.occurred_at <= doc.erased_at:
            return Outcome("ignored_erased", target)  # happened before the erasure
        if doc is not None and doc.erased:
            if not isinstance(event, CustomerSignedUp):
                return Outcome("ignored_erased", target)
            # A sign-up after the erasure starts a new profile.
            doc = CustomerProfile(
                customer_id=target,
                erased_at=doc.erased_at,
                recent_event_ids=doc.recent_event_ids,
                version=doc.version,
            )
            self._put(doc)
        if doc is None:
            doc = CustomerProfile(customer_id=target)
            self._put(doc)
        before = _contact_key(doc)
        outcome = Outcome("applied", target)
        stamp = Stamp(event.occurred_at, event.event_id)
        purchase: PurchaseSummary | None = None
        match event:
            case PurchaseRecorded():
                purchase = self._purchase(doc, event)
            case CustomerSignedUp():
                self._signup(doc, event, stamp)
                if event.merged_customer_id:
                    self._absorb(doc, event.merged_customer_id, event, outcome)
            case CustomerUpdated():
                self._update(doc, event, stamp)
            case ConsentChanged():
                _state(doc, "marketing_consent", event.marketing_consent, stamp)
            case InteractionRecorded():
                self._interaction(doc, event)
            case CardLinked():
                self._link(doc, event, outcome)
            case CustomerErased():
                return self._erase(doc, event, outcome)
        self._remember(doc, event.event_id)
        self._dirty.add(target)
        consent_given, email_given, birth_date_given = _stated(event)
        if consent_given is not None and isinstance(
            event, CustomerSignedUp | CustomerUpdated | ConsentChanged
        ):
            _record_consent(doc, event, consent_given)
        # Built without re-validation: every value comes from validated events and documents
        # (this runs once per event on the hot path). `marketing_consent`, `has_email`... are
        # the profile's state after this event, in arrival order; `*_given` are this event's
        # own statements, which offers folds by event time.
        outcome.profile_changed = ProfileChanged.model_construct(
            customer_id=target,
            cause_event_id=event.event_id,
            cause_type=event.type,
            occurred_at=event.occurred_at,
            marketing_consent=doc.marketing_consent,
            has_email=doc.email is not None,
            birthday=f"{doc.birth_date:%m-%d}" if doc.birth_date else None,
            first_purchase_at=doc.first_purchase_at,
            last_purchase_at=doc.last_purchase_at,
            visits=doc.visits,
            home_store_id=doc.home_store_id,
            purchase=purchase,
            card_ids=tuple(doc.card_ids),
            consent_given=consent_given,
            email_given=email_given,
            birth_date_given=birth_date_given,
        )
        after = _contact_key(doc)
        if after != before and (doc.email is not None or before[0] is not None):
            outcome.contacts.append((target, self._contact(doc, event.occurred_at)))
        return outcome

    def accepts(self, customer_id: str, at: dt.datetime) -> str | None:
        """The customer whose timeline takes an entry of time `at` addressed to
        `customer_id` (aliases followed), or None when that customer is erased (since `at`
        or before it): an erased customer keeps nothing."""
        target = self.resolve(customer_id)
        doc = self._docs.get(target)
        if doc is not None and (doc.erased or (doc.erased_at is not None and at <= doc.erased_at)):
            return None
        return target

    def bounce(self, customer_id: str, at: dt.datetime) -> bool:
        """An e-mail to the customer bounced at `at` (the latest bounce counts, whatever the
        order they come in). An erased customer keeps nothing; a customer not seen yet gets
        a profile holding only this, which their events then fill in. Returns whether the
        profile changed."""
        target = self.resolve(customer_id)
        doc = self._docs.get(target)
        if doc is not None and (doc.erased or (doc.erased_at is not None and at <= doc.erased_at)):
            return False
        if doc is None:
            doc = CustomerProfile(customer_id=target)
            self._put(doc)
        if doc.bounced_at is not None and doc.bounced_at >= at:
            return False
        doc.bounced_at = at
        self._dirty.add(target)
        return True

    @staticmethod
    def _contact(doc: CustomerProfile, at: dt.datetime) -> ContactChanged:
        return ContactChanged(
            customer_id=doc.customer_id,
            email=doc.email,
            first_name=doc.first_name,
            marketing_consent=doc.marketing_consent,
            home_store_id=doc.home_store_id,
            changed_at=at,
        )

    @staticmethod
    def _add_card(doc: CustomerProfile, card_id: str | None) -> None:
        if card_id is not None:
            _add_sorted(doc.card_ids, card_id)

    def _purchase(self, doc: CustomerProfile, event: PurchaseRecorded) -> PurchaseSummary:
        at = event.occurred_at
        self._add_card(doc, event.card_id)
        doc.first_purchase_at = _min(doc.first_purchase_at, at)
        doc.last_purchase_at = _max(doc.last_purchase_at, at)
        doc.visits += 1
        doc.total_spend += event.total
        doc.stores[event.store_id] = doc.stores.get(event.store_id, 0) + 1
        # Per SKU of the basket: its name and category (the basket's last line giving one).
        products: dict[str, str | None] = {}
        sku_categories: dict[str, str | None] = {}
        basket_categories: set[str] = set()
        for line in event.lines:
            stats = doc.skus.get(line.sku)
            if stats is None:
                stats = doc.skus[line.sku] = SkuStats()
            stats.quantity += line.quantity
            stats.spend += line.amount
            if line.sku not in products:
                stats.checkouts += 1
                products[line.sku] = line.name
                sku_categories[line.sku] = line.category
            else:
                if line.name is not None:
                    products[line.sku] = line.name
                if line.category is not None:
                    sku_categories[line.sku] = line.category
            category = line.category or UNCATEGORIZED
            cat = doc.categories.get(category)
            if cat is None:
                cat = doc.categories[category] = CategoryStats()
            cat.quantity += line.quantity
            cat.spend += line.amount
            if category not in basket_categories:
                basket_categories.add(category)
                cat.checkouts += 1
        for sku, name in products.items():
            stats = doc.skus[sku]
            if _newer_checkout(stats, at, event.event_id):
                stats.last_bought_at = at
                stats.last_event_id = event.event_id
                stats.name = name
                stats.category = sku_categories[sku]
        for code in event.coupons:
            _add_sorted(doc.coupons_redeemed, code)
        skus = sorted(products)
        recent = RecentPurchase(
            event_id=event.event_id,
            at=at,
            store_id=event.store_id,
            total=event.total,
            lines=len(event.lines),
            skus=skus,
        )
        _insert_in_order(doc.recent_purchases, recent)
        doc.recent_purchases = _keep_latest(doc.recent_purchases, self.options.recent_purchases)
        self._record_history(doc, HistoryEntry(at=at, event_id=event.event_id, skus=skus))
        _update_home_store(doc)
        return PurchaseSummary.model_construct(
            event_id=event.event_id,
            store_id=event.store_id,
            total=event.total,
            coupons=event.coupons,
            products=products,
            card_id=event.card_id,
            lines=basket_lines(event.lines),
        )

    def _record_history(self, doc: CustomerProfile, entry: HistoryEntry) -> None:
        # The window ends at the newest checkout ever seen (always kept, so the list's last
        # entry): the entries kept are those within it, whatever order they came in.
        history = doc.sku_history
        newest = max(entry.at, history[-1].at) if history else entry.at
        cutoff = newest - dt.timedelta(days=self.options.history_days)
        if entry.at >= cutoff:
            _insert_in_order(history, entry)
        if history and history[0].at < cutoff:
            doc.sku_history = [h for h in history if h.at >= cutoff]

    def _signup(self, doc: CustomerProfile, event: CustomerSignedUp, stamp: Stamp) -> None:
        self._add_card(doc, event.card_id)
        doc.registered = True
        doc.registered_at = _min(doc.registered_at, event.occurred_at)
        _set_personal(doc, event, stamp)
        _state(doc, "marketing_consent", event.marketing_consent, stamp)
        if event.store_id is not None:
            _state(doc, "signup_store_id", event.store_id, stamp)
        _update_home_store(doc)

    @staticmethod
    def _update(doc: CustomerProfile, event: CustomerUpdated, stamp: Stamp) -> None:
        _set_personal(doc, event, stamp)
        if event.marketing_consent is not None:
            _state(doc, "marketing_consent", event.marketing_consent, stamp)
        if event.store_id is not None:
            _state(doc, "preferred_store_id", event.store_id, stamp)
            _update_home_store(doc)

    def _interaction(self, doc: CustomerProfile, event: InteractionRecorded) -> None:
        kind = event.interaction_type
        doc.interactions[kind] = doc.interactions.get(kind, 0) + 1
        entry = InteractionEntry(
            event_id=event.event_id,
            type=kind,
            channel=event.channel,
            at=event.occurred_at,
            details=dict(event.details),
        )
        _insert_in_order(doc.latest_interactions, entry)
        doc.latest_interactions = _keep_latest(
            doc.latest_interactions, self.options.latest_interactions
        )
        # Counted once per event id (the de-duplication window), so in any order.
        _count_opinion(doc.sentiment_by_brand, event.brand, event.sentiment)
        _count_opinion(doc.sentiment_by_category, event.category, event.sentiment)

    def _link(self, doc: CustomerProfile, event: CardLinked, outcome: Outcome) -> None:
        self._add_card(doc, event.card_id)
        if event.merged_customer_id:
            self._absorb(doc, event.merged_customer_id, event, outcome)

    def _absorb(
        self,
        doc: CustomerProfile,
        merged_customer_id: str,
        event: CardLinked | CustomerSignedUp,
        outcome: Outcome,
    ) -> None:
        """Merge another customer (a linked card's, or a lead) into `doc`, whenever it comes:
        its profile if there is one, and an alias so that its later events come here."""
        source_id = self.resolve(merged_customer_id)
        if source_id == doc.customer_id:
            return  # already merged (or the same customer)
        source = self._docs.get(source_id)
        if source is not None and source.erased:
            return  # an erased customer's data is gone: nothing to merge, no alias
        if source is not None:
            had_email = source.email is not None
            self._merge(doc, source)
            outcome.merged = True
            if had_email:
                outcome.contacts.append((source_id, None))
            # The merged customer no longer exists on its own: downstream read models drop it.
            outcome.also_changed.append(
                ProfileChanged(
                    customer_id=source_id,
                    cause_event_id=event.event_id,
                    cause_type=event.type,
                    occurred_at=event.occurred_at,
                    marketing_consent=False,
                    has_email=False,
                    merged_into=doc.customer_id,
                )
            )
        alias = CustomerProfile(
            customer_id=source_id,
            merged_into=doc.customer_id,
            version=source.version if source is not None else 0,
        )
        self._put(alias)
        _add_sorted(doc.merged_from, source_id)

    def _merge(self, doc: CustomerProfile, other: CustomerProfile) -> None:
        """Fold `other` into `doc`: sums, min/max, unions; per stated field, the newer
        statement wins (whichever profile it is in), so a merge gives the profile the same
        events would have built had they all been addressed to `doc`."""
        for card in other.card_ids:
            self._add_card(doc, card)
        _merge_stated(doc, other)
        doc.bounced_at = _max(doc.bounced_at, other.bounced_at)
        doc.registered = doc.registered or other.registered
        doc.registered_at = _min(doc.registered_at, other.registered_at)
        doc.first_purchase_at = _min(doc.first_purchase_at, other.first_purchase_at)
        doc.last_purchase_at = _max(doc.last_purchase_at, other.last_purchase_at)
        doc.visits += other.visits
        doc.total_spend += other.total_spend
        for sku, theirs in other.skus.items():
            mine = doc.skus.get(sku)
            if mine is None:
                doc.skus[sku] = replace(theirs)
                continue
            mine.quantity += theirs.quantity
            mine.spend += theirs.spend
            mine.checkouts += theirs.checkouts
            if theirs.last_bought_at is not None and _newer_checkout(
                mine, theirs.last_bought_at, theirs.last_event_id or ""
            ):
                mine.last_bought_at = theirs.last_bought_at
                mine.last_event_id = theirs.last_event_id
                mine.name = theirs.name
                mine.category = theirs.category
        for name, theirs_cat in other.categories.items():
            mine_cat = doc.categories.get(name)
            if mine_cat is None:
                doc.categories[name] = replace(theirs_cat)
                continue
            mine_cat.quantity += theirs_cat.quantity
            mine_cat.spend += theirs_cat.spend
            mine_cat.checkouts += theirs_cat.checkouts
        for store, visits in other.stores.items():
            doc.stores[store] = doc.stores.get(store, 0) + visits
        for kind, count in other.interactions.items():
            doc.interactions[kind] = doc.interactions.get(kind, 0) + count
        _add_opinions(doc.sentiment_by_brand, other.sentiment_by_brand)
        _add_opinions(doc.sentiment_by_category, other.sentiment_by_category)
        doc.recent_purchases = _keep_latest(
            _union_in_order(doc.recent_purchases, other.recent_purchases),
            self.options.recent_purchases,
        )
        doc.latest_interactions = _keep_latest(
            _union_in_order(doc.latest_interactions, other.latest_interactions),
            self.options.latest_interactions,
        )
        doc.consent_history = _keep_latest(
            _union_in_order(doc.consent_history, other.consent_history), CONSENT_HISTORY
        )
        history = _union_in_order(doc.sku_history, other.sku_history)
        if history:
            cutoff = history[-1].at - dt.timedelta(days=self.options.history_days)
            history = [h for h in history if h.at >= cutoff]
        doc.sku_history = history
        for code in other.coupons_redeemed:
            _add_sorted(doc.coupons_redeemed, code)
        mine_ids = set(doc.recent_event_ids)
        merged_ids = [i for i in other.recent_event_ids if i not in mine_ids]
        doc.recent_event_ids = _keep_latest(
            merged_ids + doc.recent_event_ids, self.options.recent_event_ids
        )
        self._seen.pop(doc.customer_id, None)
        for alias in other.merged_from:
            _add_sorted(doc.merged_from, alias)
        _update_home_store(doc)

    def _erase(self, doc: CustomerProfile, event: CustomerErased, outcome: Outcome) -> Outcome:
        stone = tombstone(doc.customer_id, event.occurred_at, keep=doc)
        self._put(stone)
        self._remember(stone, event.event_id)
        outcome.profile_changed = ProfileChanged(
            customer_id=stone.customer_id,
            cause_event_id=event.event_id,
            cause_type=event.type,
            occurred_at=event.occurred_at,
            marketing_consent=False,
            has_email=False,
            erased=True,
        )
        outcome.contacts.append((stone.customer_id, None))
        return outcome


def _insert_in_order(items: list[_Entry], item: _Entry) -> None:
    """Insert keeping the list sorted by (time, event id) (appending in the usual case)."""
    if not items or _order(items[-1]) < _order(item):
        items.append(item)
        return
    bisect.insort(items, item, key=_order)


def _union_in_order(mine: list[_Entry], theirs: list[_Entry]) -> list[_Entry]:
    ids = {i.event_id for i in mine}
    out = mine + [i for i in theirs if i.event_id not in ids]
    out.sort(key=_order)
    return out


def _stated(event: NormalizedEvent) -> tuple[bool | None, bool, bool]:
    """What the event itself states, whatever the profile held: the consent it gives (None
    when it gives none), whether it gives an e-mail address, whether a date of birth."""
    if isinstance(event, CustomerSignedUp | CustomerUpdated):
        return event.marketing_consent, event.email is not None, event.birth_date is not None
    if isinstance(event, ConsentChanged):
        return event.marketing_consent, False, False
    return None, False, False


def _record_consent(
    doc: CustomerProfile,
    event: CustomerSignedUp | CustomerUpdated | ConsentChanged,
    given: bool,
) -> None:
    record = ConsentRecord(
        event_id=event.event_id,
        at=event.occurred_at,
        given=given,
        source=event.source,
        channel=event.channel,
        text_version=event.consent_text_version,
    )
    _insert_in_order(doc.consent_history, record)
    doc.consent_history = _keep_latest(doc.consent_history, CONSENT_HISTORY)


def _set_personal(
    doc: CustomerProfile, event: CustomerSignedUp | CustomerUpdated, stamp: Stamp
) -> None:
    """E-mail, first name and birth date that the event gives; a null leaves the field as is,
    and so does a value older than the one the profile holds."""
    if event.email is not None:
        _state(doc, "email", event.email, stamp)
    if event.first_name is not None:
        _state(doc, "first_name", event.first_name, stamp)
    if event.birth_date is not None:
        _state(doc, "birth_date", event.birth_date, stamp)


def _merge_stated(doc: CustomerProfile, other: CustomerProfile) -> None:
    """Per stated field, the newer statement of the two profiles. A value without a stamp (a
    document stored before stamps were kept) counts as older than any stamped one; between
    two such, the target's value stands unless it has none (the rule of those documents)."""
    for name in STAMPED_FIELDS:
        theirs = other.stamps.get(name)
        if theirs is not None:
            _state(doc, name, getattr(other, name), theirs)
        elif name in doc.stamps:
            continue
        elif name == "marketing_consent":
            if other.registered and not doc.registered:
                doc.marketing_consent = other.marketing_consent
        elif getattr(doc, name) is None:
            setattr(doc, name, getattr(other, name))


# ---------------------------------------------------------------- the customer's coupons

CouponState = Literal["issued", "redeemed", "expired", "revoked"]
# A state only moves up this rank. Revoked is last: a revoked offer stays revoked whatever
# comes after (offers no longer honours its code); a redemption before the revocation keeps
# its time and discount on the coupon, a fact of the past.
_STATE_RANK: dict[CouponState, int] = {"issued": 0, "expired": 1, "redeemed": 2, "revoked": 3}


class Coupon(_Part):
    """A coupon of the customer as the offers service announced it on `crm.offers`: the
    profiles service's own view, so the look-up never reads another service's store."""

    offer_id: str = Field(description="Offer id.")
    customer_id: str = Field(description="Pseudonymous customer id.")
    kind: OfferKind = Field(description="Rule that issued it.")
    coupon_code: str = Field(description="Coupon code.")
    discount_percent: Decimal = Field(description="Percentage off.")
    sku: str | None = Field(default=None, description="SKU it applies to; null = basket.")
    product_name: str | None = Field(default=None, description="Name of that product.")
    valid_from: dt.date = Field(description="First valid day.")
    valid_until: dt.date = Field(description="Last valid day.")
    state: CouponState = Field(default="issued", description="Lifecycle state.")
    redeemed_at: AwareDatetime | None = Field(default=None, description="When it was redeemed.")
    discount: Decimal | None = Field(
        default=None, description="Money it took off the redeeming basket; null until redeemed."
    )


_STATE_OF: dict[type[OfferRedeemed | OfferExpired | OfferRevoked], CouponState] = {
    OfferRedeemed: "redeemed",
    OfferExpired: "expired",
    OfferRevoked: "revoked",
}


def fold_coupons(known: Mapping[str, Coupon], events: Iterable[OfferEvent]) -> dict[str, Coupon]:
    """The coupons the offer events change (by offer id). A state only moves forward (issued,
    expired, redeemed, revoked), so a redelivered or reordered event changes nothing and a
    revoked coupon stays revoked; a state event of a coupon not seen issued is left out (its
    issue comes first on the customer's partition)."""
    current = dict(known)
    changed: dict[str, Coupon] = {}
    for event in events:
        coupon: Coupon | None = None
        if isinstance(event, OfferIssued):
            if event.offer_id not in current:
                coupon = Coupon(
                    offer_id=event.offer_id,
                    customer_id=event.customer_id,
                    kind=event.kind,
                    coupon_code=event.coupon_code,
                    discount_percent=event.discount_percent,
                    sku=event.sku,
                    product_name=event.product_name,
                    valid_from=event.valid_from,
                    valid_until=event.valid_until,
                )
        elif isinstance(event, OfferRedeemed | OfferExpired | OfferRevoked):
            before = current.get(event.offer_id)
            state = _STATE_OF[type(event)]
            if before is not None and _STATE_RANK[state] > _STATE_RANK[before.state]:
                update: dict[str, object] = {"state": state}
                if isinstance(event, OfferRedeemed):
                    update |= {"redeemed_at": event.redeemed_at, "discount": event.discount}
                coupon = before.model_copy(update=update)
        if coupon is not None:
            current[coupon.offer_id] = changed[coupon.offer_id] = coupon
    return changed
