"""A coupon earned with one card is redeemed at a later checkout with another card of the same
customer (linked at the desk); the same code again, or another customer's, is rejected."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from crm.embedded import EmbeddedKafka
from crm.traffic import read_topic
from shared.events import OFFER_EVENT, OfferIssued, OfferRedeemed, RedemptionRejected
from shared.settings import KafkaSettings
from shared.topics import CHECKOUTS_RAW, CUSTOMERS_RAW, OFFERS
from tests.e2e.test_checkout_to_inbox import drained, publish, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MAIN = "6035 7777 0000 0001"
SPARE = "6035 7777 0000 0002"
OTHER = "6035 8888 0000 0003"
TODAY = dt.datetime.now(dt.UTC).date()


def at(days_ago: int, hour: int = 10) -> str:
    return f"{TODAY - dt.timedelta(days=days_ago)}T{hour:02d}:00:00Z"


def checkout(
    event_id: str, card: str, days_ago: int, coupons: list[str] | None = None
) -> tuple[str, dict[str, Any]]:
    return (
        CHECKOUTS_RAW,
        {
            "event_id": event_id,
            "store_id": "S001",
            "occurred_at": at(days_ago),
            "card_number": card,
            "lines": [{"sku": "TEA-40", "name": "Black tea", "quantity": 1, "unit_price": "2.59"}],
            "coupons": coupons or [],
        },
    )


def signup(event_id: str, card: str, email: str) -> tuple[str, dict[str, Any]]:
    return (
        CUSTOMERS_RAW,
        {
            "event_id": event_id,
            "type": "signup",
            "occurred_at": at(30),
            "card_number": card,
            "email": email,
            "first_name": "Ana",
            "marketing_consent": True,
        },
    )


def offer_events(bootstrap: str) -> list[Any]:
    records = asyncio.run(read_topic(KafkaSettings(kafka_bootstrap=bootstrap), OFFERS))
    return [OFFER_EVENT.validate_json(r.value) for r in records if r.value]


def test_coupon_redeems_once_with_a_linked_card_and_never_for_another_customer(
    broker: EmbeddedKafka, make_pipeline: Any, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("holdout: {percent: 0}\n")  # this customer must not be in the control group
    pipeline = make_pipeline(CRM_RULES_FILE=str(rules))
    pipeline.start_all()
    link = (
        CUSTOMERS_RAW,
        {
            "event_id": "link-1",
            "type": "link_card",
            "occurred_at": at(20),
            "card_number": MAIN,
            "other_card_number": SPARE,
        },
    )
    first = [
        signup("s-main", MAIN, "ana@example.com"),
        signup("s-other", OTHER, "bo@example.com"),
        link,
    ]
    asyncio.run(publish(broker.bootstrap, first))
    asyncio.run(drained(broker.bootstrap))
    asyncio.run(publish(broker.bootstrap, [checkout(f"c{n}", MAIN, 10 - n) for n in range(3)]))

    def issued() -> list[OfferIssued]:
        return [e for e in offer_events(broker.bootstrap) if isinstance(e, OfferIssued)]

    wait_until(lambda: bool(issued()), 60, "the frequent-item coupon")
    [offer] = issued()
    code = offer.coupon_code
    asyncio.run(
        publish(
            broker.bootstrap,
            [
                checkout("use-spare", SPARE, 2, [code.lower()]),  # linked card, typed loosely
                checkout("use-again", MAIN, 1, [code]),
                checkout("use-foreign", OTHER, 1, [code]),
            ],
        )
    )
    asyncio.run(drained(broker.bootstrap))
    events = offer_events(broker.bootstrap)
    redeemed = [e for e in events if isinstance(e, OfferRedeemed)]
    rejected = {e.checkout_event_id: e.reason for e in events if isinstance(e, RedemptionRejected)}
    assert [(r.offer_id, r.checkout_event_id) for r in redeemed] == [(offer.offer_id, "use-spare")]
    assert rejected == {"use-again": "already_redeemed", "use-foreign": "foreign_code"}
