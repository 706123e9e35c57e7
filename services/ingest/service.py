"""Ingest's service layer: a batch of raw events in, normalized events out, then what to record.

The edge has decoded the records; `handle` orders the batch by event time, drops event ids
seen before, resolves cards to customers (one look-up per batch), normalizes with the pure
domain, matches leads (sign-ups without a card, named by their e-mail address) with the
card customers of the same address, seals the personal fields with each customer's data key
(erasures destroy the keys first: `shared.vault`) and hands back the events to publish (with
the keys that seal them, wrapped, and the tombstones of destroyed keys on `crm.data-keys`:
`shared.vault_recovery`), the
events it rejected, and the `save` that records the event keys and card links once the events
are published.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from services.ingest.domain import (
    LinkRequest,
    RawEvent,
    lead_of,
    normalize_checkout,
    normalize_customer_event,
    normalize_interaction,
    parse_time,
)
from services.ingest.store import IngestRepository
from shared.edge import Outgoing, Received, Source, dump
from shared.errors import Rejected
from shared.events import (
    CardLinked,
    CustomerErased,
    CustomerSignedUp,
    NormalizedEvent,
    PurchaseRecorded,
)
from shared.privacy import InvalidCardNumber, card_id, customer_id_for_card, is_lead, lead_id
from shared.raw import RawCheckout, RawCustomerEvent, RawInteraction
from shared.settings import CalendarSettings
from shared.skeleton import Handled
from shared.topics import EVENTS
from shared.vault import KeyVault, has_personal_data, seal, without_personal_data
from shared.vault_recovery import KeyWrapper, PublishedKeys, key_message, key_tombstone

_LATEST = dt.datetime.max.replace(tzinfo=dt.UTC)


@dataclass(slots=True)
class _Batch:
    """What a batch produced; `keys` and `links` are recorded only after publishing."""

    outgoing: list[Outgoing] = field(default_factory=list)
    rejected: list[tuple[Source, Rejected]] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    links: dict[str, str] = field(default_factory=dict)
    kids: set[str] = field(default_factory=set)
    """The data keys published on `crm.data-keys` in this batch."""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _origin(key: str) -> str:
    """The customer a key of the card table (a card id, or a lead id) started as."""
    return key if is_lead(key) else customer_id_for_card(key)


def _key(item: Received[RawEvent]) -> str:
    """An event's duplicate key: its id on its raw topic."""
    return f"{item.source.topic}:{item.event.event_id}"


