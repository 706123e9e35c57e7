"""Campaigns created, paused and resumed through the API while `crm run all` runs on a real
broker: offers go to exactly the customers the campaign's trigger and audience select, with its
campaign id, and stop and start with it; no restart anywhere."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import httpx
import orjson
import pytest

from crm.embedded import EmbeddedKafka
from crm.simulation import RawMessage
from crm.traffic import read_topic
from shared.auth import token_hash
from shared.privacy import card_id, customer_id_for_card
from shared.settings import KafkaSettings
from shared.topics import CHECKOUTS_RAW, CUSTOMERS_RAW, OFFERS, SEGMENTS
from tests.keys import CARD_KEY
from tests.reliability.harness import send, wait_drained

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MARKETING = "marketing-e2e-token"
COFFEE: dict[str, Any] = {
    "name": "Coffee lovers",
    "trigger": {"type": "purchase", "sku": "COFFEE-1KG", "min_checkouts": 2, "window_days": 30},
    "audience": {"segment": "all"},
    "offer": {"discount_percent": "15", "scope": "sku", "sku": "COFFEE-1KG", "validity_days": 14},
    "starts_on": None,
    "ends_on": None,
    "holdout_percent": 0,
}


def card(n: int) -> str:
    return f"6035 0000 0000 {n:04d}"


def customer(n: int) -> str:
    return customer_id_for_card(card_id(card(n), CARD_KEY.encode()))


class Store:
    """What the tills and the desk send, with event times taken when sent."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.serial = 0

    def _message(self, topic: str, doc: dict[str, Any]) -> RawMessage:
        now = dt.datetime.now(dt.UTC)
        doc = {"occurred_at": now.isoformat(), **doc}
        return RawMessage(topic, str(doc.get("card_number")).encode(), orjson.dumps(doc), now)

    def sign_up(self, *numbers: int, consent: bool = True) -> None:
        messages = [
            self._message(
                CUSTOMERS_RAW,
                {
                    "event_id": f"signup-{n}",
                    "type": "signup",
                    "occurred_at": "2026-01-01T10:00:00Z",
                    "card_number": card(n),
                    "first_name": f"Customer {n}",
                    "email": f"customer{n}@example.com",
                    "marketing_consent": consent,
                },
            )
            for n in numbers
        ]
        asyncio.run(send(self.bootstrap, messages))

    def buy(self, n: int, sku: str, times: int = 1, price: str = "9.90") -> None:
        messages = []
        for _ in range(times):
            self.serial += 1
            messages.append(
                self._message(
                    CHECKOUTS_RAW,
                    {
                        "event_id": f"till-{self.serial}",
                        "store_id": "S001",
                        "card_number": card(n),
                        "lines": [
                            {
                                "sku": sku,
                                "name": sku,
                                "category": "drinks",
                                "quantity": 1,
                                "unit_price": price,
                            }
                        ],
                    },
                )
            )
        asyncio.run(send(self.bootstrap, messages))
        asyncio.run(wait_drained(self.bootstrap))


def issued_by(bootstrap: str, campaign_id: str) -> list[str]:
    """Customer ids of the offer_issued records of a campaign, from the raw bytes on the topic."""
    records = asyncio.run(read_topic(KafkaSettings(kafka_bootstrap=bootstrap), OFFERS, within=30))
    docs = [orjson.loads(r.value) for r in records]
    return sorted(
        d["customer_id"]
        for d in docs
        if d["type"] == "offer_issued" and d.get("campaign_id") == campaign_id
    )


