"""The notifier's pure core: who gets an e-mail and when, what it says, retries and tokens.

No I/O here except reading the Jinja2 templates shipped with the package. The service layer
loads state, calls `plan_batch` / `decide`, persists, sends and records outcomes.

Offers decides on the set of events, not their arrival order, so a late event may revoke an
offer it had issued (`offer_revoked`) or issue one it had not (the same id again). A new
e-mail therefore waits a short grace before it is sent (`not_before`), so that a correction
arriving seconds later cancels it instead of needing an apology.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.policy
import email.utils
import hashlib
import hmac
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from email.message import EmailMessage
from pathlib import Path
from typing import Literal, get_args
from urllib.parse import quote
from zoneinfo import ZoneInfo

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from shared.events import (
    ContactChanged,
    DeliveryRecorded,
    DeliveryState,
    OfferIssued,
    OfferRevoked,
)
from shared.settings import QuietHours

DeliveryStatus = Literal[
    "waiting_contact", "pending", "sending", "sent", "written", "bounced", "suppressed", "failed"
]
FINAL_STATES: frozenset[str] = frozenset(get_args(DeliveryState))
OPEN_STATES: frozenset[str] = frozenset({"waiting_contact", "pending", "sending"})
SENT_STATES: frozenset[str] = frozenset({"sent", "written"})

TEMPLATES_DIR = Path(__file__).parent / "templates"

# ---------------------------------------------------------------- reasons (stable codes)
NO_CONSENT = "no_consent"
NO_EMAIL = "no_email"
INVALID_EMAIL = "invalid_email"
BOUNCED = "bounced"
OFFER_EXPIRED = "offer_expired"
CONSENT_WITHDRAWN = "consent_withdrawn"
CUSTOMER_ERASED = "customer_erased"
OFFER_REVOKED = "offer_revoked"

OfferChange = OfferIssued | OfferRevoked
"""What the notifier takes from `crm.offers`: an offer to e-mail, or one withdrawn."""


# ---------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class Contact:
    """What the notifier knows of a customer: the latest ContactChanged plus the bounce flag."""

    customer_id: str
    email: str | None
    first_name: str | None
    marketing_consent: bool
    home_store_id: str | None
    bounced: bool = False
    changed_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """The one e-mail of one offer.

    `offer` is None once personal data was erased, and for an offer revoked before the
    notifier saw it. `not_before`: the earliest time it may be sent (the grace, quiet hours),
    kept while it waits for a contact.
    """

    offer_id: str
    customer_id: str
    state: DeliveryStatus
    message_id: str
    offer: OfferIssued | None
    updated_at: dt.datetime
    attempts: int = 0
    not_before: dt.datetime | None = None
    last_error: str | None = None

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def is_revoked(self) -> bool:
        return self.state == "suppressed" and self.last_error == OFFER_REVOKED


def contact_from_event(event: ContactChanged, previous: Contact | None) -> Contact | None:
    """The contact after `event`, or None when the event is older than what is known.

    The bounce flag belongs to an address: a new address clears it. A contact whose personal
    fields profiles withheld (no data key yet) keeps the address and name already known.
    """
    if (
        previous is not None
        and previous.changed_at is not None
        and event.changed_at < previous.changed_at
    ):
        return None
    if event.personal_withheld and previous is not None:
        event = event.model_copy(
            update={"email": previous.email, "first_name": previous.first_name}
        )
    email_address = event.email.strip().lower() if event.email else None
    bounced = previous is not None and previous.bounced and previous.email == email_address
    return Contact(
        customer_id=event.customer_id,
        email=email_address or None,
        first_name=event.first_name,
        marketing_consent=event.marketing_consent,
        home_store_id=event.home_store_id,
        bounced=bounced,
        changed_at=event.changed_at,
    )


# ---------------------------------------------------------------- ids and tokens

_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def safe_offer_token(offer_id: str) -> str:
    """The offer id itself when it is safe in a file name and a Message-ID, else its hash."""
    if _SAFE_ID.match(offer_id) and offer_id not in {".", ".."}:
        return offer_id
    return "h-" + hashlib.sha256(offer_id.encode()).hexdigest()[:40]


def message_id_for(offer_id: str) -> str:
    """Message-ID derived from the offer id: a re-send carries the same one."""
    return f"<offer-{safe_offer_token(offer_id)}@crm-stream>"


_MESSAGE_ID = re.compile(r"^<offer-([A-Za-z0-9._-]{1,128})@crm-stream>$")


def offer_id_of_message_id(message_id: str) -> str | None:
    """The offer id a Message-ID was derived from; None for another message's id. (An offer
    id hashed into it by `safe_offer_token` cannot be read back: its look-up finds nothing.)"""
    match = _MESSAGE_ID.match(message_id.strip())
    return match.group(1) if match else None


def _key_bytes(key: str | bytes) -> bytes:
    return key.encode() if isinstance(key, str) else key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _unsubscribe_mac(customer_id: str, key: str | bytes) -> bytes:
    return hmac.new(_key_bytes(key), b"unsubscribe:" + customer_id.encode(), "sha256").digest()


def unsubscribe_token(customer_id: str, key: str | bytes) -> str:
    """`<base64url(customer id)>.<base64url(HMAC-SHA-256)>`: URL-safe, verifiable, no lookup."""
    return f"{_b64(customer_id.encode())}.{_b64(_unsubscribe_mac(customer_id, key))}"


def verify_unsubscribe_token(token: str, key: str | bytes) -> str | None:
    """The customer id of a genuine token, None for anything else."""
    head, sep, mac_text = token.strip().partition(".")
    if not sep or not head or not mac_text or len(token) > 1024:
        return None
    try:
        customer_id = _unb64(head).decode()
        mac = _unb64(mac_text)
    except (binascii.Error, ValueError):
        return None
    if not customer_id or not hmac.compare_digest(mac, _unsubscribe_mac(customer_id, key)):
        return None
    return customer_id


def unsubscribe_url(public_url: str, customer_id: str, key: str | bytes) -> str:
    token = unsubscribe_token(customer_id, key)
    return f"{public_url.rstrip('/')}/unsubscribe?token={quote(token, safe='')}"


# ---------------------------------------------------------------- quiet hours


def quiet_until(now: dt.datetime, window: QuietHours | None, zone: ZoneInfo) -> dt.datetime | None:
    """End of the quiet window `now` falls in (aware UTC), or None when sending is allowed."""
    if window is None:
        return None
    local = now.astimezone(zone)
    if not window.contains(local.time().replace(tzinfo=None)):
        return None
    end = dt.datetime.combine(local.date(), window.end, tzinfo=zone)
    if end <= local:
        end = dt.datetime.combine(local.date() + dt.timedelta(days=1), window.end, tzinfo=zone)
    return end.astimezone(dt.UTC)


# ---------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class SendNow:
    """Send the e-mail now."""


@dataclass(frozen=True, slots=True)
class WaitForContact:
    """No contact details yet: wait for them on `crm.contacts`."""


@dataclass(frozen=True, slots=True)
class Defer:
    """Not yet (quiet hours, or the send grace): send at `not_before`."""

    not_before: dt.datetime
    reason: Literal["quiet_hours", "grace"] = "quiet_hours"


@dataclass(frozen=True, slots=True)
class Suppress:
    """Never send; `reason` is a stable code."""

    reason: str


Decision = SendNow | WaitForContact | Defer | Suppress


@dataclass(frozen=True, slots=True)
class QuietPolicy:
    """Quiet hours and the store time zones they are read in."""

    window: QuietHours | None
    zone_of: Callable[[str | None], ZoneInfo]


def _plausible_email(address: str) -> bool:
    local, at, domain = address.rpartition("@")
    return bool(at and local and "." in domain) and not any(c.isspace() for c in address)


def decide(
    offer: OfferIssued,
    contact: Contact | None,
    *,
    now: dt.datetime,
    quiet: QuietPolicy,
    not_before: dt.datetime | None = None,
) -> Decision:
    """What to do with the e-mail of `offer` given what is known of the customer now.

    `not_before` is the earliest time it may go (the end of the send grace): until then it
    is deferred, and to the end of the quiet hours when that time falls inside them.
    """
    if contact is None:
        return WaitForContact()
    if not contact.marketing_consent:
        return Suppress(NO_CONSENT)
    if not contact.email:
        return Suppress(NO_EMAIL)
    if not _plausible_email(contact.email):
        return Suppress(INVALID_EMAIL)
    if contact.bounced:
        return Suppress(BOUNCED)
    zone = quiet.zone_of(contact.home_store_id)
    if now.astimezone(zone).date() > offer.valid_until:
        return Suppress(OFFER_EXPIRED)
    at = max(now, not_before) if not_before is not None else now
    until = quiet_until(at, quiet.window, zone)
    if until is not None:
        return Defer(until)
    if at > now:
        # Held until `at`: by the grace, unless `now` is inside the quiet hours it ends.
        quiet_now = quiet_until(now, quiet.window, zone) is not None
        return Defer(at, reason="quiet_hours" if quiet_now else "grace")
    return SendNow()


def apply_decision(delivery: Delivery, decision: Decision, now: dt.datetime) -> Delivery:
    """The delivery after a decision; SendNow makes it `sending` (persisted before SMTP)."""
    match decision:
        case SendNow():
            return replace(delivery, state="sending", not_before=None, updated_at=now)
        case WaitForContact():
            # `not_before` (the grace) is kept: a contact arriving a second later must not
            # cut the grace short.
            return replace(delivery, state="waiting_contact", updated_at=now)
        case Defer(not_before=at):
            return replace(delivery, state="pending", not_before=at, updated_at=now)
        case Suppress(reason=reason):
            return replace(
                delivery, state="suppressed", not_before=None, last_error=reason, updated_at=now
            )
    raise AssertionError(decision)  # pragma: no cover


def new_delivery(offer: OfferIssued, now: dt.datetime) -> Delivery:
    return Delivery(
        offer_id=offer.offer_id,
        customer_id=offer.customer_id,
        state="waiting_contact",
        message_id=message_id_for(offer.offer_id),
        offer=offer,
        updated_at=now,
    )


def revoked_delivery(event: OfferRevoked, now: dt.datetime) -> Delivery:
    """The delivery of an offer revoked before the notifier saw it: final already, so that the
    offer, arriving later (from another partition), is not sent. It has no offer yet."""
    return Delivery(
        offer_id=event.offer_id,
        customer_id=event.customer_id,
        state="suppressed",
        message_id=message_id_for(event.offer_id),
        offer=None,
        updated_at=now,
        last_error=OFFER_REVOKED,
    )


def revoke_delivery(delivery: Delivery, now: dt.datetime) -> Delivery:
    """A delivery not sent yet whose offer was revoked: final, never sent."""
    return replace(
        delivery, state="suppressed", not_before=None, last_error=OFFER_REVOKED, updated_at=now
    )


def erase_delivery(delivery: Delivery, now: dt.datetime) -> Delivery:
    """An open delivery of an erased customer: suppressed, with nothing personal kept."""
    return replace(
        delivery,
        state="suppressed",
        offer=None,
        not_before=None,
        last_error=CUSTOMER_ERASED,
        updated_at=now,
    )


def bounce_delivery(delivery: Delivery, status: str, now: dt.datetime) -> Delivery:
    """A sent e-mail reported undeliverable afterwards (a DSN with a 5.x.x status)."""
    return replace(delivery, state="bounced", last_error=f"dsn_{status}", updated_at=now)


ContactUpdate = tuple[str, ContactChanged | None]
"""(customer id, event) in arrival order; a None event is the tombstone of an erased customer."""


@dataclass(slots=True)
class Plan:
    """What one batch changes: contacts, deliveries (new or changed) and what to send now."""

    contacts: dict[str, Contact] = field(default_factory=dict)
    erased: set[str] = field(default_factory=set)
    deliveries: dict[str, Delivery] = field(default_factory=dict)
    to_send: list[str] = field(default_factory=list)
    """Offer ids, in order, whose delivery is `sending` in `deliveries`."""
    replayed: list[Delivery] = field(default_factory=list)
    """Final deliveries of offers seen again: their outcome is published again (same content)."""
    updated: dict[str, Delivery] = field(default_factory=dict)
    """Final deliveries changed without a new outcome (a revoked offer arriving after its
    revocation is kept with it): saved, and their outcome is in `replayed`."""
    revoked_after_send: list[OfferRevoked] = field(default_factory=list)
    """Revocations of offers whose e-mail had already gone: nothing to undo, only to report."""
    counts: Counter[str] = field(default_factory=Counter)
    """What was decided, for the service's counters: deferred_quiet_hours, deferred_grace,
    waiting_contact, reissued, revoked_before_send, revoked_before_offer, revoked_after_send,
    revoked_after_final."""

    @property
    def outcomes(self) -> list[Delivery]:
        """Deliveries that reached a final state in this plan."""
        return [d for d in self.deliveries.values() if d.is_final]

    def latest(self, offer_id: str, stored: Mapping[str, Delivery]) -> Delivery | None:
        """The delivery of an offer as this plan leaves it so far."""
        return self.deliveries.get(offer_id) or self.updated.get(offer_id) or stored.get(offer_id)

    def decided(self, delivery: Delivery, decision: Decision, now: dt.datetime) -> None:
        """Record a decision on a delivery (and count the waits)."""
        match decision:
            case Defer(reason=reason):
                self.counts[f"deferred_{reason}"] += 1
            case WaitForContact():
                self.counts["waiting_contact"] += 1
        self.put(apply_decision(delivery, decision, now))

    def put(self, delivery: Delivery) -> None:
        """A delivery changed with an outcome of its own (or none yet): replaces what this plan
        had of it."""
        offer_id = delivery.offer_id
        self.updated.pop(offer_id, None)
        self.replayed = [d for d in self.replayed if d.offer_id != offer_id]
        self.deliveries[offer_id] = delivery


def plan_batch(
    *,
    contact_updates: Sequence[ContactUpdate],
    offers: Sequence[OfferChange],
    contacts: Mapping[str, Contact],
    deliveries: Mapping[str, Delivery],
    open_deliveries: Iterable[Delivery],
    now: dt.datetime,
    quiet: QuietPolicy,
    grace: dt.timedelta = dt.timedelta(0),
) -> Plan:
    """Fold a batch into the notifier's state.

    Contacts are applied before offers, so an offer and a consent withdrawal in the same batch
    end suppressed. Offers and revocations are applied in arrival order. `deliveries` holds the
    stored deliveries of the batch's offers; `open_deliveries` the not-yet-final deliveries of
    the customers whose contact changed. A new e-mail is not sent before `now + grace`.
    """
    plan = Plan()
    current: dict[str, Contact | None] = dict(contacts)
    for customer_id, event in contact_updates:
        if event is None:
            current[customer_id] = None
            plan.erased.add(customer_id)
            plan.contacts.pop(customer_id, None)
            continue
        updated = contact_from_event(event, current.get(customer_id))
        if updated is not None:
            current[customer_id] = updated
            plan.contacts[customer_id] = updated
            plan.erased.discard(customer_id)

    # Open deliveries of customers whose contact changed.
    changed = plan.erased | set(plan.contacts)
    for delivery in open_deliveries:
        if delivery.customer_id not in changed or delivery.is_final:
            continue
        if delivery.customer_id in plan.erased:
            plan.put(erase_delivery(delivery, now))
            continue
        _redecide(plan, delivery, current.get(delivery.customer_id), now, quiet)

    for change in offers:
        if isinstance(change, OfferRevoked):
            _revoke(plan, change, deliveries, now)
        else:
            _issue(plan, change, deliveries, current, now=now, quiet=quiet, grace=grace)

    plan.to_send = [d.offer_id for d in plan.deliveries.values() if d.state == "sending"]
    return plan


def _plan_new(
    plan: Plan,
    offer: OfferIssued,
    contact: Contact | None,
    *,
    now: dt.datetime,
    quiet: QuietPolicy,
    grace: dt.timedelta,
) -> None:
    """The delivery of an offer seen for the first time (or re-issued): held for the grace."""
    delivery = new_delivery(offer, now)
    if offer.customer_id in plan.erased:
        plan.put(erase_delivery(delivery, now))
        return
    if grace > dt.timedelta(0):
        delivery = replace(delivery, not_before=now + grace)
    decision = decide(offer, contact, now=now, quiet=quiet, not_before=delivery.not_before)
    plan.decided(delivery, decision, now)


def _issue(
    plan: Plan,
    offer: OfferIssued,
    stored: Mapping[str, Delivery],
    current: Mapping[str, Contact | None],
    *,
    now: dt.datetime,
    quiet: QuietPolicy,
    grace: dt.timedelta,
) -> None:
    offer_id = offer.offer_id
    contact = current.get(offer.customer_id)
    known = plan.latest(offer_id, stored)
    if known is None:
        _plan_new(plan, offer, contact, now=now, quiet=quiet, grace=grace)
    elif known.is_revoked and known.offer is None:
        # Revoked before it was seen: this is the offer the revocation withdrew, arriving
        # late from another partition. It stays suppressed; kept with it, the offer marks it
        # seen, so that a later issue of the same id is a re-issue.
        if offer.customer_id in plan.erased:
            return
        attached = replace(known, offer=offer)
        if offer_id in plan.deliveries:
            plan.deliveries[offer_id] = attached  # its outcome is published with this batch
        else:
            plan.updated[offer_id] = attached
            plan.replayed = [d for d in plan.replayed if d.offer_id != offer_id] + [attached]
    elif known.is_revoked:
        # Issued again by a later correction (same id, same code): plan it as a new e-mail,
        # grace included. Nothing was sent for it.
        plan.counts["reissued"] += 1
        _plan_new(plan, offer, contact, now=now, quiet=quiet, grace=grace)
    elif offer_id in plan.deliveries:
        return  # planned earlier in this batch
    elif known.is_final:
        if known not in plan.replayed:
            plan.replayed.append(known)
    elif known.state == "sending":
        # A crash left it between `sending` and `sent`: send again, same Message-ID.
        _redecide(plan, known, contact, now, quiet)


def _revoke(
    plan: Plan, event: OfferRevoked, stored: Mapping[str, Delivery], now: dt.datetime
) -> None:
    offer_id = event.offer_id
    known = plan.latest(offer_id, stored)
    if known is None:
        # Not seen yet: remembered as a final delivery, so that the offer is never sent.
        plan.counts["revoked_before_offer"] += 1
        plan.put(revoked_delivery(event, now))
    elif known.state in SENT_STATES:
        plan.counts["revoked_after_send"] += 1
        plan.revoked_after_send.append(event)
    elif known.is_revoked:
        # The revocation seen again: its outcome is reported again, like a replayed offer's.
        if offer_id not in plan.deliveries and known not in plan.replayed:
            plan.replayed.append(known)
    elif known.is_final:
        plan.counts["revoked_after_final"] += 1  # bounced, failed or suppressed already
    else:
        # Waiting, held back, or left `sending` by a crash: it is not sent.
        plan.counts["revoked_before_send"] += 1
        plan.put(revoke_delivery(known, now))


def _redecide(
    plan: Plan, delivery: Delivery, contact: Contact | None, now: dt.datetime, quiet: QuietPolicy
) -> None:
    """Decide again for a delivery already waiting, held back or interrupted."""
    if delivery.offer is None:
        plan.put(erase_delivery(delivery, now))
        return
    # A waiting or held-back delivery keeps its earliest time (the grace, the quiet hours).
    floor = delivery.not_before if delivery.state in {"waiting_contact", "pending"} else None
    decision = decide(delivery.offer, contact, now=now, quiet=quiet, not_before=floor)
    withdrawn = isinstance(decision, Suppress) and decision.reason == NO_CONSENT
    if withdrawn and delivery.state != "waiting_contact":
        decision = Suppress(CONSENT_WITHDRAWN)
    plan.decided(delivery, decision, now)


def redecide_due(
    due: Iterable[Delivery],
    contacts: Mapping[str, Contact],
    *,
    now: dt.datetime,
    quiet: QuietPolicy,
) -> Plan:
    """Deliveries whose grace or quiet hours ended (or left `sending` by a crash): decide again."""
    plan = Plan()
    for delivery in due:
        if delivery.is_final:
            continue
        _redecide(plan, delivery, contacts.get(delivery.customer_id), now, quiet)
    plan.to_send = [d.offer_id for d in plan.deliveries.values() if d.state == "sending"]
    return plan


def outcome_event(delivery: Delivery) -> DeliveryRecorded:
    """The published outcome of a final delivery: ids and state, no address, no name."""
    state = delivery.state
    if state not in FINAL_STATES:
        raise ValueError(f"delivery {delivery.offer_id} is not final: {state}")
    return DeliveryRecorded(
        offer_id=delivery.offer_id,
        customer_id=delivery.customer_id,
        state=state,
        attempts=delivery.attempts,
        message_id=delivery.message_id,
        recorded_at=delivery.updated_at,
        reason=None if state in {"sent", "written"} else delivery.last_error,
    )


# ---------------------------------------------------------------- retries and rate


def backoff_schedule(attempts: int, *, base: float, cap: float) -> list[float]:
    """Upper bounds of the delays before retries 1..attempts-1: base, 2*base, 4*base... <= cap."""
    return [min(cap, base * 2.0**n) for n in range(max(0, attempts - 1))]


def backoff_delay(retry: int, *, base: float, cap: float, jitter: float) -> float:
    """Delay before retry number `retry` (1-based): "equal jitter" in [bound/2, bound].

    `jitter` in [0, 1) comes from the caller's random source, so this stays deterministic.
    """
    bound = min(cap, base * 2.0 ** (retry - 1))
    return bound / 2 + bound / 2 * min(max(jitter, 0.0), 1.0)


class TokenBucket:
    """Sending-rate limit: `rate` tokens per second, bursts up to `capacity`.

    `reserve(now)` takes a token and says how long to wait before using it (0 = at once);
    the clock is the caller's (monotonic seconds), so this is pure and testable.
    """

    def __init__(self, *, rate: float, capacity: float | None = None, now: float = 0.0) -> None:
        self.rate = rate
        self.capacity = capacity if capacity is not None else max(1.0, rate)
        self._tokens = self.capacity
        self._stamp = now

    def reserve(self, now: float) -> float:
        if self.rate <= 0:
            return 0.0
        elapsed = max(0.0, now - self._stamp)
        self._stamp = max(self._stamp, now)
        self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
        self._tokens -= 1.0
        if self._tokens >= 0:
            return 0.0
        return -self._tokens / self.rate


# ---------------------------------------------------------------- rendering

SUBJECTS: dict[str, str] = {
    "frequent_item": "{name}, {discount}% off {product} just for you",
    "birthday": "Happy birthday, {name}! A {discount}% gift inside",
    "anniversary": "Thank you for a year with us, {name}",
    "win_back": "We miss you, {name}: {discount}% off your next visit",
    "default": "{name}, your {discount}% coupon",
}
_POLICY = email.policy.default.clone(max_line_length=998)
"""Serialization with RFC 5322's line limit: a long List-Unsubscribe URL stays one `<...>`
instead of being turned into encoded-words (which mail clients would not recognize)."""
_TEMPLATE_NAME = re.compile(r"^[a-z0-9_-]{1,64}$")
_SPACES = re.compile(r"\s+")


def format_discount(value: Decimal) -> str:
    """10.00 -> "10", 12.50 -> "12.5"."""
    text = f"{value.normalize():f}"
    return text


def _one_line(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


class Renderer:
    """Builds the e-mail of an offer from the Jinja2 templates (`<name>.txt.j2`, `.html.j2`).

    The template is chosen by the offer's `template`, then its kind, then `default`.
    HTML is autoescaped, so whatever a customer typed as a first name stays text.
    """

    def __init__(
        self,
        *,
        sender: str,
        public_url: str,
        unsubscribe_key: str | bytes,
        templates_dir: Path = TEMPLATES_DIR,
    ) -> None:
        self.sender = sender
        self.public_url = public_url
        self._key = _key_bytes(unsubscribe_key)
        self._env = Environment(
            loader=FileSystemLoader(templates_dir),
            autoescape=select_autoescape(
                enabled_extensions=("html.j2",), default_for_string=False, default=False
            ),
            undefined=StrictUndefined,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def _names(self, offer: OfferIssued, suffix: str) -> list[str]:
        names = [n for n in (offer.template, offer.kind) if _TEMPLATE_NAME.match(n)]
        return [f"{n}.{suffix}.j2" for n in dict.fromkeys([*names, "default"])]

    def context(self, offer: OfferIssued, contact: Contact) -> dict[str, object]:
        first_name = _one_line(contact.first_name or "")
        return {
            "first_name": first_name or None,
            "salutation_name": first_name or "there",
            "kind": offer.kind,
            "coupon_code": offer.coupon_code,
            "discount": format_discount(offer.discount_percent),
            "sku": offer.sku,
            "product_name": offer.product_name,
            "valid_from": offer.valid_from,
            "valid_until": offer.valid_until,
            "valid_until_text": offer.valid_until.strftime("%d %B %Y").lstrip("0"),
            "unsubscribe_url": unsubscribe_url(self.public_url, offer.customer_id, self._key),
        }

    def subject(self, offer: OfferIssued, contact: Contact) -> str:
        name = _one_line(contact.first_name or "") or "Hello"
        product = _one_line(offer.product_name or offer.sku or "your favourite")
        pattern = SUBJECTS.get(offer.kind, SUBJECTS["default"])
        text = pattern.format(
            name=name, discount=format_discount(offer.discount_percent), product=product
        )
        return _one_line(text)[:200]

    def render(self, offer: OfferIssued, contact: Contact, *, now: dt.datetime) -> EmailMessage:
        """The multipart/alternative message (text, then HTML) with every header set."""
        if not contact.email:
            raise ValueError("contact has no e-mail address")
        ctx = self.context(offer, contact)
        text = self._env.select_template(self._names(offer, "txt")).render(ctx)
        html = self._env.select_template(self._names(offer, "html")).render(ctx)
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = contact.email
        message["Subject"] = self.subject(offer, contact)
        message["Date"] = email.utils.format_datetime(now.astimezone(dt.UTC))
        message["Message-ID"] = message_id_for(offer.offer_id)
        message["List-Unsubscribe"] = f"<{ctx['unsubscribe_url']}>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        message["X-CRM-Offer-Kind"] = offer.kind
        message.set_content(text, cte="quoted-printable")
        message.add_alternative(html, subtype="html", cte="quoted-printable")
        # Bodies were encoded with 76-character lines; headers are folded when serialized.
        message.policy = _POLICY
        return message
