"""Ingest's service layer: a batch of raw events in, normalized events out, then what to record.

The edge has decoded the records; `handle` orders the batch by event time, drops event ids
seen before, resolves cards to customers (one look-up per batch), normalizes with the pure
domain, seals the personal fields with each customer's data key (erasures destroy the keys
first: `shared.vault`) and hands back the events to publish, the events it rejected, and the
`save` that records the event keys and card links once the events are published.
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
from shared.events import CardLinked, CustomerErased, NormalizedEvent, PurchaseRecorded
from shared.privacy import InvalidCardNumber, card_id, customer_id_for_card
from shared.raw import RawCheckout, RawCustomerEvent, RawInteraction
from shared.settings import CalendarSettings
from shared.skeleton import Handled
from shared.topics import EVENTS
from shared.vault import KeyVault, has_personal_data, seal, without_personal_data

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
    `normalized_<event type>`, `data_keys_destroyed`, `personal_data_dropped_erased` (an
    event older than its customer's erasure goes out without its personal fields), and
    (counted by the edge) `dead_lettered_<reason>`.
    """

    def __init__(
        self,
        repository: IngestRepository,
        *,
        card_key: bytes,
        calendar: CalendarSettings,
        vault: KeyVault,
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        self.repository = repository
        self.vault = vault
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
        normalized: list[tuple[bytes, NormalizedEvent]] = []
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
            normalized.append((routing.encode(), event))
            self.stats[f"normalized_{event.type}"] += 1
        result.outgoing.extend(await self._sealed(normalized, links))

        async def save() -> None:
            """Remember what the published batch contained, so a replay is a duplicate."""
            if result.keys or result.links:
                await self.repository.record(result.keys, result.links, self._clock())

        return Handled(outgoing=result.outgoing, rejected=result.rejected, save=save)

    async def _sealed(
        self, events: Sequence[tuple[bytes, NormalizedEvent]], links: dict[str, str]
    ) -> list[Outgoing]:
        """The batch's messages, personal fields sealed. Erasures go first: every key of the
        customer (and of the customers merged into them) is destroyed before anything is
        published, so a redelivered batch destroys them again rather than never. An event
        that happened before its customer's latest erasure goes out without personal fields
        (the erasure wins anyway); the others get their customer's key, created at need
        before they are published (the same key under redelivery)."""
        erasures: dict[str, dt.datetime] = {}
        for _, event in events:
            if isinstance(event, CustomerErased):
                for cid in await self._merged_into(event.customer_id, links):
                    erasures[cid] = max(erasures.get(cid, event.occurred_at), event.occurred_at)
        if erasures:
            self.stats["data_keys_destroyed"] += await self.vault.erase(erasures)
        personal = [event for _, event in events if has_personal_data(event)]
        owners = {str(event.customer_id) for event in personal}
        erased = await self.vault.erased_at(owners) if owners else {}

        def overtaken(event: NormalizedEvent) -> bool:
            at = erased.get(str(event.customer_id))
            return at is not None and event.occurred_at <= at

        keyed = {str(e.customer_id) for e in personal if not overtaken(e)}
        keys = await self.vault.create(keyed, self._clock()) if keyed else {}
        outgoing: list[Outgoing] = []
        for routing, event in events:
            if not has_personal_data(event):
                outgoing.append((EVENTS, routing, dump(event)))
                continue
            if overtaken(event):
                event = without_personal_data(event)
                self.stats["personal_data_dropped_erased"] += 1
            outgoing.append((EVENTS, routing, seal(event, keys.get(str(event.customer_id)))))
        return outgoing

    async def _merged_into(self, customer_id: str, links: dict[str, str]) -> set[str]:
        """The customer and every customer whose cards now feed them (merged by a link)."""
        cards = set(await self.repository.cards_of_customer(customer_id))
        cards |= {card for card, owner in links.items() if owner == customer_id}
        return {customer_id} | {customer_id_for_card(card) for card in cards}

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
