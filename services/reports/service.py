"""The reports service layer: batches of `crm.events`, `crm.offers` and `crm.deliveries` into facts.

Only what the reports need is kept (no personal data: pseudonymous ids, amounts, dates). A
record that does not decode was already dead-lettered by the service that owns its topic, so
it is skipped and counted here, not dead-lettered twice.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

from aiokafka import ConsumerRecord
from pydantic import ValidationError

from services.reports.domain import UNCATEGORIZED, Campaign, Line, Purchase, Redemption
from services.reports.store import (
    Fact,
    ReportsRepository,
    campaign_fact,
    delivery_fact,
    erased_fact,
    purchase_fact,
    redemption_fact,
)
from shared.events import (
    NORMALIZED_EVENT,
    OFFER_EVENT,
    CustomerErased,
    DeliveryRecorded,
    OfferHeldOut,
    OfferIssued,
    OfferRedeemed,
    PurchaseRecorded,
)
from shared.logging import get_logger
from shared.settings import CalendarSettings
from shared.topics import DELIVERIES, EVENTS, OFFERS

log = get_logger(__name__)


class ReportsService:
    """Turns records into facts and stores them; `stats` counts facts per kind and skips."""

    def __init__(
        self, repository: ReportsRepository | None = None, *, calendar: CalendarSettings
    ) -> None:
        self._repository = repository
        self._calendar = calendar
        self.stats: collections.Counter[str] = collections.Counter()

    @property
    def repository(self) -> ReportsRepository:
        if self._repository is None:
            raise RuntimeError("the reports repository is not open yet")
        return self._repository

    @repository.setter
    def repository(self, repository: ReportsRepository | None) -> None:
        self._repository = repository

    def purchase(self, event: PurchaseRecorded) -> Purchase:
        day = event.occurred_at.astimezone(self._calendar.zone_of(event.store_id)).date()
        return Purchase(
            event_id=event.event_id,
            customer_id=event.customer_id,
            store_id=event.store_id,
            at=event.occurred_at,
            day=day,
            total=event.total,
            lines=tuple(
                Line(x.sku, x.category or UNCATEGORIZED, x.quantity, x.amount) for x in event.lines
            ),
        )

    def fact_of(self, record: ConsumerRecord[Any, Any]) -> Fact | None:
        value = record.value
        if not value:
            return None
        if record.topic == EVENTS:
            event = NORMALIZED_EVENT.validate_json(value)
            if isinstance(event, PurchaseRecorded):
                return purchase_fact(self.purchase(event))
            if isinstance(event, CustomerErased):
                return erased_fact(event.customer_id)
            return None
        if record.topic == OFFERS:
            offer = OFFER_EVENT.validate_json(value)
            if isinstance(offer, OfferIssued | OfferHeldOut):
                held = isinstance(offer, OfferHeldOut)
                return campaign_fact(
                    Campaign(
                        offer_id=offer.offer_id,
                        customer_id=offer.customer_id,
                        kind=offer.kind,
                        at=offer.decided_at if isinstance(offer, OfferHeldOut) else offer.issued_at,
                        valid_from=offer.valid_from,
                        valid_until=offer.valid_until,
                        held_out=held,
                    )
                )
            if isinstance(offer, OfferRedeemed):
                return redemption_fact(
                    Redemption(offer.offer_id, offer.redeemed_at, offer.basket_total),
                    offer.customer_id,
                )
            return None
        if record.topic == DELIVERIES:
            delivery = DeliveryRecorded.model_validate_json(value)
            return delivery_fact(delivery.offer_id, delivery.customer_id, delivery.state)
        return None

    async def handle(self, records: Sequence[ConsumerRecord[Any, Any]]) -> None:
        """One batch: decode, then one repository write."""
        facts: list[Fact] = []
        for record in records:
            try:
                fact = self.fact_of(record)
            except (ValidationError, ValueError):
                self.stats["skipped_invalid"] += 1
                log.debug(
                    "record_skipped",
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                )
                continue
            if fact is None:
                self.stats["ignored"] += 1
                continue
            facts.append(fact)
            self.stats[f"facts_{fact.kind}"] += 1
        await self.repository.add(facts)
        self.stats["batches"] += 1