def test_a_campaign_made_through_the_api_while_running_issues_pauses_and_resumes(
    broker: EmbeddedKafka, make_pipeline: Any
) -> None:
    pipeline = make_pipeline(
        CRM_API_TOKENS=f"marketing:{token_hash(MARKETING)}", CRM_CARD_KEY=CARD_KEY
    )
    pipeline.start("all")
    pipeline.wait_ready("all")
    store = Store(broker.bootstrap)
    store.sign_up(1, 2, 3, 4, 5)
    store.sign_up(6, consent=False)
    asyncio.run(wait_drained(broker.bootstrap))
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{pipeline.ports['all']}",
        headers={"Authorization": f"Bearer {MARKETING}"},
        timeout=10,
    )

    invalid = api.post("/api/campaigns", json={**COFFEE, "trigger": {"type": "purchase"}})
    assert invalid.status_code == 422
    assert "trigger" in orjson.dumps(invalid.json()["detail"]).decode()
    made = api.post("/api/campaigns", json=COFFEE)
    assert made.status_code == 201, made.text
    assert made.json() == {"campaign_id": "coffee-lovers", "status": "active", "version": 1}
    ended = api.post(
        "/api/campaigns",
        json={
            **COFFEE,
            "name": "Old tea",
            "trigger": {"type": "purchase", "sku": "TEA", "min_checkouts": 2},
            "offer": {"discount_percent": "5", "scope": "sku", "sku": "TEA"},
            "ends_on": (dt.date.today() - dt.timedelta(days=1)).isoformat(),
        },
    )
    assert ended.json()["status"] == "ended"

    store.buy(1, "COFFEE-1KG", times=2)  # selected
    store.buy(2, "COFFEE-1KG")  # once only
    store.buy(3, "TEA", times=2)  # another product (and an ended campaign)
    store.buy(6, "COFFEE-1KG", times=2)  # no consent
    assert issued_by(broker.bootstrap, "coffee-lovers") == [customer(1)]
    assert issued_by(broker.bootstrap, "old-tea") == []

    assert api.post("/api/campaigns/coffee-lovers/pause").json()["status"] == "paused"
    store.buy(4, "COFFEE-1KG", times=2)
    assert issued_by(broker.bootstrap, "coffee-lovers") == [customer(1)]

    assert api.post("/api/campaigns/coffee-lovers/resume").json()["status"] == "active"
    store.buy(5, "COFFEE-1KG", times=2)
    assert issued_by(broker.bootstrap, "coffee-lovers") == sorted([customer(1), customer(5)])

    view = api.get("/api/campaigns/coffee-lovers").json()
    assert view["counts"]["issued"] == 2
    assert [c["action"] for c in view["history"]] == ["created", "paused", "resumed"]
    listed = {c["campaign_id"] for c in api.get("/api/campaigns").json()["campaigns"]}
    assert {"frequent-item", "birthday", "anniversary", "win-back", "coffee-lovers"} <= listed


def _wait_for(condition: Any, within: float, what: str) -> None:
    """Until `condition()` holds; fails after `within` seconds (a bound, not a measure)."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_entering_a_segment_triggers_its_campaign_once_and_segments_choose_the_audience(
    broker: EmbeddedKafka, make_pipeline: Any
) -> None:
    pipeline = make_pipeline(
        CRM_API_TOKENS=f"marketing:{token_hash(MARKETING)}", CRM_CARD_KEY=CARD_KEY
    )
    pipeline.start("all")
    pipeline.wait_ready("all")
    store = Store(broker.bootstrap)
    store.sign_up(1, 2)
    asyncio.run(wait_drained(broker.bootstrap))
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{pipeline.ports['all']}",
        headers={"Authorization": f"Bearer {MARKETING}"},
        timeout=10,
    )
    preview = api.post("/api/segments/preview", json={"rule": {"min_spend": "50"}})
    assert preview.json() == {"count": 0}
    saved = api.post("/api/segments", json={"name": "big-spenders", "rule": {"min_spend": "50"}})
    assert saved.status_code == 201, saved.text
    welcome = {
        **COFFEE,
        "name": "Welcome big spenders",
        "trigger": {"type": "segment_entered", "segment": "big-spenders"},
        "offer": {"discount_percent": "10", "scope": "basket"},
    }
    assert api.post("/api/campaigns", json=welcome).status_code == 201
    vip = {
        **COFFEE,
        "name": "VIP coffee",
        "audience": {"segment": "big-spenders"},
        "trigger": {**COFFEE["trigger"], "min_checkouts": 1},
    }
    assert api.post("/api/campaigns", json=vip).status_code == 201

    swiped = time.monotonic()
    store.buy(1, "WINE", price="60.00")  # customer 1 enters big-spenders
    _wait_for(
        lambda: issued_by(broker.bootstrap, "welcome-big-spenders") == [customer(1)],
        30,
        "the welcome offer",
    )
    print(f"swipe to segment_entered offer: {time.monotonic() - swiped:.1f} s")
    entries = [
        orjson.loads(r.value)
        for r in asyncio.run(
            read_topic(KafkaSettings(kafka_bootstrap=broker.bootstrap), SEGMENTS, within=30)
        )
    ]
    assert {(e["type"], e["segment"]) for e in entries if e["customer_id"] == customer(1)} >= {
        ("segment_entered", "big-spenders")
    }
    store.buy(1, "WINE", price="60.00")  # still in: no second entry, no second welcome
    store.buy(2, "BREAD", price="3.00")
    assert issued_by(broker.bootstrap, "welcome-big-spenders") == [customer(1)]
    assert api.get("/api/segments/big-spenders").json()["count"] == 1

    store.buy(1, "COFFEE-1KG")  # in the audience
    store.buy(2, "COFFEE-1KG")  # not
    assert issued_by(broker.bootstrap, "vip-coffee") == [customer(1)]
