"""The reports app through FastStream's TestKafkaBroker: events, offers and deliveries into facts."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient
from faststream.kafka import TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage
from typer.testing import CliRunner

from crm.cli import cli
from services.reports.app import SPEC, create_app
from services.reports.domain import campaigns_report, stores_report
from services.reports.store import open_repository
from services.reports.store_sqlite import SqliteReportsRepository
from shared.auth import token_hash
from shared.edge import dump
from shared.events import (
    CustomerErased,
    DeliveryRecorded,
    OfferHeldOut,
    OfferIssued,
    OfferRedeemed,
    OfferRevoked,
    PurchaseLine,
    PurchaseRecorded,
)
from shared.settings import HttpSettings, KafkaSettings, Settings, StoreSettings
from shared.storage import StoreLocation
from shared.topics import DEADLETTER, DELIVERIES, EVENTS, OFFERS

AT = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
DAY = AT.date()


def purchase(n: int, customer: str | None, total: str, hours: int = 3) -> PurchaseRecorded:
    amount = Decimal(total)
    return PurchaseRecorded(
        event_id=f"p{n}",
        occurred_at=AT + dt.timedelta(hours=hours),
        customer_id=customer,
        card_id=None,
        store_id="S001",
        currency="EUR",
        total=amount,
        lines=(PurchaseLine(sku="MILK", quantity=Decimal(1), unit_price=amount, amount=amount),),
    )


def offer(n: int, customer: str) -> OfferIssued:
    return OfferIssued(
        offer_id=f"o{n}",
        customer_id=customer,
        kind="birthday",
        coupon_code=f"CODE-{n}",
        discount_percent=Decimal(15),
        valid_from=DAY,
        valid_until=DAY + dt.timedelta(days=7),
        issued_at=AT,
        template="birthday",
    )


async def test_events_offers_and_deliveries_become_report_figures_once() -> None:
    repository = await SqliteReportsRepository.open(StoreLocation.parse("memory://"))
    settings = Settings(
        kafka=KafkaSettings(kafka_bootstrap="localhost:9092"),
        store=StoreSettings(store_url="memory://"),
    )
    app = create_app(settings, repository=repository)
    dead: list[bytes] = []

    @app.broker.subscriber(DEADLETTER, batch=False)
    async def on_dead(_: object, message: KafkaMessage) -> None:
        dead.append(message.body)

    held = OfferHeldOut(
        offer_id="o3",
        customer_id="c3",
        kind="birthday",
        period="2026-W10",
        valid_from=DAY,
        valid_until=DAY + dt.timedelta(days=7),
        decided_at=AT,
    )
    messages = [
        (EVENTS, purchase(1, "c1", "30")),
        (EVENTS, purchase(2, "c2", "10")),
        (EVENTS, purchase(3, "c3", "5")),
        (EVENTS, purchase(4, None, "7")),
        (OFFERS, offer(1, "c1")),
        (OFFERS, offer(2, "c2")),
        (OFFERS, held),
        (
            OFFERS,
            OfferRedeemed(
                offer_id="o1",
                customer_id="c1",
                kind="birthday",
                coupon_code="CODE-1",
                redeemed_at=AT,
                checkout_event_id="p1",
                store_id="S001",
                basket_total=Decimal(30),
            ),
        ),
        (
            DELIVERIES,
            DeliveryRecorded(
                offer_id="o1",
                customer_id="c1",
                state="sent",
                attempts=1,
                message_id="m1",
                recorded_at=AT,
            ),
        ),
        (
            DELIVERIES,
            DeliveryRecorded(
                offer_id="o2",
                customer_id="c2",
                state="written",
                attempts=1,
                message_id="m2",
                recorded_at=AT,
            ),
        ),
    ]
    async with TestKafkaBroker(app.broker) as broker:
        for _ in range(2):  # every message delivered twice: counted once
            for topic, event in messages:
                await broker.publish(dump(event), topic, key=b"k")
        await broker.publish(b"not json", EVENTS, key=b"k")
    facts = await repository.load()
    assert len(facts.purchases) == 4
    row = next(r for r in campaigns_report(facts, DAY).rows if r.week == "all")
    assert (row.eligible, row.issued, row.held_out, row.delivered, row.redeemed) == (3, 2, 1, 2, 1)
    assert row.treated_spend == Decimal("20.00")
    assert row.control_spend == Decimal("5.00")
    assert row.lift == Decimal("15.00")
    assert stores_report(facts, {}, DAY).rows[0].visits == 4
    assert app.service.stats["skipped_invalid"] == 1
    assert dead == []  # crm.events is ingest's: its owner dead-letters what does not decode

    async with TestKafkaBroker(app.broker) as broker:
        await broker.publish(
            dump(CustomerErased(event_id="x", occurred_at=AT, customer_id="c1")), EVENTS, key=b"k"
        )
    # The erased customer's facts are unlinked, and the figures and the lift still add up.
    assert await repository.facts_of_customer("c1") == []
    facts = await repository.load()
    assert "c1" not in facts.erased
    assert all(p.customer_id != "c1" for p in facts.purchases)
    after = next(r for r in campaigns_report(facts, DAY).rows if r.week == "all")
    assert after == row


def redeemed(n: int, customer: str, basket: str, discount: str) -> OfferRedeemed:
    return OfferRedeemed(
        offer_id=f"o{n}",
        customer_id=customer,
        kind="birthday",
        coupon_code=f"CODE-{n}",
        redeemed_at=AT + dt.timedelta(hours=3),
        checkout_event_id=f"p{n}",
        store_id="S001",
        basket_total=Decimal(basket),
        discount=Decimal(discount),
    )


def revoked(n: int, customer: str) -> OfferRevoked:
    return OfferRevoked(
        offer_id=f"o{n}",
        customer_id=customer,
        kind="birthday",
        coupon_code=f"CODE-{n}",
        reason="consent",
        revoked_at=AT + dt.timedelta(hours=1),
    )


async def test_revocations_reissues_and_discounts_reach_the_campaigns_report() -> None:
    repository = await SqliteReportsRepository.open(StoreLocation.parse("memory://"))
    settings = Settings(
        kafka=KafkaSettings(kafka_bootstrap="localhost:9092"),
        store=StoreSettings(store_url="memory://"),
    )
    app = create_app(settings, repository=repository)
    messages = [
        # o1 redeemed; o2 revoked after it was redeemed; o3 revoked, then issued again by a
        # later correction; o4's revocation overtook its offer (another partition).
        (OFFERS, offer(1, "c1"), b"c1"),
        (OFFERS, offer(2, "c2"), b"c2"),
        (OFFERS, offer(3, "c3"), b"c3"),
        (OFFERS, redeemed(1, "c1", "30.10", "4.515"), b"c1"),
        (OFFERS, redeemed(2, "c2", "20", "3"), b"c2"),
        (OFFERS, revoked(2, "c2"), b"c2"),
        (OFFERS, revoked(3, "c3"), b"c3"),
        (OFFERS, revoked(4, "c4"), b"c4-old"),
        (OFFERS, offer(3, "c3"), b"c3"),
        (OFFERS, offer(4, "c4"), b"c4"),
    ]
    async with TestKafkaBroker(app.broker) as broker:
        for topic, event, key in messages:
            await broker.publish(dump(event), topic, key=key)
        # The partitions of c1, c2 and c3 redelivered, each in its order: nothing changes.
        for topic, event, key in messages:
            if key in (b"c1", b"c2", b"c3"):
                await broker.publish(dump(event), topic, key=key)
    facts = await repository.load()
    assert facts.revoked == {"o2", "o4"}
    row = next(r for r in campaigns_report(facts, DAY).rows if r.week == "all")
    assert (row.eligible, row.issued, row.revoked, row.redeemed) == (2, 2, 2, 1)
    assert (row.revenue, row.discount) == (Decimal("30.10"), Decimal("4.515"))
    assert app.service.stats["facts_revocation"] == 5
    await repository.close()


async def test_the_static_campaigns_report_and_the_cli_read_the_read_model(tmp_path: Path) -> None:
    from services.reports.domain import Campaign
    from services.reports.static import write_static_report
    from services.reports.store import campaign_fact

    store_url = f"sqlite:///{tmp_path / 'store'}"
    async with open_repository(StoreSettings(store_url=store_url)) as repository:
        await repository.add(
            [
                campaign_fact(Campaign(f"o{i}", f"c{i}", "birthday", AT, DAY, DAY, held_out=i == 0))
                for i in range(5)
            ]
        )
    path = await asyncio.to_thread(
        write_static_report, store_url, tmp_path / "out" / "campaigns.html"
    )
    html = path.read_text(encoding="utf-8")
    assert html.count("<svg") == 2
    assert "<script" not in html  # works offline: nothing to run or fetch
    assert 'src="http' not in html
    assert "<link" not in html
    assert ">birthday<" in html
    result = await asyncio.to_thread(
        CliRunner().invoke,
        cli,
        ["report", "campaigns", "--format", "csv"],
        env={"CRM_STORE_URL": store_url},
    )
    assert result.exit_code == 0, result.output
    assert "birthday,all,5,1,4" in result.output


async def test_the_declared_routes_serve_the_running_services_reports() -> None:
    settings = Settings(
        kafka=KafkaSettings(kafka_bootstrap="localhost:9092"),
        http=HttpSettings(api_tokens=f"marketing:{token_hash('m-token')}"),
    )
    headers = {"Authorization": "Bearer m-token"}
    assert SPEC.routes is not None
    not_started = FastAPI()
    not_started.include_router(SPEC.routes(create_app(settings)))
    with TestClient(not_started) as client:
        assert client.get("/api/reports/stores", headers=headers).status_code == 503
        assert client.get("/ui/").status_code == 200

    repository = await SqliteReportsRepository.open(StoreLocation.parse("memory://"))
    app = create_app(settings, repository=repository)
    async with TestKafkaBroker(app.broker) as broker:
        await broker.publish(dump(purchase(1, "c1", "30")), EVENTS, key=b"k")
    started = FastAPI()
    started.include_router(SPEC.routes(app))
    with TestClient(started) as client:
        assert client.get("/api/reports/stores").status_code == 401
        stores = client.get("/api/reports/stores", headers=headers).json()
        assert [(r["store_id"], r["visits"]) for r in stores["rows"]] == [("S001", 1)]
        chart = client.get("/api/charts/stores.svg", headers=headers)
        assert chart.headers["content-type"] == "image/svg+xml"
    await repository.close()
