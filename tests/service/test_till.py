"""Coupons at the till: the offers service's HTTP API (validate, applicable) over its own store,
and the checkouts that follow it through Kafka (FastStream's test broker)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from faststream.kafka import TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage

from services.offers.api import TillApi, build_router
from services.offers.app import create_app
from services.offers.service import OffersService
from services.offers.settings import HoldOut, OfferRules
from services.offers.store import Changes
from services.offers.store_sqlite import SqliteOffersRepository
from shared.auth import TokenTable, token_hash
from shared.edge import dump
from shared.events import OFFER_EVENT, OfferEvent, OfferIssued
from shared.privacy import card_id
from shared.settings import HttpSettings, KafkaSettings, PrivacySettings, Settings, StoreSettings
from shared.skeleton import ServiceApp
from shared.storage import StoreLocation
from shared.topics import OFFERS, PROFILES_CHANGED
from tests.unit.test_offers_domain import change, purchase, signup

UTC = dt.UTC
CARD = "6035 1234 5678 9012"
CARD_KEY = "till-card-key"
TOKENS = {"till": "till-token", "agent": "agent-token", "marketing": "marketing-token"}
TODAY = dt.datetime.now(UTC).date()


def settings() -> Settings:
    tokens = ",".join(f"{role}:{token_hash(token)}" for role, token in TOKENS.items())
    return Settings(
        kafka=KafkaSettings(kafka_bootstrap="test:9092"),
        store=StoreSettings(store_url="memory://"),
        http=HttpSettings(api_tokens=tokens),  # type: ignore[arg-type]
        privacy=PrivacySettings(card_key=CARD_KEY),  # type: ignore[arg-type]
    )


def auth(role: str = "till") -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


@dataclass
class Till:
    app: ServiceApp[OffersService]
    broker: Any
    http: httpx.AsyncClient
    offers: list[OfferEvent] = field(default_factory=list)

    def of_type(self, kind: str) -> list[Any]:
        return [e for e in self.offers if e.type == kind]

    async def basket(self, path: str, lines: list[dict[str, Any]], **body: Any) -> httpx.Response:
        payload = {"card_number": CARD, "store_id": "S001", "lines": lines, **body}
        return await self.http.post(path, json=payload, headers=auth())


MILK = {"sku": "milk", "quantity": 2, "unit_price": "1.50", "category": "Dairy"}
BREAD = {"sku": "BREAD", "quantity": 1, "unit_price": "2,00", "category": "bakery"}


@pytest.fixture
async def till() -> AsyncIterator[Till]:
    repository = await SqliteOffersRepository.open(StoreLocation.parse("memory://"))
    app = create_app(
        settings(), repository=repository, rules=OfferRules(holdout=HoldOut(percent=Decimal(0)))
    )
    collected: list[OfferEvent] = []

    @app.broker.subscriber(OFFERS, batch=False)
    async def collect(_: object, message: KafkaMessage) -> None:
        collected.append(OFFER_EVENT.validate_json(message.body))

    api = FastAPI()
    api.include_router(
        build_router(
            TillApi(settings(), app=app),
            TokenTable.parse(settings().http.api_tokens.get_secret_value()),
        )
    )  # type: ignore[union-attr]
    async with (
        TestKafkaBroker(app.broker) as broker,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://till") as http,
    ):
        yield Till(app, broker, http, collected)
    await repository.close()


async def milk_coupon(till: Till) -> OfferIssued:
    """The card's customer buys milk three times (the last today): a milk coupon."""
    card = card_id(CARD, CARD_KEY.encode())
    customer = "c-till"
    first = signup(dt.datetime(2020, 1, 1, tzinfo=UTC), customer=customer)
    await till.broker.publish(
        dump(first.model_copy(update={"card_ids": (card,)})), PROFILES_CHANGED
    )
    now = dt.datetime.now(UTC) - dt.timedelta(minutes=5)
    for n, days in enumerate((6, 3, 0)):
        await till.broker.publish(
            dump(purchase(f"m-{n}", now - dt.timedelta(days=days), ("MILK",), customer=customer)),
            PROFILES_CHANGED,
        )
    [offer] = till.of_type("offer_issued")
    return offer  # type: ignore[no-any-return]


async def test_a_product_coupon_is_valid_with_its_product_and_gives_its_discount(
    till: Till,
) -> None:
    offer = await milk_coupon(till)
    response = await till.basket(
        "/api/coupons/validate", [MILK, BREAD], code=offer.coupon_code.lower()
    )
    assert response.status_code == 200
    assert response.json() == {
        "valid": True,
        "reason": None,
        "discount": "0.30",  # 10 % of the milk (2 x 1.50), not of the bread
        "offer_id": offer.offer_id,
        "held_until": None,
    }


