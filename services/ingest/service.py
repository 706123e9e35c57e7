"""Ingest's service layer: one batch of raw records in, normalized events and dead letters out."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import ConsumerRecord

from services.ingest.domain import (
    LinkRequest,
    RawEvent,
    Rejected,
    decode,
    normalize_checkout,
    normalize_customer_event,
    normalize_interaction,
    parse_time,
)
from services.ingest.store import IngestRepository
from shared.events import CardLinked, NormalizedEvent, PurchaseRecorded
from shared.kafka import Outgoing, dead_letter, dead_letter_message, dump
from shared.logging import get_logger
from shared.privacy import InvalidCardNumber, card_id, customer_id_for_card
from shared.raw import RawCheckout, RawCustomerEvent, RawInteraction
from shared.settings import CalendarSettings
from shared.topics import EVENTS

log = get_logger(__name__)
SERVICE = "ingest"
_LATEST = dt.datetime.max.replace(tzinfo=dt.UTC)


@dataclass(slots=True)
class BatchResult:
    """What a batch produced; `keys` and `links` are recorded only after publishing."""

    outgoing: list[Outgoing] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    links: dict[str, str] = field(default_factory=dict)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class IngestService:
    """Validates, normalizes, pseudonymizes and de-duplicates raw events, per batch."""

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
                    continue  # normalization dead-letters it with the reason
        return cards

    async def process(self, records: Sequence[ConsumerRecord[Any, Any]]) -> BatchResult:
        """Decode and normalize a batch. Nothing is recorded: call `record` after publishing."""
        result = BatchResult()
        decoded: list[tuple[ConsumerRecord[Any, Any], RawEvent | Rejected]] = []
        for record in records:
            try:
                decoded.append((record, decode(record.topic, record.value)))
            except Rejected as rejected:
                decoded.append((record, rejected))
        # The three raw topics have no order between them: within a batch, event time decides,
        # so that a sign-up a minute before a swipe is applied before it.
        decoded.sort(key=self._event_time)
        keys = {
            f"{record.topic}:{item.event_id}"
            for record, item in decoded
            if not isinstance(item, Rejected)
        }
        already = await self.repository.seen(keys) if keys else set()
        cards = {
            c for _, item in decoded if not isinstance(item, Rejected) for c in self._cards_in(item)
        }
        links: dict[str, str] = await self.repository.customers_of_cards(cards) if cards else {}

        def resolve(card: str) -> str:
            return links.get(card) or customer_id_for_card(card)

        for record, item in decoded:
            if isinstance(item, Rejected):
                self._reject(result, record, item)
                continue
            key = f"{record.topic}:{item.event_id}"
            if key in already or key in result.keys:
                self.stats["duplicates"] += 1
                continue
            try:
                event = await self._normalize(item, resolve, links, result)
            except Rejected as rejected:
                self._reject(result, record, rejected)
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
        return result

    def _event_time(
        self, item: tuple[ConsumerRecord[Any, Any], RawEvent | Rejected]
    ) -> dt.datetime:
        raw = item[1]
        if isinstance(raw, Rejected):
            return _LATEST
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
        result: BatchResult,
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
        result: BatchResult,
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

    def _reject(
        self, result: BatchResult, record: ConsumerRecord[Any, Any], rejected: Rejected
    ) -> None:
        letter = dead_letter(
            service=SERVICE,
            record=record,
            reason=rejected.reason,
            detail=rejected.detail,
            now=self._clock(),
        )
        result.outgoing.append(dead_letter_message(letter))
        self.stats[f"dead_lettered_{rejected.reason}"] += 1
        log.warning(
            "dead_lettered",
            reason=rejected.reason,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )

    async def record(self, result: BatchResult) -> None:
        """Remember what a published batch contained, so that a replay is dropped as duplicate."""
        if result.keys or result.links:
            await self.repository.record(result.keys, result.links, self._clock())
