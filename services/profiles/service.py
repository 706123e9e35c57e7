"""The profiles service layer: a batch of events in, the profile changes to publish and to save.

Load the batch's documents with one `get_many` (plus one per level of aliases), fold the
events with the pure domain (in the order they came: the profiles do not depend on it, see
`services.profiles.domain`), and hand back what to publish and the one `save_many` that
persists the changed documents; offer events of `crm.offers` update the customers' coupons
in the same save.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

from services.profiles.domain import FoldOptions, Outcome, ProfileBook, fold_coupons
from services.profiles.store import ProfilesRepository
from shared.edge import Outgoing, Received, dump
from shared.skeleton import Handled
from shared.topics import CONTACTS, OFFERS, PROFILES_CHANGED

MAX_ALIAS_DEPTH = 8
"""Levels of aliases followed when loading (a merged profile merged again, ...)."""


class ProfilesService:
    """Folds batches of normalized events into customer profiles.

    `stats` counts what it did: `events_applied`, `applied_<event type>`, `duplicates`,
    `anonymous_purchases`, `ignored_erased`, `merges`, `dead_lettered_<reason>`,
    `profiles_saved`, `coupons_saved`, `profile_changed_published`,
    `contact_changed_published`, `contact_tombstones_published`, `batches`.
    """

    def __init__(
        self, repository: ProfilesRepository, *, options: FoldOptions | None = None
    ) -> None:
        self.repository = repository
        self.options = options or FoldOptions()
        self.stats: collections.Counter[str] = collections.Counter()

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

    async def handle(self, batch: Sequence[Received[Any]]) -> Handled:
        """Apply a batch in memory; nothing is saved until `Handled.save`.

        The app publishes first and saves after: a crash in between re-reads the batch, whose
        events are then not yet in the profiles' recent ids, so they are applied and published
        again identically (downstream is idempotent) instead of being lost as duplicates.
        """
        outgoing: list[Outgoing] = []
        offer_events = [r.event for r in batch if r.source.topic == OFFERS]
        events = [r for r in batch if r.source.topic != OFFERS]
        book = ProfileBook(self.options)
        await self._load(book, book.ids_of(r.event for r in events))
        for item in events:
            event = item.event
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
                item.log.debug("event_ignored_erased")
        # A rejection of an unknown code names no offer.
        offer_ids = {e.offer_id for e in offer_events if isinstance(e.offer_id, str)}
        known = await self.repository.get_coupons(offer_ids)
        coupons = list(fold_coupons(known, offer_events).values())
        changed = book.changed()

        async def save() -> None:
            await self.repository.save_many(changed, coupons)
            self.stats["profiles_saved"] += len(changed)
            self.stats["coupons_saved"] += len(coupons)
            self.stats["batches"] += 1

        return Handled(outgoing=outgoing, save=save)