async def test_every_reason_a_code_is_refused(till: Till) -> None:
    offer = await milk_coupon(till)

    async def reason(lines: list[dict[str, Any]], code: str, **body: Any) -> str | None:
        response = await till.basket("/api/coupons/validate", lines, code=code, **body)
        assert response.status_code == 200, response.text
        assert response.json()["discount"] == "0" or response.json()["valid"]
        return response.json()["reason"]  # type: ignore[no-any-return]

    assert await reason([BREAD], offer.coupon_code) == "not_in_basket"
    assert await reason([MILK], "NOPE-NOPE-NOPE") == "unknown_code"
    assert (
        await reason([MILK], offer.coupon_code, card_number="6035 0000 0000 0001") == "foreign_code"
    )
    repository = till.app.service.repository
    stored = await repository.offer_by_code(offer.coupon_code)
    assert stored is not None
    for state, expected in (
        ("redeemed", "already_redeemed"),
        ("revoked", "revoked"),
        ("expired", "expired"),
    ):
        await repository.save(Changes(offers=[stored.model_copy(update={"state": state})]))
        assert await reason([MILK], offer.coupon_code) == expected


async def test_applicable_coupons_of_a_swiped_card_with_their_discounts(till: Till) -> None:
    offer = await milk_coupon(till)
    response = await till.basket("/api/coupons/applicable", [MILK, BREAD])
    assert response.status_code == 200
    assert response.json() == {
        "coupons": [
            {
                "code": offer.coupon_code,
                "offer_id": offer.offer_id,
                "kind": "frequent_item",
                "discount": "0.30",
            }
        ]
    }
    assert (await till.basket("/api/coupons/applicable", [BREAD])).json() == {"coupons": []}
    unknown = await till.basket(
        "/api/coupons/applicable", [MILK], card_number="6035 0000 0000 0001"
    )
    assert unknown.json() == {"coupons": []}


async def test_parallel_lanes_and_duplicate_checkouts_redeem_a_coupon_exactly_once(
    till: Till,
) -> None:
    offer = await milk_coupon(till)
    answers = await asyncio.gather(
        *(
            till.basket(
                "/api/coupons/validate",
                [MILK],
                code=offer.coupon_code,
                reserve=True,
                lane=f"lane-{n}",
            )
            for n in range(8)
        )
    )
    valid = [a.json() for a in answers if a.json()["valid"]]
    assert len(valid) == 1
    assert valid[0]["held_until"] is not None
    refused = {a.json()["reason"] for a in answers if not a.json()["valid"]}
    assert refused == {"already_redeemed"}
    # Every lane's checkout lists the code anyway, and the winner's is delivered twice.
    now = dt.datetime.now(UTC)
    checkouts = [
        purchase(
            f"lane-{n}",
            now + dt.timedelta(seconds=n),
            ("MILK",),
            customer="c-till",
            coupons=(offer.coupon_code,),
            amounts={"MILK": "3.00"},  # the basket the lane validated
        )
        for n in range(3)
    ]
    for checkout in (checkouts[0], checkouts[0], checkouts[1], checkouts[2]):
        await till.broker.publish(dump(checkout), PROFILES_CHANGED)
    [redeemed] = till.of_type("offer_redeemed")
    assert redeemed.checkout_event_id == "lane-0"
    assert redeemed.discount == Decimal("0.30")
    assert sorted(r.reason for r in till.of_type("redemption_rejected")) == ["already_redeemed"] * 2
    # The checkout released the hold: the code now answers for what it is.
    after = await till.basket(
        "/api/coupons/validate", [MILK], code=offer.coupon_code, lane="lane-5"
    )
    assert after.json()["reason"] == "already_redeemed"


async def test_the_till_api_needs_the_till_role(till: Till) -> None:
    body = {"card_number": CARD, "store_id": "S001", "lines": [MILK], "code": "X"}
    assert (await till.http.post("/api/coupons/validate", json=body)).status_code == 401
    wrong = {"Authorization": "Bearer not-a-token"}
    assert (
        await till.http.post("/api/coupons/validate", json=body, headers=wrong)
    ).status_code == 401
    for path in ("/api/coupons/validate", "/api/coupons/applicable"):
        answer = await till.http.post(path, json=body, headers=auth("marketing"))
        assert answer.status_code == 403
    decisions = await till.http.get("/api/customers/c-till/decisions", headers=auth("till"))
    assert decisions.status_code == 403


async def test_agents_see_why_a_customer_got_or_did_not_get_a_coupon(till: Till) -> None:
    offer = await milk_coupon(till)
    await till.broker.publish(
        dump(
            change(
                "k-1",
                dt.datetime.now(UTC),
                "consent_changed",
                customer="c-till",
                consent_given=False,
            )
        ),
        PROFILES_CHANGED,
    )
    now = dt.datetime.now(UTC) + dt.timedelta(minutes=1)
    await till.broker.publish(
        dump(purchase("m-9", now, ("MILK",), customer="c-till")), PROFILES_CHANGED
    )
    response = await till.http.get("/api/customers/c-till/decisions", headers=auth("agent"))
    assert response.status_code == 200
    decisions = response.json()["decisions"]
    assert [(d["outcome"], d["reason"]) for d in decisions] == [
        ("suppressed", "consent"),
        ("issued", None),
    ]
    assert decisions[1]["coupon_code"] == offer.coupon_code
    assert decisions[1]["trigger"]["event_ids"] == ["m-0", "m-1", "m-2"]
    assert (
        await till.http.get("/api/customers/c-nobody/decisions", headers=auth("agent"))
    ).status_code == 404
