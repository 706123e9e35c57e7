"""Ingest's service layer: a batch of raw events in, normalized events out, then what to record.

The edge has decoded the records; `handle` orders the batch by event time, drops event ids
seen before, resolves cards to customers (one look-up per batch), normalizes with the pure
domain and hands back the events to publish, the events it rejected, and the `save` that
records the event keys and card links once the events are published.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from services.ingest.domain import (
    LinkRequest,
    RawEvent,
    normalize_checkout,
    normalize_customer_event,
    normalize_interaction,
    parse_time,
)
from services.ingest.store import IngestRepository
from shared.edge import Outgoing, Received, Source, dump
from shared.errors import Rejected
from shared.events import CardLinked, NormalizedEvent, PurchaseRecorded
from shared.privacy import InvalidCardNumber, card_id, customer_id_for_card
from shared.raw import RawCheckout, RawCustomerEvent, RawInteraction
from shared.settings import CalendarSettings
from shared.skeleton import Handled
from shared.topics import EVENTS

_LATEST = dt.datetime.max.replace(tzinfo=dt.UTC)


@dataclass(slots=True)
class _Batch:
    """What a batch produced; `keys` and `links` are recorded only after publishing."""

    outgoing: list[Outgoing] = field(default_factory=list)
    rejected: list[tuple[Source, Rejected]] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    links: dict[str, str] = field(default_factory=dict)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key(item: Received[RawEvent]) -> str:
    """An event's duplicate key: its id on its raw topic."""
    return f"{item.source.topic}:{item.event.event_id}"


class IngestService:
    """Validates, normalizes, pseudonymizes and de-duplicates raw events, per batch.

    `stats` counts what it did: `duplicates`, `anonymous_interactions`,
    `normalized_<event type>`, and (counted by the edge) `dead_lettered_<reason>`.
    """

    def __init__(
        self,
        repository: IngestRepository,
        *,
        card_key: bytes,
        calendar: CalendarSettings,
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        self.repository = repository
        self._key = card_key
        self._calendar = calendar
        self._clock = clock
        self.stats: Counter[str] = Counter()

    def _cards_in(self, raw: RawEvent) -> list[str]:
        numbers: list[str | None] = [raw.card_number]
        if isinstance(raw, RawCustomerEvent):
            numbers.append(raw.other_card_number)
        cards = []
        for number in numbers:
            if number:
                try:
                    cards.append(card_id(number, self._key))
                except InvalidCardNumber:
                    continue  # normalization rejects it with the reason
        return cards

    async def handle(self, batch: Sequence[Received[RawEvent]]) -> Handled:
        """Normalize a batch. Nothing is recorded until `Handled.save`, after publishing: a
        crash in between re-reads the batch and publishes the same events again (downstream
        drops them) instead of dropping them as duplicates unpublished."""
        # The three raw topics have no order between them: within a batch, event time decides,
        # so that a sign-up a minute before a swipe is applied before it.
        items = sorted(batch, key=self._event_time)
        keys = {_key(item) for item in items}
        already = await self.repository.seen(keys) if keys else set()
        cards = {c for item in items for c in self._cards_in(item.event)}
        links: dict[str, str] = await self.repository.customers_of_cards(cards) if cards else {}

        def resolve(card: str) -> str:
            return links.get(card) or customer_id_for_card(card)

        result = _Batch()
        for item in items:
            key = _key(item)
            if key in already or key in result.keys:
                self.stats["duplicates"] += 1
                continue
            try:
                event = await self._normalize(item.event, resolve, links, result)
            except Rejected as rejected:
                result.rejected.append((item.source, rejected))
                continue
            result.keys.add(key)
            if event is None:
                self.stats["anonymous_interactions"] += 1
                continue
            routing = event.customer_id or (
                event.store_id if isinstance(event, PurchaseRecorded) else ""
            )
            result.outgoing.append((EVENTS, routing.encode(), dump(event)))
            self.stats[f"normalized_{event.type}"] += 1

        async def save() -> None:
            """Remember what the published batch contained, so a replay is a duplicate."""
            if result.keys or result.links:
                await self.repository.record(result.keys, result.links, self._clock())

        return Handled(outgoing=result.outgoing, rejected=result.rejected, save=save)

    def _event_time(self, item: Received[RawEvent]) -> dt.datetime:
        raw = item.event
        zone = self._calendar.zone_of(raw.store_id.strip().upper() if raw.store_id else None)
        try:
            return parse_time(raw.occurred_at, zone)
        except Rejected:
            return _LATEST

    async def _normalize(
        self,
        raw: RawEvent,
        resolve: Callable[[str], str],
        links: dict[str, str],
        result: _Batch,
    ) -> NormalizedEvent | None:
        store_id = raw.store_id
        zone = self._calendar.zone_of(store_id.strip().upper() if store_id else None)
        if isinstance(raw, RawCheckout):
            return normalize_checkout(raw, key=self._key, zone=zone, resolve=resolve)
        if isinstance(raw, RawInteraction):
            return normalize_interaction(raw, key=self._key, zone=zone, resolve=resolve)
        event = normalize_customer_event(raw, key=self._key, zone=zone, resolve=resolve)
        if not isinstance(event, LinkRequest):
            return event
        return await self._link(event, resolve, links, result)

    async def _link(
        self,
        request: LinkRequest,
        resolve: Callable[[str], str],
        links: dict[str, str],
        result: _Batch,
    ) -> CardLinked:
        """The other card (and every card that fed its customer) now feeds this customer."""
        customer = resolve(request.card)
        previous = resolve(request.other_card)
        moved = {request.card: customer, request.other_card: customer}
        if previous != customer:
            for card in await self.repository.cards_of_customer(previous):
                moved[card] = customer
            for card, owner in list(links.items()):
                if owner == previous:
                    moved[card] = customer
        links.update(moved)
        result.links.update(moved)
        return CardLinked(
            event_id=request.event_id,
            occurred_at=request.occurred_at,
            customer_id=customer,
            card_id=request.other_card,
            merged_customer_id=previous if previous != customer else None,
        )
