"""The readable reports over HTTP, as the bytes the process's app sends: the campaigns' period and
headline, stores and teams against goals pro-rated to the days elapsed (from `CRM_STORE_GOALS`
and `CRM_STORE_TEAMS`), and what is bought together, from events through FastStream's
TestKafkaBroker."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from faststream.kafka import TestKafkaBroker
from typer.testing import CliRunner

from crm.cli import cli
from services.reports.app import create_app
from services.reports.service import ReportsService
from services.reports.store import open_repository
from services.reports.store_sqlite import SqliteReportsRepository
from shared.auth import token_hash
from shared.edge import dump
from shared.events import OfferHeldOut, OfferIssued, PurchaseLine, PurchaseRecorded
from shared.http import HttpEndpoints
from shared.settings import HttpSettings, KafkaSettings, Settings, StoreSettings
from shared.skeleton import ServiceApp
from shared.storage import StoreLocation
from shared.topics import EVENTS, OFFERS

AS_OF = dt.date(2026, 4, 10)  # day 10 of a 30-day month
HEADERS = {"Authorization": "Bearer m-token"}
BASKETS = ["BREAD JAM", "BREAD JAM", "BREAD JAM", "BREAD", "MILK", "MILK COFFEE", "MILK COFFEE"]


def checkout(n: int, day: dt.date, skus: str, store: str, total: str) -> PurchaseRecorded:
    amount = Decimal(total)
    return PurchaseRecorded(
        event_id=f"p{n}",
        occurred_at=dt.datetime.combine(day, dt.time(12), tzinfo=dt.UTC),
        customer_id=f"c{n % 4}",
        card_id=None,
        store_id=store,
        currency="EUR",
        total=amount,
        lines=tuple(
            PurchaseLine(sku=sku, quantity=Decimal(1), unit_price=amount, amount=amount)
            for sku in skus.split()
        ),
    )


def offered(n: int, monday: dt.date, held_out: bool) -> OfferIssued | OfferHeldOut:
    common = {
        "offer_id": f"o{n}",
        "customer_id": f"c{n % 4}",
        "kind": "birthday",
        "valid_from": monday,
        "valid_until": monday + dt.timedelta(days=6),
    }
    at = dt.datetime.combine(monday, dt.time(8), tzinfo=dt.UTC)
    if held_out:
        return OfferHeldOut(**common, period=f"{monday:%G-W%V}", decided_at=at)
    return OfferIssued(
        **common,
        coupon_code=f"CODE-{n}",
        discount_percent=Decimal(10),
        issued_at=at,
        template="birthday",
    )


async def publish_the_events(app: ServiceApp[ReportsService]) -> None:
    async with TestKafkaBroker(app.broker) as broker:
        for n, skus in enumerate(BASKETS):
            store = "S001" if n % 2 else "S002"
            await broker.publish(dump(checkout(n, AS_OF, skus, store, "100")), EVENTS, key=b"k")
        # offers of the current week and of 20 weeks before it
        for n in range(6):
            monday = AS_OF - dt.timedelta(days=AS_OF.weekday() + (140 if n >= 4 else 0))
            event = offered(n, monday, held_out=n == 3)
            await broker.publish(dump(event), OFFERS, key=b"k")


@pytest.fixture
async def client(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    monkeypatch.setenv("CRM_STORE_GOALS", json.dumps({"S001": {"revenue": "3000", "visits": 30}}))
    monkeypatch.setenv("CRM_STORE_TEAMS", json.dumps({"North": ["S001", "S002"]}))
    settings = Settings(
        kafka=KafkaSettings(kafka_bootstrap="localhost:9092"),
        store=StoreSettings(store_url="memory://"),
        http=HttpSettings(api_tokens=f"marketing:{token_hash('m-token')}"),
    )
    repository = await SqliteReportsRepository.open(StoreLocation.parse("memory://"))
    app = create_app(settings, repository=repository)
    await publish_the_events(app)
    api = HttpEndpoints([app], settings).api
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://reports") as http:
        yield http
    await repository.close()


async def test_stores_and_teams_are_reported_against_the_goal_due_by_today(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/api/reports/stores", headers=HEADERS)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.content
    # S001: 3 checkouts of 100 against 1000 due by day 10 of 30 (a third of the 3000)
    assert (
        b'{"store_id":"S001","revenue":"300","visits":3,'
        b'"revenue_goal":"3000","visits_goal":30,"revenue_percent_of_goal":"10.0",'
        b'"visits_percent_of_goal":"10.0","revenue_goal_to_date":"1000.00",'
        b'"visits_goal_to_date":"10.00","revenue_percent_of_goal_to_date":"30.0",'
        b'"visits_percent_of_goal_to_date":"30.0","teams":["North"]}'
    ) in body
    assert b'"days_elapsed":10,"days_in_month":30' in body
    assert (
        b'"teams":[{"team":"North","stores":["S001","S002"],"revenue":"700","visits":7,'
        b'"revenue_goal":"3000"'
    ) in body
    teams = await client.get("/api/charts/teams.svg", headers=HEADERS)
    assert teams.headers["content-type"] == "image/svg+xml"
    assert b'aria-label="Team revenue against goal, 2026-04 (day 10 of 30)"' in teams.content


async def test_products_list_the_pairs_bought_together_with_support_confidence_and_lift(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/api/reports/products", headers=HEADERS)
    assert response.status_code == 200
    # 7 checkouts: BREAD in 4, JAM in 3, together 3; MILK in 3, COFFEE in 2, together 2
    assert (
        b'"bought_together":{"start":"2026-03-14","as_of":"2026-04-10","baskets":7,'
        b'"min_support":"0.01","pairs":[{"sku_a":"COFFEE","sku_b":"MILK","baskets":2,'
        b'"support":"0.2857","confidence_a_b":"1.0000","confidence_b_a":"0.6667",'
        b'"lift":"2.33"},{"sku_a":"BREAD","sku_b":"JAM","baskets":3,"support":"0.4286",'
        b'"confidence_a_b":"0.7500","confidence_b_a":"1.0000","lift":"1.75"}]}'
    ) in response.content
    one_day = await client.get("/api/reports/products?weeks=1&format=csv", headers=HEADERS)
    assert b"# bought together (2026-04-04 to 2026-04-10, 7 checkouts" in one_day.content
    assert b"\nCOFFEE,MILK,2,0.2857,1.0000,0.6667,2.33\n" in one_day.content


async def test_the_campaigns_headline_counts_the_chosen_period_only(
    client: httpx.AsyncClient,
) -> None:
    recent = await client.get("/api/reports/campaigns?weeks=12", headers=HEADERS)
    assert recent.status_code == 200
    assert b'"since":"2026-01-19","weeks":["2026-W04",' in recent.content
    assert b'"headline":{"eligible":4,"held_out":1,"issued":3,' in recent.content
    every = await client.get("/api/reports/campaigns", headers=HEADERS)
    assert b'"since":null,"weeks":[],"headline":{"eligible":6,"held_out":1,"issued":5,' in (
        every.content
    )
    refused = await client.get("/api/reports/campaigns?weeks=0", headers=HEADERS)
    assert refused.status_code == 422
    chart = await client.get("/api/charts/issued.svg?weeks=4", headers=HEADERS)
    assert chart.status_code == 200
    # four weeks on the axis, labelled week first
    assert b"W15 2026" in chart.content
    assert b"W11 2026" not in chart.content


async def test_crm_report_prints_the_pairs_bought_together_and_the_teams_from_the_read_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_url = f"sqlite:///{tmp_path / 'store'}"
    settings = Settings(
        kafka=KafkaSettings(kafka_bootstrap="localhost:9092"),
        store=StoreSettings(store_url=store_url),
    )
    async with open_repository(settings.store) as repository:
        await publish_the_events(create_app(settings, repository=repository))
    env = {
        "CRM_STORE_URL": store_url,
        "CRM_STORE_GOALS": json.dumps({"S001": {"revenue": "3000", "visits": 30}}),
        "CRM_STORE_TEAMS": json.dumps({"North": ["S001", "S002"]}),
    }
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(cli, ["report", *args, "--as-of", str(AS_OF)], env=env)
        assert result.exit_code == 0, result.output
        return result.output

    products = await asyncio.to_thread(run, "products", "--format", "csv", "--weeks", "1")
    assert "# bought together (2026-04-04 to 2026-04-10, 7 checkouts" in products
    assert "\nBREAD,JAM,3,0.4286,0.7500,1.0000,1.75\n" in products
    stores = json.loads(await asyncio.to_thread(run, "stores", "--format", "json"))
    (north,) = stores["teams"]
    assert (north["team"], north["stores"], north["revenue"]) == ("North", ["S001", "S002"], "700")
    assert north["revenue_goal_to_date"] == "1000.00"
    refused = await asyncio.to_thread(
        runner.invoke, cli, ["report", "campaigns", "--weeks", "0"], env=env
    )
    assert refused.exit_code != 0
    # On an 80-column terminal every table fits, whole: wide ones in groups of columns that
    # each start with what names the row, a one-row headline as one line per figure.
    wide = {**env, "COLUMNS": "80"}
    for name in ("campaigns", "products", "stores", "sentiment"):
        result = await asyncio.to_thread(
            runner.invoke, cli, ["report", name, "--as-of", str(AS_OF)], env=wide
        )
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert [line for line in lines if len(line) > 80] == [], name
        assert "…" not in result.output, name
    campaigns = await asyncio.to_thread(
        runner.invoke, cli, ["report", "campaigns", "--as-of", str(AS_OF)], env=wide
    )
    assert "(1 of " in campaigns.output
    assert "│ lift_high " in campaigns.output  # the headline, one figure per line
