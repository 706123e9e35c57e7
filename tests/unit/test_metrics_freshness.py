"""Freshness measured where it happens: offers counts each offer it publishes from its trigger
checkout's event time, the notifier each e-mail it sends (both through FastStream's
TestKafkaBroker, on memory stores)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import REGISTRY

from shared.topics import CONTACTS, OFFERS
from tests.service.test_notifier_app import DAY, contact_payload, harness_for, offer_payload
from tests.service.test_offers_app import milk_three_times, start


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_published_offer_counts_its_age_from_the_checkout_that_earned_it() -> None:
    labels = {"stage": "offer_published", "trigger": "purchase"}
    count = sample("crm_freshness_seconds_count", **labels)
    within_two_days = sample("crm_freshness_seconds_bucket", le="172800.0", **labels)
    async for harness in start():
        # The checkouts happened on 1 March 2026: published now, the offer is months old.
        await milk_three_times(harness)
        assert len(harness.offers) == 1
    assert sample("crm_freshness_seconds_count", **labels) == count + 1
    assert sample("crm_freshness_seconds_bucket", le="172800.0", **labels) == within_two_days


async def test_a_sent_email_counts_its_age_from_the_offers_trigger_time(tmp_path: Path) -> None:
    labels = {"stage": "email_sent", "trigger": "purchase"}
    two_hours = sample("crm_freshness_seconds_bucket", le="7200.0", **labels)
    one_hour = sample("crm_freshness_seconds_bucket", le="3600.0", **labels)
    offer = offer_payload() | {"trigger": {"type": "purchase", "event_ids": ["e-1"]}}
    async for h in harness_for(tmp_path, quiet="off", now=DAY, grace_s=0):
        await h.publish(CONTACTS, contact_payload(), key="c-1")
        await h.publish(OFFERS, offer, key="c-1")
        assert len(h.emails()) == 1
    # Issued at 10:00 (the checkout's time), sent at 12:00 by the notifier's clock.
    assert sample("crm_freshness_seconds_bucket", le="7200.0", **labels) == two_hours + 1
    assert sample("crm_freshness_seconds_bucket", le="3600.0", **labels) == one_hour
