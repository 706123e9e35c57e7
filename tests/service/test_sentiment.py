"""Sentiment, through the services' real interfaces: raw social likes, dislikes and support
tickets go through ingest (FastStream's TestKafkaBroker, one key vault); the records it
publishes on `crm.events` are fed to profiles and to reports; the agent's look-up and the
marketing report are read over HTTP from the processes' apps (an ASGI client)."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from faststream.kafka import TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage
from typer.testing import CliRunner

from crm.cli import cli
from services.ingest.app import create_app as create_ingest
from services.ingest.store_sqlite import SqliteIngestRepository
from services.profiles.app import create_app as create_profiles
from services.profiles.store_sqlite import SqliteProfilesRepository
from services.reports.app import create_app as create_reports
from services.reports.service import ReportsService
from services.reports.store import open_repository
from services.reports.store_sqlite import SqliteReportsRepository
from shared.auth import token_hash
from shared.edge import Source
from shared.events import NORMALIZED_EVENT
from shared.http import HttpEndpoints
from shared.privacy import card_id, customer_id_for_card
from shared.settings import DEV_CARD_KEY, HttpSettings, KafkaSettings, Settings, StoreSettings
from shared.storage import StoreLocation
from shared.topics import CUSTOMERS_RAW, EVENTS, INTERACTIONS_RAW
from shared.vault import sealed_decoder
from shared.vault_sqlite import SqliteVault

ANA, BEN = "6035 1234 5678 9012", "6035-0000-0000-0042"
NOTE = "Ana says the Acme beans arrived crushed at Rua das Flores"
MONDAY = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)  # ISO week 2026-W10
TOKENS = {"agent": "agent-token", "marketing": "marketing-token", "admin": "admin-token"}

Record = tuple[bytes | None, bytes]


def settings() -> Settings:
    tokens = ",".join(f"{role}:{token_hash(token)}" for role, token in TOKENS.items())
    return Settings(
        kafka=KafkaSettings(kafka_bootstrap="test:9092"),
        store=StoreSettings(store_url="memory://"),
        http=HttpSettings(api_tokens=tokens),
    )


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def customer(card: str) -> str:
    return customer_id_for_card(card_id(card, DEV_CARD_KEY.encode()))


def interaction(
    event_id: str, kind: str, card: str, days: int, details: dict[str, Any]
) -> tuple[str, bytes]:
    document = {
        "event_id": event_id,
        "type": kind,
        "occurred_at": (MONDAY + dt.timedelta(days=days)).isoformat(),
        "card_number": card,
        "channel": "social",
        "details": details,
    }
    return INTERACTIONS_RAW, json.dumps(document).encode()


SIGNUP = {
    "event_id": "s-1",
    "type": "signup",
    "occurred_at": MONDAY.isoformat(),
    "card_number": ANA,
    "email": "ana@example.com",
    "marketing_consent": True,
}
RAW = [
    (CUSTOMERS_RAW, json.dumps(SIGNUP).encode()),
    # week 2026-W10
    interaction("i-1", "social_like", ANA, 0, {"brand": "Acme", "category": "Coffee"}),
    interaction("i-2", "Social_Like", BEN, 1, {"brand": " ACME ", "category": "coffee"}),
    interaction(
        "i-3",
        "support_ticket",
        ANA,
        2,
        {"brand": "Acme", "category": "Coffee", "sentiment": "Negative", "note": NOTE},
    ),
    interaction("i-4", "social_dislike", BEN, 3, {"brand": "Globex"}),
    # week 2026-W11
    interaction("i-5", "support_ticket", BEN, 7, {"brand": "Acme", "sentiment": "neutral"}),
    interaction("i-6", "social_like", ANA, 8, {"category": "Dairy"}),
    # no opinion: no brand or category, or no sentiment
    interaction("i-7", "social_like", ANA, 8, {"topic": "summer"}),
    interaction("i-8", "web_visit", ANA, 8, {"brand": "Acme"}),
]


@dataclass
class Published:
    records: list[Record]
    vault: SqliteVault


async def through_ingest(vault: SqliteVault, *messages: tuple[str, bytes]) -> list[Record]:
    repository = await SqliteIngestRepository.open(StoreLocation.parse("memory://"))
    app = create_ingest(settings(), repository=repository, vault=vault)
    published: list[Record] = []

    @app.broker.subscriber(EVENTS)
    async def collect(message: KafkaMessage) -> None:
        published.append((message.raw_message.key, message.body))  # type: ignore[union-attr]

    async with TestKafkaBroker(app.broker) as broker:
        for topic, value in messages:
            await broker.publish(value, topic, key=b"S001")
    await repository.close()
    return published


@pytest.fixture
async def published() -> AsyncIterator[Published]:
    vault = await SqliteVault.open(StoreLocation.parse("memory://"))
    yield Published(await through_ingest(vault, *RAW), vault)
    await vault.close()


async def reports_client(records: list[Record]) -> tuple[httpx.AsyncClient, Any]:
    repository = await SqliteReportsRepository.open(StoreLocation.parse("memory://"))
    app = create_reports(settings(), repository=repository)
    async with TestKafkaBroker(app.broker) as broker:
        for key, value in records:
            await broker.publish(value, EVENTS, key=key)
    transport = httpx.ASGITransport(app=HttpEndpoints([app], settings()).api)
    return httpx.AsyncClient(transport=transport, base_url="http://reports"), repository


async def test_ingest_publishes_the_opinion_open_and_the_details_sealed(
    published: Published,
) -> None:
    by_id = {json.loads(v)["event_id"]: json.loads(v) for _, v in published.records}
    ticket = by_id["interaction:i-3"]
    assert (ticket["sentiment"], ticket["brand"], ticket["category"]) == (
        "negative",
        "acme",
        "coffee",
    )
    assert set(ticket["details"]) >= {"kid"}  # one sealed envelope
    assert all(NOTE.encode() not in value for _, value in published.records)
    assert all(b"Rua das Flores" not in value for _, value in published.records)
    like = by_id["interaction:i-2"]
    assert (like["sentiment"], like["brand"], like["category"]) == ("positive", "acme", "coffee")
    dislike = by_id["interaction:i-4"]
    assert (dislike["sentiment"], dislike["brand"], dislike["category"]) == (
        "negative",
        "globex",
        None,
    )
    visit = by_id["interaction:i-8"]
    assert (visit["sentiment"], visit["brand"]) == (None, "acme")


async def test_marketing_reads_sentiment_per_brand_and_category_per_iso_week(
    published: Published,
) -> None:
    # Every record twice and the second half first: the facts are the set of events.
    records = published.records[4:] + published.records + published.records[:4]
    client, repository = await reports_client(records)
    async with client:
        response = await client.get("/api/reports/sentiment", headers=auth("marketing"))
        csv_response = await client.get(
            "/api/reports/sentiment?format=csv", headers=auth("marketing")
        )
        refused = await client.get("/api/reports/sentiment", headers=auth("agent"))
        anonymous = await client.get("/api/reports/sentiment")
    await repository.close()
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    report = response.json()
    assert report["name"] == "sentiment"
    assert report["as_of"] == "2026-03-10"
    rows = {(r["dimension"], r["label"], r["week"]): r for r in report["rows"]}
    figures = {
        k: (r["positive"], r["neutral"], r["negative"], r["net_score"]) for k, r in rows.items()
    }
    assert figures == {
        ("brand", "acme", "2026-W10"): (2, 0, 1, "33.3"),
        ("brand", "acme", "2026-W11"): (0, 1, 0, "0.0"),
        ("brand", "acme", "all"): (2, 1, 1, "25.0"),
        ("brand", "globex", "2026-W10"): (0, 0, 1, "-100.0"),
        ("brand", "globex", "all"): (0, 0, 1, "-100.0"),
        ("category", "coffee", "2026-W10"): (2, 0, 1, "33.3"),
        ("category", "coffee", "all"): (2, 0, 1, "33.3"),
        ("category", "dairy", "2026-W11"): (1, 0, 0, "100.0"),
        ("category", "dairy", "all"): (1, 0, 0, "100.0"),
    }  # fmt: skip
    assert [k for k in rows] == sorted(rows)  # brands, then categories; weeks, then `all`
    assert rows[("brand", "acme", "all")]["total"] == 4

    assert csv_response.status_code == 200
    assert csv_response.headers["content-type"].startswith("text/csv")
    title, table = csv_response.text.split("\n", 1)
    assert title == "# sentiment per brand and category (2025-12-22 to 2026-03-10)"
    lines = list(csv.reader(io.StringIO(table)))
    assert lines[0] == [
        "dimension", "label", "week", "positive", "neutral", "negative", "total", "net_score"
    ]  # fmt: skip
    assert ["brand", "acme", "all", "2", "1", "1", "4", "25.0"] in lines
    assert len(lines) == 1 + len(rows)

    assert refused.status_code == 403
    assert anonymous.status_code == 401


async def test_a_period_chosen_by_weeks_or_dates_counts_only_its_days(
    published: Published,
) -> None:
    client, repository = await reports_client(published.records)
    async with client:
        last_week = await client.get("/api/reports/sentiment?weeks=1", headers=auth("marketing"))
        first_week = await client.get(
            "/api/reports/sentiment?since=2026-03-02&as_of=2026-03-08", headers=auth("marketing")
        )
    await repository.close()
    assert {r["week"] for r in last_week.json()["rows"]} == {"2026-W11", "all"}
    assert last_week.json()["since"] == "2026-03-09"  # that ISO week's Monday
    assert {r["week"] for r in first_week.json()["rows"]} == {"2026-W10", "all"}


async def test_an_erased_customers_opinions_stay_counted_and_are_unlinked_from_them(
    published: Published,
) -> None:
    erase = {
        "event_id": "x-1",
        "type": "erase",
        "occurred_at": (MONDAY + dt.timedelta(days=9)).isoformat(),
        "card_number": ANA,
    }
    erasure = await through_ingest(published.vault, (CUSTOMERS_RAW, json.dumps(erase).encode()))
    client, repository = await reports_client(published.records + erasure)
    async with client:
        export = await client.get(
            f"/api/admin/customers/{customer(ANA)}/export/reports", headers=auth("admin")
        )
        others = await client.get(
            f"/api/admin/customers/{customer(BEN)}/export/reports", headers=auth("admin")
        )
        report = await client.get("/api/reports/sentiment", headers=auth("marketing"))
    await repository.close()
    assert export.status_code == 200
    assert export.json()["data"]["facts"] == []
    assert {f["kind"] for f in others.json()["data"]["facts"]} == {"opinion"}
    rows = {(r["dimension"], r["label"], r["week"]): r for r in report.json()["rows"]}
    assert rows[("brand", "acme", "all")]["total"] == 4


async def test_the_agents_look_up_shows_the_customers_sentiment_summary(
    published: Published,
) -> None:
    repository = await SqliteProfilesRepository.open(StoreLocation.parse("memory://"))
    app = create_profiles(settings(), repository=repository, vault=published.vault)
    async with TestKafkaBroker(app.broker) as broker:
        for key, value in reversed(published.records):
            await broker.publish(value, EVENTS, key=key)
    transport = httpx.ASGITransport(app=HttpEndpoints([app], settings()).api)
    async with httpx.AsyncClient(transport=transport, base_url="http://profiles") as client:
        response = await client.post(
            "/api/customers/lookup", json={"card_number": ANA}, headers=auth("agent")
        )
    await repository.close()
    assert response.status_code == 200
    view = response.json()
    assert view["sentiment_by_brand"] == [
        {"label": "acme", "positive": 1, "neutral": 0, "negative": 1, "net_score": "0.0"}
    ]
    assert view["sentiment_by_category"] == [
        {"label": "coffee", "positive": 1, "neutral": 0, "negative": 1, "net_score": "0.0"},
        {"label": "dairy", "positive": 1, "neutral": 0, "negative": 0, "net_score": "100.0"},
    ]


async def test_crm_report_sentiment_prints_the_report_of_the_read_model(
    published: Published, tmp_path: Path
) -> None:
    store_url = f"sqlite:///{tmp_path / 'store'}"
    async with open_repository(StoreSettings(store_url=store_url)) as repository:
        service = ReportsService(repository, calendar=settings().calendar)
        decode = sealed_decoder(NORMALIZED_EVENT, blind=True)
        events = [decode(Source(EVENTS, 0, n, k, v)) for n, (k, v) in enumerate(published.records)]
        facts = [f for f in map(service.fact_of, events) if f is not None]
        await repository.add(facts)
    run = partial(CliRunner().invoke, cli, env={"CRM_STORE_URL": store_url})
    as_csv = await asyncio.to_thread(run, ["report", "sentiment", "--format", "csv"])
    assert as_csv.exit_code == 0, as_csv.output
    assert "brand,acme,all,2,1,1,4,25.0" in as_csv.output
    assert "category,dairy,2026-W11,1,0,0,1,100.0" in as_csv.output
    week = await asyncio.to_thread(
        run, ["report", "sentiment", "--format", "json", "--since", "2026-03-09"]
    )
    assert week.exit_code == 0, week.output
    assert {r["week"] for r in json.loads(week.output)["rows"]} == {"2026-W11", "all"}
