"""The profiles service layer: a batch of events in, the profile changes to publish and to save.

Load the batch's documents with one `get_many` (plus one per level of aliases), fold the
events with the pure domain (in the order they came: the profiles do not depend on it, see
`services.profiles.domain`), and hand back what to publish and the one `save_many` that
persists the changed documents; offer events of `crm.offers` update the customers' coupons
in the same save.

Segments (`services.profiles.segments`) are evaluated in the same batch: a new `crm.clock` day
first (every live profile, page by page, as of that day), then every profile the batch changed
(as of the day of its latest event); the entries and exits go out on `crm.segments` with the
batch, and the memberships are saved in its `save_many`. The segments API evaluates a new
definition for every profile through `sweep`, which publishes and saves page by page; a lock
keeps a sweep's page and a batch (from its evaluation to its save) from interleaving, so the
memberships one of them reads are never about to be overwritten by the other.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Sequence
from typing import Any

from services.profiles.domain import (
    CustomerProfile,
    FoldOptions,
    Outcome,
    ProfileBook,
    fold_coupons,
)
from services.profiles.segments import (
    Definition,
    Memberships,
    catalogue,
    clock_cause,
    day_start,
    evaluate,
    evaluation_day,
    is_reserved,
    local_day,
    matches,
    newer,
    unanswerable,
)
from services.profiles.store import MembershipWrites, ProfilesRepository
from services.profiles.timeline import (
    TimelineEntry,
    entry_of_delivery,
    entry_of_event,
    entry_of_offer,
)
from shared.campaigns import (
    SegmentDefined,
    SegmentDefinition,
    SegmentMembershipChanged,
    SegmentRule,
)
from shared.edge import Outgoing, Received, dump
from shared.events import ClockTicked, ContactChanged, CustomerErased, DeliveryRecorded, NoteAdded
from shared.logging import get_logger
from shared.skeleton import Handled
from shared.topics import CLOCK, CONTACTS, DELIVERIES, OFFERS, PROFILES_CHANGED, SEGMENTS
from shared.vault import KeyReader, NoKeys, Opener, Pending, seal, without_personal_data

log = get_logger(__name__)

MAX_ALIAS_DEPTH = 8
"""Levels of aliases followed when loading (a merged profile merged again, ...)."""
PAGE_SIZE = 500
"""Profiles read at a time when every profile is evaluated (a clock day, a new segment)."""
LOCK_TIMEOUT_S = 60.0
"""How long a sweep waits for a batch in flight before giving up (the API answers 503)."""

Publish = Callable[[Sequence[Outgoing]], Awaitable[None]]
Clock = Callable[[], dt.datetime]
_Patch = dict[str, dict[str, dt.datetime | None]]
"""Customer -> segment -> time entered (None: left): memberships changed, not saved yet."""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _patched(stored: Memberships, patch: dict[str, dt.datetime | None] | None) -> Memberships:
    """A customer's memberships as stored, with the changes not saved yet applied."""
    if not patch:
        return stored
    current = dict(stored)
    for name, at in patch.items():
        if at is None:
            current.pop(name, None)
        else:
            current[name] = at
    return current


def _record(patch: _Patch, customer_id: str, before: Memberships, after: Memberships) -> None:
    changed = {
        name: after.get(name)
        for name in before.keys() | after.keys()
        if before.get(name) != after.get(name)
    }
    if changed:
        patch.setdefault(customer_id, {}).update(changed)


def _writes(patch: _Patch) -> MembershipWrites:
    return {(name, cid): at for cid, names in patch.items() for name, at in names.items()}


def _offer_time(event: Any) -> dt.datetime:
    """When an offer event happened, for the erasure check of its timeline entry."""
    for name in ("issued_at", "redeemed_at", "revoked_at", "rejected_at", "decided_at"):
        at = getattr(event, name, None)
        if isinstance(at, dt.datetime):
            return at
    day = getattr(event, "expired_on", None)
    if isinstance(day, dt.date):
        return dt.datetime.combine(day, dt.time(), dt.UTC)
    return _utcnow()


