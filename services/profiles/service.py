"""The profiles service layer: a batch of `crm.events` records in, messages to publish out.

Decode every record (undecodable ones become dead letters), load the batch's documents with
one `get_many` (plus one per level of aliases), fold the events in order with the pure
domain, save the changed documents with one `save_many`, and return what to publish.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import ConsumerRecord
from pydantic import ValidationError

from services.profiles.domain import CustomerProfile, FoldOptions, Outcome, ProfileBook
from services.profiles.store import ProfilesRepository
from shared.events import NORMALIZED_EVENT, NormalizedEvent
from shared.kafka import Outgoing, dead_letter, dead_letter_message, dump
from shared.logging import get_logger
from shared.topics import CONTACTS, PROFILES_CHANGED

SERVICE = "profiles"
MAX_ALIAS_DEPTH = 8
"""Levels of aliases followed when loading (a merged profile merged again, ...)."""

log = get_logger(__name__)


@dataclass(slots=True)
class Folded:
    """A batch applied in memory: what to publish and which profiles to save."""

    outgoing: list[Outgoing]
    changed: list[CustomerProfile]


class ProfilesService:
    """Folds batches of normalized events into customer profiles.

    `stats` counts what it did: `events_applied`, `applied_<event type>`, `duplicates`,
    `anonymous_purchases`, `ignored_erased`, `merges`, `dead_lettered_<reason>`,
    `profiles_saved`, `profile_changed_published`, `contact_changed_published`,
    `contact_tombstones_published`, `batches`.
    """

    def __init__(
        self, repository: ProfilesRepository | None = None, *, options: FoldOptions | None = None
    ) -> None:
        self._repository = repository
        self.options = options or FoldOptions()
        self.stats: collections.Counter[str] = collections.Counter()

    @property
    def repository(self) -> ProfilesRepository:
        if self._repository is None:
            raise RuntimeError("the profiles repository is not open yet")
        return self._repository

    @repository.setter
    def repository(self, repository: ProfilesRepository | None) -> None:
        self._repository = repository

    def _decode(
        self, records: Sequence[ConsumerRecord[Any, Any]], outgoing: list[Outgoing]
    ) -> list[tuple[ConsumerRecord[Any, Any], NormalizedEvent]]:
        events = []
        for record in records:
            value = record.value
            try:
                if not value:
                    raise ValueError("empty message")
                event = NORMALIZED_EVENT.validate_json(value)
            except (ValidationError, ValueError) as exc:
                detail = (
                    "; ".join(
                        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
                    )
                    if isinstance(exc, ValidationError)
                    else str(exc)
                )
                letter = dead_letter(
                    service=SERVICE, record=record, reason="invalid_event", detail=detail
                )
                outgoing.append(dead_letter_message(letter))
                self.stats["dead_lettered_invalid_event"] += 1
                log.warning(
                    "event_dead_lettered",
                    reason="invalid_event",
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                )
                continue
            events.append((record, event))
        return events

    async def _load(self, book: ProfileBook, ids: set[str]) -> None:
        for _ in range(MAX_ALIAS_DEPTH):
            if not ids:
                return
            book.add(ids, await self.repository.get_many(ids))
            ids = book.needs()

    def _publish(self, outcome: Outcome, outgoing: list[Outgoing]) -> None:
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
                outgoing.append((CONTACTS, customer_id.encode(), dump(contact)))
                self.stats["contact_changed_published"] += 1

    async def handle(self, records: Sequence[ConsumerRecord[Any, Any]]) -> list[Outgoing]:
        """Fold and save a batch at once; returns what is to be published (tests, tools)."""
        folded = await self.fold(records)
        await self.save(folded)
        return folded.outgoing

    async def fold(self, records: Sequence[ConsumerRecord[Any, Any]]) -> Folded:
        """Apply a batch in memory; nothing is saved until `save`.

        The app publishes first and saves after: a crash in between re-reads the batch, whose
        events are then not yet in the profiles' recent ids, so they are applied and published
        again identically (downstream is idempotent) instead of being lost as duplicates.
        """
        outgoing: list[Outgoing] = []
        events = self._decode(records, outgoing)
        book = ProfileBook(self.options)
        await self._load(book, book.ids_of(event for _, event in events))
        for record, event in events:
            outcome = book.apply(event)
            status = outcome.status
            if status == "applied":
                self.stats["events_applied"] += 1
                self.stats[f"applied_{event.type}"] += 1
                if outcome.merged:
                    self.stats["merges"] += 1
                self._publish(outcome, outgoing)
            elif status == "duplicate":
                self.stats["duplicates"] += 1
            elif status == "anonymous":
                self.stats["anonymous_purchases"] += 1
            else:
                self.stats["ignored_erased"] += 1
                log.debug(
                    "event_ignored_erased",
                    event_id=event.event_id,
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                )
        return Folded(outgoing=outgoing, changed=book.changed())

    async def save(self, folded: Folded) -> None:
        """Persist the profiles a batch changed (one repository call)."""
        await self.repository.save_many(folded.changed)
        self.stats["profiles_saved"] += len(folded.changed)
        self.stats["batches"] += 1
