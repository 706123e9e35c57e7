"""What the reports routes send when the tills' data is hostile: SKUs that look like math text
or spreadsheet formulas, read from the raw bytes of the HTTP response of the process's app."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import matplotlib.pyplot as plt
import pytest
from faststream.kafka import TestKafkaBroker

from services.reports.app import create_app
from services.reports.store_sqlite import SqliteReportsRepository
from shared.auth import token_hash
from shared.edge import dump
from shared.events import PurchaseLine, PurchaseRecorded
from shared.http import HttpEndpoints
from shared.settings import HttpSettings, KafkaSettings, Settings, StoreSettings
from shared.storage import StoreLocation
from shared.topics import EVENTS

AT = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
HEADERS = {"Authorization": "Bearer m-token"}
SKUS = {
    "math": "$X^$",
    "frac": "$\\FRAC{}$",
    "formula": '=HYPERLINK("HTTP://EVIL.EXAMPLE","CLICK")',
    "plus": "+1+1",
    "at": "@SUM(A1)",
    "tab": "\tTAB",
    "minus": "-2+3",
}


def purchase(n: int, sku: str, total: str) -> PurchaseRecorded:
    amount = Decimal(total)
    return PurchaseRecorded(
        event_id=f"p{n}",
        occurred_at=AT,
        customer_id=f"c{n}",
        card_id=None,
        store_id="S001",
        currency="EUR",
        total=amount,
        lines=(
            PurchaseLine(
                sku=sku,
                name=sku,
                category="=cmd|' /c calc'!a0",
                quantity=Decimal(1),
                unit_price=amount,
                amount=amount,
            ),
        ),
    )


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        kafka=KafkaSettings(kafka_bootstrap="localhost:9092"),
        store=StoreSettings(store_url="memory://"),
        http=HttpSettings(api_tokens=f"marketing:{token_hash('m-token')}"),  # type: ignore[arg-type]
    )
    repository = await SqliteReportsRepository.open(StoreLocation.parse("memory://"))
    app = create_app(settings, repository=repository)
    async with TestKafkaBroker(app.broker) as broker:
        for n, sku in enumerate(SKUS.values()):
            await broker.publish(dump(purchase(n, sku, f"{10 + n}.50")), EVENTS, key=b"k")
    api = HttpEndpoints([app], settings).api
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://reports") as http:
        yield http
    await repository.close()


async def test_the_products_chart_shows_a_math_like_sku_literally_and_leaks_no_figure(
    client: httpx.AsyncClient,
) -> None:
    figures = plt.get_fignums()
    response = await client.get("/api/charts/products.svg", headers=HEADERS)
    again = await client.get("/api/charts/products.svg", headers=HEADERS)
    assert response.status_code == 200
    assert again.status_code == 200
    assert response.headers["content-type"] == "image/svg+xml"
    svg = response.content
    assert b"<svg" in svg
    assert b"$X^$" in svg  # drawn as written (the text is kept in the SVG beside its glyphs)
    assert b"$\\FRAC{}$" in svg
    assert plt.get_fignums() == figures


async def test_report_csv_cells_that_would_run_as_formulas_are_neutralised(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/api/reports/products?format=csv", headers=HEADERS)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    body = response.content
    # each hostile text cell starts with a quote; the CSV's own quoting wraps it where needed
    for row_start in (
        b"\n'+1+1,",
        b"\n'@SUM(A1),",
        b"\n'-2+3,",
        b"\n'\tTAB,",
        b'\n"\'=HYPERLINK(""HTTP://EVIL.EXAMPLE"",""CLICK"")",',
        b"\n'=cmd|' /c calc'!a0,",
    ):
        assert row_start in body, row_start
    # no line (no first cell) starts like a formula, quoted or not
    for line in body.split(b"\n"):
        assert not line.lstrip(b'"').startswith((b"=", b"+", b"-", b"@", b"\t", b"\r")), line
    # money stays a number: no figure is prefixed
    assert b",'" not in body.replace(b"\n'", b"")