class Busy(RuntimeError):
    """A sweep waited too long for the batch in flight."""


class ProfilesService:
    """Folds batches of normalized events into customer profiles, and evaluates segments.

    `stats` counts what it did: `events_applied`, `applied_<event type>`, `duplicates`,
    `anonymous_purchases`, `ignored_erased`, `merges`, `dead_lettered_<reason>`,
    `profiles_saved`, `coupons_saved`, `profile_changed_published`,
    `contact_changed_published`, `contact_tombstones_published`, `batches`,
    `segment_entered_published`, `segment_exited_published`, `clock_days_evaluated`,
    `clock_days_repeated` (a day already evaluated, or older), `clock_days_future` (more than
    a day ahead of the wall clock: ignored), `segment_definitions_applied`,
    `segment_definitions_reserved` (a record naming a built-in segment: ignored),
    `undecryptable` (a sealed field whose key is gone: the customer was erased),
    `contacts_without_key` (a contact published without its personal fields: the customer
    has no data key, see `shared.vault`).

    `zone` is the calendar's time zone (days of recency, clock days); `clock` the wall clock
    (the API's "now", the check of clock days). `definitions_ready`, when set, is awaited
    before any batch: the running service sets it once `crm.segment-definitions` is read up to
    where it was at start (tests and tools without the topic pass none).
    """

    def __init__(
        self,
        repository: ProfilesRepository,
        *,
        options: FoldOptions | None = None,
        zone: dt.tzinfo = dt.UTC,
        clock: Clock = _utcnow,
        page_size: int = PAGE_SIZE,
        definitions_ready: asyncio.Event | None = None,
        vault: KeyReader | None = None,
    ) -> None:
        self.repository = repository
        self.vault: KeyReader = vault or NoKeys()
        self.options = options or FoldOptions()
        self.zone = zone
        self.clock = clock
        self.page_size = page_size
        self.definitions_ready = definitions_ready
        self.stats: collections.Counter[str] = collections.Counter()
        self._opener = Opener(self.vault, self.stats)
        self._defined: dict[str, SegmentDefined] = {}
        self._defined_loaded = False
        self._lock = asyncio.Lock()
        self._holder: int | None = None
        self._batches = 0

    async def _load(self, book: ProfileBook, ids: set[str]) -> None:
        for _ in range(MAX_ALIAS_DEPTH):
            if not ids:
                return
            book.add(ids, await self.repository.get_many(ids))
            ids = book.needs()

    # ------------------------------------------------------------ segment definitions

    async def _load_definitions(self) -> None:
        if not self._defined_loaded:
            for record in await self.repository.definitions():
                if newer(record, self._defined.get(record.name)):
                    self._defined[record.name] = record
            self._defined_loaded = True

    async def apply_definitions(self, records: Sequence[SegmentDefined]) -> list[SegmentDefined]:
        """Take segment definitions in (from `crm.segment-definitions`, or the API of this
        instance): per name the newer one is kept, in memory and in the store; returns those
        that changed. A record naming a built-in segment is ignored."""
        await self._load_definitions()
        changed: dict[str, SegmentDefined] = {}
        for record in records:
            if is_reserved(record.name):
                self.stats["segment_definitions_reserved"] += 1
                log.warning("segment_definition_reserved", segment=record.name)
                continue
            if newer(record, changed.get(record.name) or self._defined.get(record.name)):
                changed[record.name] = record
        if changed:
            # Stored first: were the store down, the same records are applied again.
            await self.repository.save_definitions(list(changed.values()))
            self._defined.update(changed)
            self.stats["segment_definitions_applied"] += len(changed)
            log.info(
                "segment_definitions_applied",
                segments=sorted(changed),
                versions=[changed[n].version for n in sorted(changed)],
            )
        return list(changed.values())

    async def segments(self) -> dict[str, Definition]:
        """Every segment, built-in and defined, by name."""
        await self._load_definitions()
        return catalogue(self._defined.values())

    async def next_definition(
        self, definition: SegmentDefinition, *, by: str, at: dt.datetime
    ) -> SegmentDefined:
        """The record that saves `definition`: version 1, or one more than the current one."""
        await self._load_definitions()
        current = self._defined.get(definition.name)
        return SegmentDefined(
            name=definition.name,
            description=definition.description,
            rule=definition.rule,
            version=current.version + 1 if current is not None else 1,
            defined_at=at,
            defined_by=by,
        )

    def unanswerable(self, rule: SegmentRule) -> list[tuple[tuple[str | int, ...], str]]:
        """The predicates of a rule that profiles cannot answer exactly here."""
        return unanswerable(rule, zone=self.zone, history_days=self.options.history_days)

    # ------------------------------------------------------------ evaluation

    async def today(self) -> dt.date:
        """The day the API evaluates as of: today on the wall clock, or the latest clock day
        evaluated when that is later."""
        wall = local_day(self.clock(), self.zone)
        last = await self.repository.last_clock_day()
        return max(wall, last) if last is not None else wall

    async def _pages(self) -> AsyncIterator[list[CustomerProfile]]:
        """Every live profile, a page at a time (never all in memory)."""
        after: str | None = None
        while True:
            page = await self.repository.live_profiles(after=after, limit=self.page_size)
            if page:
                yield page
            if len(page) < self.page_size:
                return
            after = page[-1].customer_id

    def _evaluate(
        self,
        segments: dict[str, Definition],
        profile: CustomerProfile,
        before: Memberships,
        *,
        day: dt.date,
        at: dt.datetime,
        cause: str,
        patch: _Patch,
        outgoing: list[Outgoing],
    ) -> None:
        result = evaluate(
            segments,
            profile,
            before,
            today=evaluation_day(profile, day, self.zone),
            at=at,
            cause_event_id=cause,
            zone=self.zone,
            history_days=self.options.history_days,
        )
        _record(patch, profile.customer_id, before, result.memberships)
        outgoing.extend(self._messages(result.changes))

    def _messages(self, changes: Iterable[SegmentMembershipChanged]) -> list[Outgoing]:
        out: list[Outgoing] = []
        for change in changes:
            out.append((SEGMENTS, change.customer_id.encode(), dump(change)))
            self.stats[f"{change.type}_published"] += 1
        return out

    async def _clock_day(
        self, segments: dict[str, Definition], day: dt.date, patch: _Patch
    ) -> list[Outgoing]:
        """Every live profile evaluated as of a new clock day (recency moves with time)."""
        at, cause = day_start(day, self.zone), clock_cause(day)
        outgoing: list[Outgoing] = []
        profiles = 0
        async for page in self._pages():
            stored = await self.repository.memberships_of([p.customer_id for p in page])
            for profile in page:
                cid = profile.customer_id
                before = _patched(stored.get(cid, {}), patch.get(cid))
                self._evaluate(
                    segments,
                    profile,
                    before,
                    day=day,
                    at=at,
                    cause=cause,
                    patch=patch,
                    outgoing=outgoing,
                )
            profiles += len(page)
        self.stats["clock_days_evaluated"] += 1
        log.info(
            "clock_day_evaluated", day=day.isoformat(), profiles=profiles, changes=len(outgoing)
        )
        return outgoing

    def _new_days(self, ticks: Sequence[ClockTicked], last: dt.date | None) -> list[dt.date]:
        """The clock days not evaluated yet, oldest first; a day more than a day ahead of the
        wall clock is ignored (offers, whose topic it is, dead-letters it)."""
        horizon = local_day(self.clock(), self.zone) + dt.timedelta(days=1)
        days: set[dt.date] = set()
        for tick in ticks:
            if (last is not None and tick.date <= last) or tick.date in days:
                self.stats["clock_days_repeated"] += 1
            elif tick.date > horizon:
                self.stats["clock_days_future"] += 1
                log.warning("clock_day_ignored_future", day=tick.date.isoformat())
            else:
                days.add(tick.date)
        return sorted(days)

    async def _evaluate_batch(
        self,
        changed: Sequence[CustomerProfile],
        causes: dict[str, tuple[dt.datetime, str]],
        ticks: Sequence[ClockTicked],
    ) -> tuple[list[Outgoing], MembershipWrites, dt.date | None]:
        """A batch's segment work: new clock days, then the profiles it changed; returns what
        to publish, the memberships to save and the clock day to record."""
        segments = await self.segments()
        last = await self.repository.last_clock_day()
        patch: _Patch = {}
        outgoing: list[Outgoing] = []
        days = self._new_days(ticks, last)
        for day in days:
            outgoing.extend(await self._clock_day(segments, day, patch))
        if days:
            last = days[-1]
        stored = await self.repository.memberships_of([p.customer_id for p in changed])
        for profile in changed:
            cid = profile.customer_id
            cause = causes.get(cid)
            if cause is None:  # an alias of a customer never stored: it was in no segment
                continue
            at, event_id = cause
            day = local_day(at, self.zone)
            before = _patched(stored.get(cid, {}), patch.get(cid))
            self._evaluate(
                segments,
                profile,
                before,
                day=max(day, last) if last is not None else day,
                at=at,
                cause=event_id,
                patch=patch,
                outgoing=outgoing,
            )
        return outgoing, _writes(patch), days[-1] if days else None

    async def sweep(
        self, names: Collection[str], *, at: dt.datetime, cause: str, publish: Publish
    ) -> int:
        """Evaluate these segments for every live profile now (a segment just defined): page
        by page, publish the entries and exits, then save the memberships (the service's
        order). Returns the profiles evaluated."""
        segments = {n: d for n, d in (await self.segments()).items() if n in names}
        day = await self.today()
        after: str | None = None
        profiles = 0
        while True:
            async with self._locked():
                page = await self.repository.live_profiles(after=after, limit=self.page_size)
                stored = await self.repository.memberships_of([p.customer_id for p in page])
                patch: _Patch = {}
                outgoing: list[Outgoing] = []
                for profile in page:
                    before = stored.get(profile.customer_id, {})
                    self._evaluate(
                        segments,
                        profile,
                        before,
                        day=day,
                        at=at,
                        cause=cause,
                        patch=patch,
                        outgoing=outgoing,
                    )
                if outgoing:
                    await publish(outgoing)
                if patch:
                    await self.repository.save_many([], memberships=_writes(patch))
            profiles += len(page)
            if len(page) < self.page_size:
                break
            after = page[-1].customer_id
        log.info("segments_swept", segments=sorted(segments), profiles=profiles, cause=cause)
        return profiles

    async def preview(self, rule: SegmentRule) -> int:
        """How many live profiles the rule selects now (nothing saved, nothing published)."""
        day = await self.today()
        count = 0
        async for page in self._pages():
            count += sum(
                1
                for p in page
                if matches(
                    rule,
                    p,
                    evaluation_day(p, day, self.zone),
                    zone=self.zone,
                    history_days=self.options.history_days,
                )
            )
        return count

    # ------------------------------------------------------------ the lock

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(LOCK_TIMEOUT_S):
                await self._lock.acquire()
        except TimeoutError:
            raise Busy("a batch is in flight") from None
        try:
            yield
        finally:
            self._lock.release()

    async def _take_lock(self) -> int:
        """Hold the lock from a batch's evaluation to its save. A batch that never reached
        its save (its publishing failed: it is re-read) holds it no longer."""
        if self._holder is not None:
            self._release(self._holder)
        await self._lock.acquire()
        self._batches += 1
        self._holder = self._batches
        return self._holder

    def _release(self, token: int) -> None:
        if self._holder == token:
            self._holder = None
            self._lock.release()

    # ------------------------------------------------------------ batches

    def _publish(
        self, outcome: Outcome, outgoing: list[Outgoing], contacts: list[tuple[int, ContactChanged]]
    ) -> None:
        changes = [outcome.profile_changed, *outcome.also_changed]
        for changed in changes:
            if changed is not None:
                outgoing.append((PROFILES_CHANGED, changed.customer_id.encode(), dump(changed)))
                self.stats["profile_changed_published"] += 1
        for customer_id, contact in outcome.contacts:
            if contact is None:
                outgoing.append((CONTACTS, customer_id.encode(), None))
                self.stats["contact_tombstones_published"] += 1
            else:
                contacts.append((len(outgoing), contact))  # sealed once the keys are read
                outgoing.append((CONTACTS, customer_id.encode(), None))
                self.stats["contact_changed_published"] += 1

    async def _seal_contacts(
        self, outgoing: list[Outgoing], contacts: Sequence[tuple[int, ContactChanged]]
    ) -> None:
        """Seal the batch's contacts with their customers' current keys (one vault read); a
        contact whose customer has no key goes out without its personal fields."""
        if not contacts:
            return
        keys = await self.vault.current({c.customer_id for _, c in contacts})
        for position, contact in contacts:
            key = keys.get(contact.customer_id)
            if key is None:
                contact = without_personal_data(contact).model_copy(
                    update={"personal_withheld": True}
                )
                self.stats["contacts_without_key"] += 1
            topic, record_key, _ = outgoing[position]
            outgoing[position] = (topic, record_key, seal(contact, key))

    async def _opened(self, batch: Sequence[Received[Any]]) -> list[Received[Any]]:
        """The batch with the sealed fields of its events opened (one vault read)."""
        pending = [r.event for r in batch if isinstance(r.event, Pending)]
        if not pending:
            return list(batch)
        opened = iter(await self._opener.open(pending))
        return [
            Received(next(opened), r.source) if isinstance(r.event, Pending) else r for r in batch
        ]

    @staticmethod
    def _add_entry(
        entries: dict[tuple[str, str], TimelineEntry], customer_id: str | None, event: Any
    ) -> None:
        entry = entry_of_event(customer_id, event) if customer_id is not None else None
        if entry is not None:
            entries[(entry.customer_id, entry.entry_id)] = entry

    async def handle(self, batch: Sequence[Received[Any]]) -> Handled:
        """Apply a batch in memory; nothing is saved until `Handled.save`.

        The app publishes first and saves after: a crash in between re-reads the batch, whose
        events are then not yet in the profiles' recent ids, so they are applied and published
        again identically (downstream is idempotent) instead of being lost as duplicates.
        Segments are evaluated only once the definitions are read (`definitions_ready`).
        """
        if self.definitions_ready is not None:
            await self.definitions_ready.wait()
        token = await self._take_lock()
        try:
            return await self._handle(batch, token)
        except BaseException:
            self._release(token)
            raise

    async def _handle(self, batch: Sequence[Received[Any]], token: int) -> Handled:
        batch = await self._opened(batch)
        outgoing: list[Outgoing] = []
        contacts: list[tuple[int, ContactChanged]] = []
        offer_events = [r.event for r in batch if r.source.topic == OFFERS]
        ticks = [r.event for r in batch if r.source.topic == CLOCK]
        events = [r for r in batch if r.source.topic not in (OFFERS, CLOCK, DELIVERIES)]
        # E-mails that bounced (during or after the SMTP conversation): the look-up shows
        # the customer as not reachable.
        bounces = [
            r.event
            for r in batch
            if isinstance(r.event, DeliveryRecorded) and r.event.state == "bounced"
        ]
        deliveries = [r.event for r in batch if isinstance(r.event, DeliveryRecorded)]
        book = ProfileBook(self.options)
        await self._load(
            book,
            book.ids_of(r.event for r in events)
            | {d.customer_id for d in deliveries}
            | {e.customer_id for e in offer_events},
        )
        # The customers' timeline entries (a set: keyed by customer and entry id), and the
        # customers whose entries an erasure deletes.
        entries: dict[tuple[str, str], TimelineEntry] = {}
        wiped: set[str] = set()
        # Per customer, the latest event folded into it: the cause of its segment changes.
        causes: dict[str, tuple[dt.datetime, str]] = {}
        for item in events:
            event = item.event
            if isinstance(event, NoteAdded):
                # A note is the journey's only: it changes no profile.
                self._add_entry(entries, book.accepts(event.customer_id, event.occurred_at), event)
                continue
            if isinstance(event, CustomerErased):
                erased = book.get(book.resolve(event.customer_id))
                gone = {book.resolve(event.customer_id), event.customer_id}
                gone |= set(erased.merged_from) if erased is not None else set()
            outcome = book.apply(event)
            if outcome.status == "applied" and outcome.customer_id is not None:
                if isinstance(event, CustomerErased):
                    wiped |= gone
                    entries = {k: e for k, e in entries.items() if k[0] not in gone}
                else:
                    self._add_entry(entries, outcome.customer_id, event)
            status = outcome.status
            if status == "applied":
                self.stats["events_applied"] += 1
                self.stats[f"applied_{event.type}"] += 1
                if outcome.merged:
                    self.stats["merges"] += 1
                self._publish(outcome, outgoing, contacts)
                stamp = (event.occurred_at, event.event_id)
                for cid in (outcome.customer_id, *(c.customer_id for c in outcome.also_changed)):
                    if cid is not None and (cid not in causes or causes[cid] < stamp):
                        causes[cid] = stamp
            elif status == "duplicate":
                self.stats["duplicates"] += 1
            elif status == "anonymous":
                self.stats["anonymous_purchases"] += 1
            else:
                self.stats["ignored_erased"] += 1
                item.log.debug("event_ignored_erased")
        await self._seal_contacts(outgoing, contacts)
        for offer_event in offer_events:
            target = book.accepts(offer_event.customer_id, _offer_time(offer_event))
            entry = entry_of_offer(target, offer_event) if target is not None else None
            if entry is not None:
                entries[(entry.customer_id, entry.entry_id)] = entry
        for delivery in deliveries:
            target = book.accepts(delivery.customer_id, delivery.recorded_at)
            if target is not None:
                entry = entry_of_delivery(target, delivery)
                entries[(entry.customer_id, entry.entry_id)] = entry
        for bounce in bounces:
            if book.bounce(bounce.customer_id, bounce.recorded_at):
                self.stats["bounces_applied"] += 1
        # A rejection of an unknown code names no offer.
        offer_ids = {e.offer_id for e in offer_events if isinstance(e.offer_id, str)}
        known = await self.repository.get_coupons(offer_ids)
        coupons = list(fold_coupons(known, offer_events).values())
        changed = book.changed()
        memberships: MembershipWrites = {}
        clock_day: dt.date | None = None
        if changed or ticks:
            published, memberships, clock_day = await self._evaluate_batch(changed, causes, ticks)
            outgoing.extend(published)

        timeline = list(entries.values())

        async def save() -> None:
            try:
                # The journey first: its writes are idempotent, and a crash before the profiles
                # are saved re-reads the batch and writes them again.
                if timeline or wiped:
                    await self.repository.save_timeline(timeline, erased=sorted(wiped))
                await self.repository.save_many(
                    changed, coupons, memberships=memberships, clock_day=clock_day
                )
            finally:
                self._release(token)
            self.stats["timeline_entries_saved"] += len(timeline)
            self.stats["profiles_saved"] += len(changed)
            self.stats["coupons_saved"] += len(coupons)
            self.stats["batches"] += 1

        return Handled(outgoing=outgoing, save=save)