class IngestService:
    """Validates, normalizes, pseudonymizes and de-duplicates raw events, per batch.

    `stats` counts what it did: `duplicates`, `anonymous_interactions`,
    `normalized_<event type>`, `leads_merged` (a lead joined a card customer of its address),
    `data_keys_destroyed`, `personal_data_dropped_erased` (an event older than its customer's
    erasure goes out without its personal fields), `data_keys_published` (wrapped, on
    `crm.data-keys`), and (counted by the edge) `dead_lettered_<reason>`.

    With a `wrapper`, every data key that seals an event goes out wrapped in the same batch
    (once per process: `PublishedKeys`), and every destroyed key's tombstone; without one
    (tests of the normalization alone) no key leaves the vault.
    """

    def __init__(
        self,
        repository: IngestRepository,
        *,
        card_key: bytes,
        calendar: CalendarSettings,
        vault: KeyVault,
        wrapper: KeyWrapper | None = None,
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        self.repository = repository
        self.vault = vault
        self._wrapper = wrapper
        self._published = PublishedKeys()
        self._key = card_key
        self._calendar = calendar
        self._clock = clock
        self.stats: Counter[str] = Counter()

    def _cards_in(self, raw: RawEvent) -> list[str]:
        """The keys of the card table the event needs: its cards, and the lead its e-mail
        address names (a lead's own event, or a card's sign-up or link that may match it)."""
        numbers: list[str | None] = [raw.card_number]
        cards = []
        if isinstance(raw, RawCustomerEvent):
            numbers.append(raw.other_card_number)
            lead = lead_of(raw, self._key) if raw.email else None
            if lead is not None:
                cards.append(lead)
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
            return links.get(card) or _origin(card)

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
        result.outgoing.extend(await self._sealed(normalized, links, result.kids))

        async def save() -> None:
            """Remember what the published batch contained, so a replay is a duplicate."""
            # Acknowledged by Kafka by now: those keys need not go out again from this process.
            self._published.add(result.kids)
            if result.keys or result.links:
                await self.repository.record(result.keys, result.links, self._clock())

        return Handled(outgoing=result.outgoing, rejected=result.rejected, save=save)

    async def _sealed(
        self,
        events: Sequence[tuple[bytes, NormalizedEvent]],
        links: dict[str, str],
        kids: set[str],
    ) -> list[Outgoing]:
        """The batch's messages, personal fields sealed. Erasures go first: every key of the
        customer (and of the customers merged into them) is destroyed before anything is
        published, so a redelivered batch destroys them again rather than never. An event
        that happened before its customer's latest erasure goes out without personal fields
        (the erasure wins anyway); the others get their customer's key, created at need
        before they are published (the same key under redelivery). The wrapped keys and the
        tombstones go first, in the same batch: on Kafka before the batch's offsets are
        committed, a tombstone before a new key of the same customer."""
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
        if self._wrapper is not None:
            outgoing.extend(key_tombstone(cid) for cid in sorted(erasures))
            fresh = [k for k in keys.values() if k.kid not in self._published]
            outgoing.extend(key_message(self._wrapper, k) for k in fresh)
            kids.update(k.kid for k in fresh)
            self.stats["data_keys_published"] += len(fresh)
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
        return {customer_id} | {_origin(card) for card in cards}

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
        if isinstance(event, LinkRequest):
            return await self._link(event, resolve, links, result)
        if is_lead(event.customer_id) and event.customer_id not in links:
            # The lead exists from its first event on: a card's sign-up with its address
            # then merges it rather than taking the address over.
            self._move({event.customer_id: event.customer_id}, links, result)
        if isinstance(event, CustomerSignedUp) and event.card_id and event.email:
            return self._match_lead(event, links, result)
        return event

    @staticmethod
    def _move(moved: dict[str, str], links: dict[str, str], result: _Batch) -> None:
        links.update(moved)
        result.links.update(moved)

    def _match_lead(
        self, event: CustomerSignedUp, links: dict[str, str], result: _Batch
    ) -> CustomerSignedUp:
        """A card's sign-up and the lead of the same address (exact normalised address).

        The first card customer to sign up with an address takes it: the lead merges into
        them (`merged_customer_id`), now or, when the lead signs up later, then (its events
        are addressed to this customer). A later card customer with the same address stays
        on its own: cards merge only by link_card. An address changed later (an update)
        matches nothing."""
        lead = lead_id(str(event.email), self._key)
        owner = links.get(lead)
        if owner is not None and owner != lead:
            return event  # taken by this customer already, or by another card customer
        self._move({lead: event.customer_id}, links, result)
        if owner is None:
            return event
        self.stats["leads_merged"] += 1
        return event.model_copy(update={"merged_customer_id": lead})

    async def _link(
        self,
        request: LinkRequest,
        resolve: Callable[[str], str],
        links: dict[str, str],
        result: _Batch,
    ) -> CardLinked:
        """The other card (and every card that fed its customer) now feeds this customer; or
        the lead the request names by its address merges into the card's customer."""
        customer = resolve(request.card)
        if request.other_card is None:
            return self._link_lead(request, customer, links, result)
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

    def _link_lead(
        self, request: LinkRequest, customer: str, links: dict[str, str], result: _Batch
    ) -> CardLinked:
        """link_card with a card and a lead's e-mail address: the lead becomes the card's
        customer, with its history. An address another card customer took is refused: two
        card customers never merge on an address."""
        lead = str(request.lead)
        owner = links.get(lead)
        if owner is not None and owner not in (lead, customer):
            raise Rejected(
                "invalid_field",
                "the email's lead already belongs to another card's customer: link the cards "
                "with other_card_number",
                field="email",
            )
        self._move({request.card: customer, lead: customer}, links, result)
        if owner == lead:
            self.stats["leads_merged"] += 1
        return CardLinked(
            event_id=request.event_id,
            occurred_at=request.occurred_at,
            customer_id=customer,
            card_id=request.card,
            merged_customer_id=lead if owner == lead else None,
        )
