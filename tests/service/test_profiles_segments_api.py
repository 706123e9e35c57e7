"""Marketing's segments API over HTTP, on the profiles service and FastStream's test broker."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
import structlog
from fastapi import FastAPI
from faststream.kafka import TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage

from services.profiles.app import create_app, routes
from services.profiles.service import ProfilesService
from services.profiles.store_sqlite import SqliteProfilesRepository
from shared.auth import token_hash
from shared.events import CustomerSignedUp, NormalizedEvent, PurchaseLine, PurchaseRecorded
from shared.settings import HttpSettings, KafkaSettings, Settings, StoreSettings
from shared.skeleton import ServiceApp
from shared.storage import StoreLocation
from shared.topics import EVENTS, SEGMENT_DEFINITIONS, SEGMENTS

T0 = dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)
NOW = dt.datetime(2026, 3, 3, 9, 0, tzinfo=dt.UTC)
TOKENS = {role: f"{role}-secret-token" for role in ("agent", "marketing", "till", "admin")}
VIP = {"name": "coffee-lovers", "rule": {"bought": [{"sku": "COFFEE", "min_checkouts": 2}]}}


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


@dataclass
class Api:
    app: ServiceApp[ProfilesService]
    repo: SqliteProfilesRepository
    client: httpx.AsyncClient
    definitions: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    segments: list[tuple[bytes | None, bytes]] = field(default_factory=list)

    def changes(self, segment: str) -> list[dict[str, Any]]:
        found = [orjson.loads(v) for _, v in self.segments]
        return [c for c in found if c["segment"] == segment]

    async def fold(self, *events: NormalizedEvent) -> None:
        for event in events:
            key = (event.customer_id or "").encode()
            await self.app.broker.publish(event.model_dump_json().encode(), EVENTS, key=key)


def settings() -> Settings:
    tokens = ",".join(f"{role}:{token_hash(token)}" for role, token in TOKENS.items())
    return Settings(
        kafka=KafkaSettings(kafka_bootstrap="test:9092"),
        store=StoreSettings(store_url="memory://"),
        http=HttpSettings(api_tokens=tokens),
    )


async def open_api(repo: SqliteProfilesRepository) -> AsyncIterator[Api]:
    app = create_app(settings(), repository=repo, clock=lambda: NOW, page_size=2)
    web = FastAPI()
    web.include_router(routes(app))
    transport = httpx.ASGITransport(app=web)
    definitions: list[tuple[bytes | None, bytes]] = []
    segments: list[tuple[bytes | None, bytes]] = []

    @app.broker.subscriber(SEGMENT_DEFINITIONS, batch=False)
    async def on_definition(_: Any, message: KafkaMessage) -> None:
        definitions.append((message.raw_message.key, message.body))  # type: ignore[union-attr]

    @app.broker.subscriber(SEGMENTS, batch=False)
    async def on_segment(_: Any, message: KafkaMessage) -> None:
        segments.append((message.raw_message.key, message.body))  # type: ignore[union-attr]

    async with (
        TestKafkaBroker(app.broker),
        httpx.AsyncClient(transport=transport, base_url="http://crm.test") as client,
    ):
        yield Api(app, repo, client, definitions, segments)


def signup(customer: str, first_name: str, email: str, consent: bool) -> CustomerSignedUp:
    return CustomerSignedUp(
        event_id=f"s-{customer}",
        occurred_at=T0 - dt.timedelta(days=5),
        customer_id=customer,
        card_id=f"card-hash-{customer}",
        email=email,
        first_name=first_name,
        marketing_consent=consent,
    )


def coffee(event_id: str, customer: str, days_ago: int) -> PurchaseRecorded:
    line = PurchaseLine(
        sku="COFFEE", quantity=Decimal(1), unit_price=Decimal("8.50"), amount=Decimal("8.50")
    )
    return PurchaseRecorded(
        event_id=event_id,
        occurred_at=T0 - dt.timedelta(days=days_ago),
        customer_id=customer,
        card_id=f"card-hash-{customer}",
        store_id="S001",
        currency="EUR",
        lines=(line,),
        total=Decimal("8.50"),
    )


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    repo = await SqliteProfilesRepository.open(StoreLocation.parse("memory://"))
    async for opened in open_api(repo):
        await opened.fold(
            signup("c-1", "Ana", "ana@example.com", True),
            coffee("p1", "c-1", 3),
            coffee("p2", "c-1", 1),
            signup("c-2", '=HYPERLINK("http://evil.test")', "bob@example.com", False),
            coffee("p3", "c-2", 2),
            coffee("p4", "c-2", 1),
            signup("c-3", "@SUM(1+1)", "-eve@example.com", True),
            coffee("p5", "c-3", 1),
            signup("c-4", "\tTab", "tab@example.com", True),
            coffee("p6", "c-4", 2),
            coffee("p7", "c-4", 1),
        )
        yield opened
    await repo.close()


ROUTES = (
    ("POST", "/api/segments", VIP),
    ("POST", "/api/segments/preview", {"rule": VIP["rule"]}),
    ("GET", "/api/segments", None),
    ("GET", "/api/segments/all", None),
    ("GET", "/api/segments/all/members.csv", None),
)


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
async def test_every_route_needs_a_marketing_token(
    api: Api, method: str, path: str, body: Any
) -> None:
    missing = await api.client.request(method, path, json=body)
    unknown = await api.client.request(
        method, path, json=body, headers={"Authorization": "Bearer nope"}
    )
    assert (missing.status_code, unknown.status_code) == (401, 401)
    assert missing.headers["www-authenticate"] == "Bearer"
    for role in ("agent", "till"):
        assert (
            await api.client.request(method, path, json=body, headers=auth(role))
        ).status_code == 403
    assert (
        await api.client.request(method, path, json=body, headers=auth("admin"))
    ).status_code in {
        200,
        201,
    }


async def test_a_new_segment_is_published_evaluated_at_once_and_counted(api: Api) -> None:
    response = await api.client.post("/api/segments", json=VIP, headers=auth("marketing"))
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "coffee-lovers"
    assert body["version"] == 1
    assert body["count"] == 3  # Ana, Bob and Tab bought coffee twice within 30 days
    assert body["builtin"] is False
    [(key, value)] = api.definitions
    assert key == b"coffee-lovers"
    record = orjson.loads(value)
    assert record["type"] == "segment_defined"
    assert record["version"] == 1
    assert record["defined_by"] == token_hash(TOKENS["marketing"])[:12]
    assert record["defined_at"] == "2026-03-03T09:00:00Z"
    entries = api.changes("coffee-lovers")
    assert [(c["customer_id"], c["type"]) for c in entries] == [
        ("c-1", "segment_entered"),
        ("c-2", "segment_entered"),
        ("c-4", "segment_entered"),
    ]
    assert {(c["cause_event_id"], c["at"], c["segment_version"]) for c in entries} == {
        ("segment:coffee-lovers:v1", "2026-03-03T09:00:00Z", 1)
    }
    got = await api.client.get("/api/segments/coffee-lovers", headers=auth("marketing"))
    assert got.json() == body
    # A swipe of Eve's then makes her enter, in the batch of the swipe.
    await api.fold(coffee("p8", "c-3", 0))
    assert [c["cause_event_id"] for c in api.changes("coffee-lovers")][-1] == "p8"
    again = await api.client.get("/api/segments/coffee-lovers", headers=auth("marketing"))
    assert again.json()["count"] == 4


async def test_saving_a_segment_again_makes_a_new_version_and_moves_its_members(
    api: Api,
) -> None:
    await api.client.post("/api/segments", json=VIP, headers=auth("marketing"))
    stricter = {
        "name": "coffee-lovers",
        "rule": {"bought": [{"sku": "COFFEE", "min_checkouts": 2}], "consent": True},
    }
    response = await api.client.post("/api/segments", json=stricter, headers=auth("admin"))
    assert response.status_code == 201
    assert (response.json()["version"], response.json()["count"]) == (2, 2)
    assert [orjson.loads(v)["version"] for _, v in api.definitions] == [1, 2]
    [left] = api.changes("coffee-lovers")[3:]
    assert (left["customer_id"], left["type"], left["cause_event_id"], left["segment_version"]) == (
        "c-2",
        "segment_exited",
        "segment:coffee-lovers:v2",
        2,
    )


@pytest.mark.parametrize("name", ["all", "rfm-champions", "rfm-mine"])
async def test_a_built_in_name_cannot_be_defined(api: Api, name: str) -> None:
    response = await api.client.post(
        "/api/segments", json={"name": name, "rule": {}}, headers=auth("marketing")
    )
    assert response.status_code == 409
    assert api.definitions == []


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"name": "Bad Name", "rule": {}}, ["body", "name"]),
        ({"name": "x", "rule": {"min_spend": "-1"}}, ["body", "rule", "min_spend"]),
        ({"name": "x", "rule": {"birthday_month": 13}}, ["body", "rule", "birthday_month"]),
        ({"name": "x", "rule": {"rfm_segment": ["royals"]}}, ["body", "rule", "rfm_segment", 0]),
        ({"name": "x", "rule": {"shoe_size": 42}}, ["body", "rule", "shoe_size"]),
        ({"name": "x", "rule": {}, "description": "d" * 501}, ["body", "description"]),
        (
            {"name": "x", "rule": {"bought": [{"sku": "A", "category": "b"}]}},
            ["body", "rule", "bought", 0],
        ),
        (
            {
                "name": "x",
                "rule": {"bought": [{"sku": "A", "min_checkouts": 2, "within_days": 60}]},
            },
            ["body", "rule", "bought", 0, "within_days"],
        ),
        ({"name": "x", "rule": {"home_store": ["S" * 65]}}, ["body", "rule", "home_store", 0]),
    ],
)
async def test_an_invalid_rule_is_refused_with_the_field_named(
    api: Api, body: dict[str, Any], loc: list[Any]
) -> None:
    response = await api.client.post("/api/segments", json=body, headers=auth("marketing"))
    assert response.status_code == 422
    assert loc in [error["loc"] for error in response.json()["detail"]]
    preview = await api.client.post(
        "/api/segments/preview", json={"rule": body["rule"]}, headers=auth("marketing")
    )
    if loc[1] == "rule":
        assert preview.status_code == 422
        assert loc in [error["loc"] for error in preview.json()["detail"]]
    assert api.definitions == []


async def test_preview_counts_a_rule_and_saves_nothing(api: Api) -> None:
    published = len(api.segments)
    response = await api.client.post(
        "/api/segments/preview",
        json={"rule": {"bought": [{"sku": "COFFEE", "min_checkouts": 2}], "consent": True}},
        headers=auth("marketing"),
    )
    assert response.status_code == 200
    assert response.json() == {"count": 2}
    assert (
        await api.client.post("/api/segments/preview", json={"rule": {}}, headers=auth("marketing"))
    ).json() == {"count": 4}
    assert api.definitions == []
    assert len(api.segments) == published
    assert await api.repo.definitions() == []
    listed = await api.client.get("/api/segments", headers=auth("marketing"))
    assert "coffee-lovers" not in [s["name"] for s in listed.json()["segments"]]


async def test_the_list_holds_the_built_ins_with_their_counts_and_unknown_is_404(
    api: Api,
) -> None:
    await api.client.post("/api/segments", json=VIP, headers=auth("marketing"))
    listed = (await api.client.get("/api/segments", headers=auth("marketing"))).json()
    segments = {s["name"]: s for s in listed["segments"]}
    assert list(segments) == sorted(segments)
    assert segments["all"]["count"] == 4
    assert segments["all"]["builtin"] is True
    assert segments["rfm-new"]["count"] == 4
    assert segments["rfm-champions"] == {
        "name": "rfm-champions",
        "description": segments["rfm-champions"]["description"],
        "rule": segments["rfm-champions"]["rule"],
        "version": 1,
        "count": 0,
        "builtin": True,
    }
    assert segments["rfm-champions"]["rule"]["rfm_segment"] == ["champions"]
    assert segments["coffee-lovers"]["count"] == 3
    missing = await api.client.get("/api/segments/nobody", headers=auth("marketing"))
    assert missing.status_code == 404
    no_csv = await api.client.get("/api/segments/nobody/members.csv", headers=auth("marketing"))
    assert no_csv.status_code == 404


async def test_definitions_are_listed_after_a_restart(api: Api) -> None:
    await api.client.post("/api/segments", json=VIP, headers=auth("marketing"))
    async for restarted in open_api(api.repo):
        listed = (await restarted.client.get("/api/segments", headers=auth("marketing"))).json()
        assert {s["name"]: s["count"] for s in listed["segments"]}["coffee-lovers"] == 3


async def test_members_export_as_csv_with_e_mail_only_where_consent_allows(api: Api) -> None:
    await api.client.post("/api/segments", json=VIP, headers=auth("marketing"))
    response = await api.client.get(
        "/api/segments/coffee-lovers/members.csv", headers=auth("marketing")
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows == [
        ["customer_id", "first_name", "email"],
        ["c-1", "Ana", "ana@example.com"],
        ["c-2", '\'=HYPERLINK("http://evil.test")', ""],  # no consent: no e-mail
        ["c-4", "'\tTab", "tab@example.com"],
    ]
    assert "card" not in response.text


async def test_every_formula_start_is_neutralised(api: Api) -> None:
    everyone = await api.client.get("/api/segments/all/members.csv", headers=auth("marketing"))
    rows = {row[0]: row for row in csv.reader(io.StringIO(everyone.text))}
    assert rows["c-3"] == ["c-3", "'@SUM(1+1)", "'-eve@example.com"]
    assert rows["c-2"][1].startswith("'=")
    assert rows["c-4"][1] == "'\tTab"


async def test_definitions_and_exports_are_audited(api: Api) -> None:
    await api.client.post("/api/segments", json=VIP, headers=auth("marketing"))
    await api.client.get("/api/segments/coffee-lovers/members.csv", headers=auth("marketing"))
    await api.client.get("/api/segments/all/members.csv", headers=auth("admin"))
    await api.client.post("/api/segments/preview", json={"rule": {}}, headers=auth("marketing"))
    entries = (await api.client.get("/api/audit", headers=auth("admin"))).json()
    assert [(e["action"], e["role"], e["subject"], e["rows"]) for e in entries] == [
        ("segment_exported", "admin", "all", 4),
        ("segment_exported", "marketing", "coffee-lovers", 3),
        ("segment_defined", "marketing", "coffee-lovers", None),
    ]
    assert {e["token_id"] for e in entries[1:]} == {token_hash(TOKENS["marketing"])[:12]}


async def test_no_name_or_e_mail_reaches_the_logs(api: Api) -> None:
    with structlog.testing.capture_logs() as captured:
        await api.client.post("/api/segments", json=VIP, headers=auth("marketing"))
        await api.client.get("/api/segments/coffee-lovers/members.csv", headers=auth("marketing"))
        await api.fold(coffee("p9", "c-3", 0))
    text = repr(captured)
    assert any(e.get("event") == "segment_exported" for e in captured)
    for personal in ("Ana", "ana@example.com", "HYPERLINK", "eve@example.com", "card-hash"):
        assert personal not in text
