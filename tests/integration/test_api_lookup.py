"""The look-up and reports APIs over HTTP (FastAPI's test client): roles, audit, no card in logs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
import structlog
from fastapi.testclient import TestClient

from tests.browser.population import CARD, OTHER_CARD, TOKENS, World, build_world


@pytest.fixture
def world() -> World:
    return asyncio.run(build_world())


@pytest.fixture
def client(world: World) -> Iterator[TestClient]:
    with TestClient(world.api()) as c:
        yield c


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def test_agent_finds_a_customer_by_card_with_coupons_and_history(
    client: TestClient, world: World
) -> None:
    response = client.post(
        "/api/customers/lookup", json={"card_number": CARD.replace(" ", "-")}, headers=auth("agent")
    )
    assert response.status_code == 200
    body = response.json()
    assert body["customer_id"] == world.customer_id
    assert body["first_name"] == "Ana"
    assert body["visits"] == 3
    assert body["total_spend"] == "42.50"
    assert [c["coupon_code"] for c in body["coupons"]["open"]] == [world.open_code]
    assert [c["coupon_code"] for c in body["coupons"]["used"]] == [world.used_code]
    assert body["latest_interactions"][0]["type"] == "support_ticket"
    assert body["recent_purchases"][0]["event_id"] == "p-1"
    assert body["favourite_products"][0]["key"] == "MILK-1L"
    assert body["email_status"] == {
        "has_email": True,
        "marketing_consent": True,
        "reachable": True,
        "unreachable_reason": None,
        "unreachable_since": None,
    }
    assert body["segment"] == "new"


def test_agent_reads_a_customer_by_id(client: TestClient, world: World) -> None:
    response = client.get(f"/api/customers/{world.customer_id}", headers=auth("agent"))
    assert response.status_code == 200
    assert response.json()["customer_id"] == world.customer_id


def test_unknown_card_and_id_are_not_found(client: TestClient) -> None:
    assert (
        client.post(
            "/api/customers/lookup", json={"card_number": OTHER_CARD}, headers=auth("agent")
        ).status_code
        == 404
    )
    assert client.get("/api/customers/c-nobody", headers=auth("admin")).status_code == 404


def test_missing_or_wrong_token_gets_401(client: TestClient) -> None:
    missing = client.post("/api/customers/lookup", json={"card_number": CARD})
    wrong = client.get("/api/reports/campaigns", headers={"Authorization": "Bearer not-a-token"})
    assert missing.status_code == 401
    assert wrong.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"


def test_wrong_role_gets_403(client: TestClient, world: World) -> None:
    assert (
        client.get(f"/api/customers/{world.customer_id}", headers=auth("marketing")).status_code
        == 403
    )
    assert client.get("/api/reports/campaigns", headers=auth("agent")).status_code == 403
    assert client.get("/api/audit", headers=auth("agent")).status_code == 403
    assert client.get("/api/reports/campaigns", headers=auth("admin")).status_code == 200


def test_every_look_up_is_audited_and_the_admin_reads_the_audit_log(
    client: TestClient, world: World
) -> None:
    client.post("/api/customers/lookup", json={"card_number": CARD}, headers=auth("agent"))
    client.get(f"/api/customers/{world.customer_id}", headers=auth("admin"))
    client.post("/api/customers/lookup", json={"card_number": OTHER_CARD}, headers=auth("agent"))
    entries = client.get("/api/audit", headers=auth("admin")).json()
    assert [(e["action"], e["role"], e["customer_id"], e["found"]) for e in entries] == [
        ("lookup_by_card", "agent", None, False),
        ("get_by_id", "admin", world.customer_id, True),
        ("lookup_by_card", "agent", world.customer_id, True),
    ]
    assert all(e["at"] and len(e["token_id"]) == 12 for e in entries)
    assert TOKENS["agent"] not in str(entries)


def test_no_card_number_appears_in_logs(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as captured:
        client.post("/api/customers/lookup", json={"card_number": CARD}, headers=auth("agent"))
        client.post(
            "/api/customers/lookup", json={"card_number": OTHER_CARD}, headers=auth("agent")
        )
        client.post("/api/customers/lookup", json={"card_number": "12"}, headers=auth("agent"))
    text = caplog.text + repr(captured)
    assert any(entry.get("event") == "customer_looked_up" for entry in captured)
    for card in (CARD, OTHER_CARD):
        digits = card.replace(" ", "").replace("-", "")
        assert digits not in text.replace(" ", "").replace("-", "")


def test_card_number_is_only_accepted_in_the_body(client: TestClient) -> None:
    digits = CARD.replace(" ", "")
    assert client.get(
        f"/api/customers/lookup?card_number={digits}", headers=auth("agent")
    ).status_code in {404, 405}
    schema = client.get("/openapi.json").json()
    lookup = schema["paths"]["/api/customers/lookup"]["post"]
    assert "parameters" not in lookup
    assert "requestBody" in lookup


def test_reports_come_as_json_and_csv(client: TestClient) -> None:
    campaigns = client.get("/api/reports/campaigns", headers=auth("marketing")).json()
    kinds = {row["kind"] for row in campaigns["rows"] if row["week"] == "all"}
    assert kinds == {"birthday", "frequent_item"}
    csv = client.get("/api/reports/stores?format=csv", headers=auth("marketing"))
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[1].startswith("store_id,revenue,visits")
    for name in ("products", "segments"):
        assert client.get(f"/api/reports/{name}", headers=auth("marketing")).status_code == 200
    assert client.get("/api/reports/nope", headers=auth("marketing")).status_code == 422


def test_charts_are_svg(client: TestClient) -> None:
    for name in ("issued", "lift", "products", "stores"):
        response = client.get(f"/api/charts/{name}.svg", headers=auth("marketing"))
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("image/svg+xml")
        assert "<svg" in response.text
        assert "<path" in response.text
