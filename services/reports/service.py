"""The reports service layer: a batch of events, offers, deliveries and campaigns in, its facts
saved.

Only what the reports need is kept (no personal data: pseudonymous ids, amounts, dates). The
edge decodes the four topics, none of which the reports own: what does not decode there was
already dead-lettered by its owner and is only counted (`skipped_invalid`).
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

from services.reports.domain import UNCATEGORIZED, Campaign, Line, Purchase, Redemption
from services.reports.sentiment import Opinion
from services.reports.store import (
    Fact,
    ReportsRepository,
    alias_fact,
    campaign_fact,
    definition_fact,
    delivery_fact,
    erased_fact,
    opinion_fact,
    purchase_fact,
    redemption_fact,
    revocation_fact,
)
from shared.campaigns import CampaignChanged
from shared.edge import Received
from shared.events import (
    CardLinked,
    CustomerErased,
    DeliveryRecorded,
    InteractionRecorded,
    OfferHeldOut,
    OfferIssued,
    OfferRedeemed,
    OfferRevoked,
    PurchaseRecorded,
)
from shared.settings import CalendarSettings
from shared.skeleton import Handled


class ReportsService:
    """Turns events into facts and stores them.

    `stats` counts `facts_<kind>`, `ignored` (events the reports do not need), `batches`; the
    edge adds `skipped_invalid`.
    """

    def __init__(self, repository: ReportsRepository, *, calendar: CalendarSettings) -> None:
        self.repository = repository
        self._calendar = calendar
        self.stats: collections.Counter[str] = collections.Counter()

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

    def fact_of(self, event: object) -> Fact | None:
        """The fact an event makes, or None for one the reports do not need."""
        if isinstance(event, PurchaseRecorded):
            return purchase_fact(self.purchase(event))
        if isinstance(event, CustomerErased):
            return erased_fact(event.customer_id)
        if isinstance(event, CardLinked) and event.merged_customer_id:
            return alias_fact(event.merged_customer_id, event.customer_id)
        if isinstance(event, InteractionRecorded):
            # Only an opinion about a brand or a category makes a fact (the sentiment report).
            if event.sentiment is None or (event.brand is None and event.category is None):
                return None
            return opinion_fact(
                Opinion(
                    event_id=event.event_id,
                    customer_id=event.customer_id,
                    at=event.occurred_at,
                    sentiment=event.sentiment,
                    brand=event.brand,
                    category=event.category,
                )
            )
        if isinstance(event, OfferIssued):
            return campaign_fact(
                Campaign(
                    offer_id=event.offer_id,
                    customer_id=event.customer_id,
                    kind=event.kind,
                    at=event.issued_at,
                    valid_from=event.valid_from,
                    valid_until=event.valid_until,
                    campaign_id=event.campaign_id,
                    variant=event.variant,
                )
            )
        if isinstance(event, OfferHeldOut):
            return campaign_fact(
                Campaign(
                    offer_id=event.offer_id,
                    customer_id=event.customer_id,
                    kind=event.kind,
                    at=event.decided_at,
                    valid_from=event.valid_from,
                    valid_until=event.valid_until,
                    held_out=True,
                    campaign_id=event.campaign_id,
                    variant=event.variant,
                    global_control=event.control == "global",
                )
            )
        if isinstance(event, CampaignChanged):
            return definition_fact(event)
        if isinstance(event, OfferRedeemed):
            return redemption_fact(
                Redemption(event.offer_id, event.redeemed_at, event.basket_total, event.discount),
                event.customer_id,
            )
        if isinstance(event, OfferRevoked):
            return revocation_fact(
                event.offer_id, event.customer_id, event.revoked_at, event.reason
            )
        if isinstance(event, DeliveryRecorded):
            return delivery_fact(event.offer_id, event.customer_id, event.state)
        return None

    async def handle(self, batch: Sequence[Received[Any]]) -> Handled:
        """One batch: its facts, written in one repository call by `Handled.save`."""
        facts: list[Fact] = []
        for item in batch:
            fact = self.fact_of(item.event)
            if fact is None:
                self.stats["ignored"] += 1
                continue
            facts.append(fact)
            self.stats[f"facts_{fact.kind}"] += 1

        async def save() -> None:
            await self.repository.add(facts)
            self.stats["batches"] += 1

        return Handled(save=save)
