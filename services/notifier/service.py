"""The notifier's service layer: fold a batch of events with the pure core, persist, send, report.

Delivery guarantee at the SMTP boundary: at-least-once. A delivery is persisted `sending`
before its SMTP transaction and `sent` right after it, one message at a time, so a crash
can repeat at most the one message that was in flight; the repeat carries the same
Message-ID (`<offer-{offer_id}@crm-stream>`), so duplicates are detectable downstream.
Outbox files are idempotent by construction (same name, atomic replace), so their outcomes
are persisted once per batch. Everything is durable inside `handle`, before the app
publishes the outcomes (the declaration's order is `save_then_publish`).

A new e-mail waits `send_grace_s` (by the service's clock) as a `pending` delivery and is sent
by `run_due`, so that an `offer_revoked` arriving within the grace cancels it unsent.

Sending rate: every SMTP send draws on one budget shared by all instances through the store
(`SendBudget`: CRM_SEND_RATE_PER_S x CRM_SEND_BUDGET_WINDOW_S e-mails per window), so N
instances together stay within the provider's allowance. `run_due` claims due deliveries and
spends their budget in one atomic step; a send from a batch (no grace, a late contact, a
retry) takes one unit just before its SMTP transaction and waits for the next window when
the budget is spent. Each instance also paces itself to the rate with a token bucket, so a
window's budget is not sent as one burst. Claimed deliveries that end up not sent (quiet
hours, consent withdrawn) keep their unit spent: the budget errs on the safe side.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import random
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import replace
from typing import Any, Literal

import jinja2

from services.notifier.bounces import DeliveryReport
from services.notifier.domain import (
    BOUNCED,
    Contact,
    ContactUpdate,
    Delivery,
    DeliveryStatus,
    OfferChange,
    Plan,
    QuietPolicy,
    Renderer,
    TokenBucket,
    backoff_delay,
    bounce_delivery,
    offer_id_of_message_id,
    outcome_event,
    plan_batch,
    redecide_due,
    safe_offer_token,
)
from services.notifier.mailer import PermanentFailure, TemporaryFailure, Transport
from services.notifier.settings import NotifierSettings
from services.notifier.store import NotifierRepository, SendBudget, StoreChanges
from shared.edge import Outgoing, Received, dump
from shared.events import ConsentChanged, ContactChanged, OfferIssued, OfferRevoked
from shared.logging import get_logger
from shared.metrics import observe_freshness, trigger_type
from shared.skeleton import Handled
from shared.topics import DELIVERIES, EVENTS
from shared.vault import KeyReader, NoKeys, Opener, Pending

log = get_logger(__name__)

Clock = Callable[[], dt.datetime]
BounceResult = Literal["bounced", "already_bounced", "not_failed", "unknown_message"]
"""What a delivery status notification did."""
Sleep = Callable[[float], Awaitable[None]]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class NotifierService:
    """One per app. Batches, polls and opt-outs never overlap (one lock), so a consent
    withdrawal is always persisted before or after a send, never during it.
    """

    def __init__(
        self,
        repository: NotifierRepository,
        *,
        transport: Transport,
        renderer: Renderer,
        quiet: QuietPolicy,
        settings: NotifierSettings,
        clock: Clock = utc_now,
        sleep: Sleep = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
        vault: KeyReader | None = None,
    ) -> None:
        self.repository = repository
        self.vault: KeyReader = vault or NoKeys()
        self.transport = transport
        self.renderer = renderer
        self.quiet = quiet
        self.settings = settings
        self.clock = clock
        self._sleep = sleep
        self._monotonic = monotonic
        self._jitter = jitter
        self._bucket = TokenBucket(rate=settings.send_rate_per_s, now=monotonic())
        self.budget = SendBudget.of(
            rate_per_s=settings.send_rate_per_s, window_s=settings.send_budget_window_s
        )
        """The sending budget shared by every instance on the store (None: unlimited)."""
        self._prepaid = 0
        """Budget units the deliveries in hand were claimed with (`run_due`); the lock holds."""
        self._lock = asyncio.Lock()
        self.grace = dt.timedelta(seconds=settings.send_grace_s)
        self.due_backlog = False
        """Whether the last `run_due` found a full batch due (more may be waiting)."""
        self.stats: collections.Counter[str] = collections.Counter()
        """offers_received, revocations_received, contacts_applied, contacts_erased,
        emails_<state> (sent/written/bounced/suppressed/failed), suppressed_<reason>,
        deferred_grace, deferred_quiet_hours, waiting_contact, reissued, revoked_before_send,
        revoked_before_offer, revoked_after_send, revoked_after_final, send_retries,
        send_budget_waits (a send waited for the next window of the shared budget),
        unsubscribed, undecryptable (a sealed contact field whose key is gone: the customer
        was erased); the edge adds `ignored` (offer events other than issued and revoked) and
        dead_lettered_<reason>."""
        self._opener = Opener(self.vault, self.stats)

    # ------------------------------------------------------------ Kafka batches

    async def handle(self, batch: Sequence[Received[Any]]) -> Handled:
        """Apply a batch of issued and revoked offers and contact updates; returns the outcomes
        to publish.

        Returns only once every delivery of the batch is durable in a final or waiting state.
        """
        batch = await self._opened(batch)
        updates: list[ContactUpdate] = []
        offers: list[OfferChange] = []
        for item in batch:
            match item.event:
                case OfferIssued() | OfferRevoked() as change:
                    offers.append(change)
                case (str() as customer_id, ContactChanged() | None as change):
                    updates.append((customer_id, change))
                case other:
                    raise TypeError(f"not a notifier event: {type(other).__name__}")
        if not updates and not offers:
            return Handled()
        revocations = sum(isinstance(o, OfferRevoked) for o in offers)
        self.stats["offers_received"] += len(offers) - revocations
        self.stats["revocations_received"] += revocations
        async with self._lock:
            return Handled(outgoing=await self._fold(updates, offers))

    async def _opened(self, batch: Sequence[Received[Any]]) -> list[Received[Any]]:
        """The batch with the sealed fields of its contacts opened (one vault read)."""

        def pending(event: Any) -> Pending[ContactChanged] | None:
            if isinstance(event, tuple) and isinstance(event[1], Pending):
                return event[1]
            return None

        sealed = [p for r in batch if (p := pending(r.event)) is not None]
        if not sealed:
            return list(batch)
        opened = iter(await self._opener.open(sealed))
        return [
            Received((r.event[0], next(opened)), r.source) if pending(r.event) else r for r in batch
        ]

    async def _fold(
        self, updates: Sequence[ContactUpdate], offers: Sequence[OfferChange]
    ) -> list[Outgoing]:
        """Plan, persist and send a batch (the lock is held)."""
        repo = self.repository
        changed = {customer_id for customer_id, _ in updates}
        issued = {o.customer_id for o in offers if isinstance(o, OfferIssued)}
        contacts = await repo.get_contacts(changed | issued)
        known = await repo.get_deliveries({o.offer_id for o in offers}) if offers else {}
        open_ = await repo.open_deliveries(changed) if changed else []
        plan = plan_batch(
            contact_updates=updates,
            offers=offers,
            contacts=contacts,
            deliveries=known,
            open_deliveries=open_,
            now=self.clock(),
            quiet=self.quiet,
            grace=self.grace,
        )
        self.stats["contacts_applied"] += len(plan.contacts)
        self.stats["contacts_erased"] += len(plan.erased)
        current = {**contacts, **plan.contacts}
        for customer_id in plan.erased:
            current.pop(customer_id, None)
        # An erased customer's deliveries keep no content and no link: erased now (the
        # tombstone on crm.contacts), or named by offers' revocations for the erasure.
        forgotten = plan.erased | {
            o.customer_id for o in offers if isinstance(o, OfferRevoked) and o.reason == "erased"
        }
        outgoing = await self._carry_out(plan, current, forgotten=forgotten)
        outgoing.extend(self._outcome(d) for d in plan.replayed)
        return outgoing

    # ------------------------------------------------------------ the unsubscribe link

    async def opt_out(self, customer_id: str, now: dt.datetime) -> list[Outgoing]:
        """Withdraw a customer's consent at once; returns what to publish.

        The withdrawal is applied to the contact exactly as a `ContactChanged` from profiles
        would be (queued e-mails are cancelled by the same code path), and a `ConsentChanged`
        on `crm.events` tells profiles and offers. A customer who has already opted out (the
        same link clicked again, or replayed) changes nothing and publishes nothing; an
        unknown customer is remembered as opted out (no address, no name), so that holds for
        them too.
        """
        outgoing: list[Outgoing] = []
        async with self._lock:
            contact = (await self.repository.get_contacts([customer_id])).get(customer_id)
            if contact is not None and not contact.marketing_consent:
                self.stats["unsubscribed_again"] += 1
                return []
            change = ContactChanged(
                customer_id=customer_id,
                email=contact.email if contact else None,
                first_name=contact.first_name if contact else None,
                marketing_consent=False,
                home_store_id=contact.home_store_id if contact else None,
                changed_at=now,
            )
            outgoing.extend(await self._fold([(customer_id, change)], []))
        consent = ConsentChanged(
            event_id=f"unsubscribe:{customer_id}:{now.isoformat()}",
            occurred_at=now,
            customer_id=customer_id,
            marketing_consent=False,
            source="unsubscribe_link",
            channel="email",
        )
        outgoing.append((EVENTS, customer_id.encode(), dump(consent)))
        self.stats["unsubscribed"] += 1
        log.info("unsubscribed", customer_id=customer_id)
        return outgoing

    # ------------------------------------------------------------ bounces after the fact

    async def record_bounce(self, report: DeliveryReport) -> tuple[BounceResult, list[Outgoing]]:
        """Apply a delivery status notification; returns what it did and what to publish.

        A permanent failure (`Action: failed`, 5.x.x) of a sent e-mail makes its delivery
        `bounced` (published on `crm.deliveries` like any outcome) and marks the address
        bounced: no more e-mail to it until the customer's address changes. A delayed (4.x.x)
        report, a report of another message, or one seen before changes nothing.
        """
        failed = report.failed
        if not failed:
            self.stats["bounce_reports_not_failed"] += 1
            return "not_failed", []
        offer_id = offer_id_of_message_id(report.message_id) if report.message_id else None
        if offer_id is None:
            self.stats["bounce_reports_unknown"] += 1
            return "unknown_message", []
        async with self._lock:
            delivery = (await self.repository.get_deliveries([offer_id])).get(offer_id)
            if delivery is None or delivery.state not in {"sent", "bounced"}:
                self.stats["bounce_reports_unknown"] += 1
                return "unknown_message", []
            if delivery.offer is None:
                # The customer was erased since: nothing is linked to them any more.
                self.stats["bounce_reports_erased"] += 1
                return "unknown_message", []
            if delivery.state == "bounced":
                # Reported again (a retry after a failed publish): the same outcome again.
                return "already_bounced", [self._outcome(delivery)]
            bounced = bounce_delivery(delivery, failed[0].status, self.clock())
            await self.repository.apply(
                StoreChanges(
                    deliveries=[bounced],
                    bounced=[(delivery.customer_id, r.address) for r in failed],
                )
            )
        self.stats["emails_bounced"] += 1
        self.stats["bounce_reports_applied"] += 1
        log.info("email_bounced_later", offer_id=offer_id, reason=bounced.last_error)
        return "bounced", [self._outcome(bounced)]

    # ------------------------------------------------------------ quiet hours ended

    async def run_due(self) -> list[Outgoing]:
        """Send the deliveries whose grace or quiet hours are over (and any left `sending` by a
        crash)."""
        budget = self._budget_in_use()
        async with self._lock:
            repo = self.repository
            now = self.clock()
            limit = self.settings.due_batch_size
            # Claimed, not just read: with several instances on one store, each due delivery
            # goes to one poller, and a send in flight is not taken for a crash's leftover.
            # The claim spends the shared budget: at most what is left of this window.
            due = await repo.claim_due(
                now, limit, dt.timedelta(seconds=self.settings.sending_lease_s), budget
            )
            self.due_backlog = len(due) >= limit
            spent = (
                budget is not None
                and len(due) < limit
                and await repo.send_budget_left(now, budget) == 0
            )
            outgoing: list[Outgoing] = []
            if due:
                contacts = await repo.get_contacts({d.customer_id for d in due})
                plan = redecide_due(due, contacts, now=now, quiet=self.quiet)
                self._prepaid = len(due)
                try:
                    outgoing = await self._carry_out(plan, contacts)
                finally:
                    self._prepaid = 0
        if spent and budget is not None:
            # The window's budget is gone (here or in other instances): poll again as the
            # next window opens rather than a whole poll interval later.
            self.due_backlog = True
            await self._sleep(self._until_next_window(budget))
        return outgoing

    def _budget_in_use(self) -> SendBudget | None:
        """The shared budget, for a transport it applies to (SMTP, not the outbox)."""
        return self.budget if self.transport.rate_limited else None

    def _until_next_window(self, budget: SendBudget) -> float:
        now = self.clock()
        return max(0.01, (budget.next_window(now) - now).total_seconds())

    async def _spend_budget(self) -> None:
        """One unit of the shared budget for the send about to start: one the delivery was
        claimed with, or one taken now, waiting for the next window while it is spent."""
        budget = self._budget_in_use()
        if budget is None:
            return
        if self._prepaid > 0:
            self._prepaid -= 1
            return
        while not await self.repository.take_send_budget(self.clock(), 1, budget):
            self.stats["send_budget_waits"] += 1
            await self._sleep(self._until_next_window(budget))

    # ------------------------------------------------------------ persist, send, report

    async def _carry_out(
        self, plan: Plan, contacts: dict[str, Contact], *, forgotten: Collection[str] = ()
    ) -> list[Outgoing]:
        await self.repository.apply(
            StoreChanges(
                contacts=list(plan.contacts.values()),
                erased=sorted(plan.erased),
                forgotten=sorted(forgotten),
                deliveries=[*plan.deliveries.values(), *plan.updated.values()],
            )
        )
        self.stats.update(plan.counts)
        for revoked in plan.revoked_after_send:
            # The e-mail went out before the correction: nothing to undo here, but the
            # customer holds a code that no longer redeems.
            log.warning(
                "offer_revoked_after_send",
                offer_id=revoked.offer_id,
                customer_id=revoked.customer_id,
                kind=revoked.kind,
                reason=revoked.reason,
            )
        finals = list(plan.outcomes)
        to_send = [plan.deliveries[offer_id] for offer_id in plan.to_send]
        if to_send:
            finals.extend(await self._send(to_send, contacts))
        for delivery in finals:
            self.stats[f"emails_{delivery.state}"] += 1
            if delivery.state == "suppressed":
                self.stats[f"suppressed_{delivery.last_error}"] += 1
        return [self._outcome(d) for d in finals]

    def _outcome(self, delivery: Delivery) -> Outgoing:
        return (DELIVERIES, delivery.customer_id.encode(), dump(outcome_event(delivery)))

    async def _send(
        self, deliveries: list[Delivery], contacts: dict[str, Contact]
    ) -> list[Delivery]:
        """Send every `sending` delivery, retrying temporary failures with backoff.

        SMTP outcomes are persisted one by one (the duplicate window is one message);
        outbox outcomes once at the end (re-writing a file is harmless).
        """
        transport = self.transport
        per_message = not transport.idempotent
        finals: list[Delivery] = []
        unsaved: list[Delivery] = []
        bounced: list[tuple[str, str]] = []
        bounced_customers: set[str] = set()
        remaining = deliveries
        retry_round = 0
        try:
            while remaining:
                retry: list[Delivery] = []
                for delivery in remaining:
                    final, address = await self._send_one(delivery, contacts, bounced_customers)
                    if final is None:
                        retry.append(replace(delivery, attempts=delivery.attempts + 1))
                        continue
                    finals.append(final)
                    newly_bounced: list[tuple[str, str]] = []
                    if final.state == "bounced" and address is not None:
                        newly_bounced = [(final.customer_id, address)]
                        bounced.extend(newly_bounced)
                        bounced_customers.add(final.customer_id)
                    if per_message:
                        await self.repository.apply(
                            StoreChanges(deliveries=[final], bounced=newly_bounced)
                        )
                    else:
                        unsaved.append(final)
                remaining = retry
                if remaining:
                    retry_round += 1
                    self.stats["send_retries"] += len(remaining)
                    delay = backoff_delay(
                        retry_round,
                        base=self.settings.send_backoff_base_s,
                        cap=self.settings.send_backoff_max_s,
                        jitter=self._jitter(),
                    )
                    log.info("send_retry_scheduled", deliveries=len(remaining), delay_s=delay)
                    await self._sleep(delay)
        finally:
            await transport.close()
        if unsaved:
            await self.repository.apply(StoreChanges(deliveries=unsaved, bounced=bounced))
        return finals

    async def _send_one(
        self, delivery: Delivery, contacts: dict[str, Contact], bounced_customers: set[str]
    ) -> tuple[Delivery | None, str | None]:
        """(final delivery, address used), or (None, None) to retry it."""
        now = self.clock()
        attempts = delivery.attempts + 1
        contact = contacts.get(delivery.customer_id)
        if delivery.customer_id in bounced_customers:
            return replace(delivery, state="suppressed", last_error=BOUNCED, updated_at=now), None
        if contact is None or contact.email is None or delivery.offer is None:
            return replace(
                delivery, state="failed", last_error="missing_contact", updated_at=now
            ), None
        try:
            message = self.renderer.render(delivery.offer, contact, now=now)
        except (jinja2.TemplateError, ValueError) as exc:
            log.error("render_failed", offer_id=delivery.offer_id, error=type(exc).__name__)
            return replace(
                delivery, state="failed", last_error="render_error", updated_at=now
            ), None
        if self.transport.rate_limited:
            wait = self._bucket.reserve(self._monotonic())
            if wait > 0:
                await self._sleep(wait)
            await self._spend_budget()
        try:
            await self.transport.send(message, name=safe_offer_token(delivery.offer_id))
        except PermanentFailure as exc:
            log.info("email_bounced", offer_id=delivery.offer_id, reason=exc.reason)
            state = replace(
                delivery,
                state="bounced",
                attempts=attempts,
                last_error=exc.reason,
                updated_at=self.clock(),
            )
            return state, contact.email
        except TemporaryFailure as exc:
            log.info(
                "email_deferred", offer_id=delivery.offer_id, reason=exc.reason, attempt=attempts
            )
            if attempts >= self.settings.send_max_attempts:
                failed = replace(
                    delivery,
                    state="failed",
                    attempts=attempts,
                    last_error=exc.reason,
                    updated_at=self.clock(),
                )
                return failed, None
            return None, None
        done: DeliveryStatus = "written" if self.transport.idempotent else "sent"
        log.debug("email_" + done, offer_id=delivery.offer_id, customer_id=delivery.customer_id)
        sent_at = self.clock()
        offer = delivery.offer
        observe_freshness("email_sent", trigger_type(offer), offer.issued_at, sent_at)
        return replace(
            delivery, state=done, attempts=attempts, last_error=None, updated_at=sent_at
        ), contact.email
