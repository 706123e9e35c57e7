"""The SLO metrics: HTTP requests counted by route template and status class (never the raw
path, which may hold a customer id), and freshness from a trigger's event time."""

from __future__ import annotations

import datetime as dt

import orjson
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from crm.registry import SERVICES
from shared.http import HttpEndpoints
from shared.metrics import observe_offers_published
from shared.settings import Settings
from shared.skeleton import ServiceApp
from shared.topics import DEADLETTER, OFFERS


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_http_requests_are_counted_by_route_template_and_status_class() -> None:
    settings = Settings()
    endpoints = HttpEndpoints([ServiceApp(spec, settings) for spec in SERVICES], settings)
    route = "/api/customers/{customer_id}/timeline"
    labels = {"handler": route, "method": "GET", "status": "4xx"}
    before = sample("crm_http_requests_total", **labels)
    with TestClient(endpoints.api) as client:
        assert client.get("/api/customers/c-secret-42/timeline").status_code == 401
        assert client.get("/healthz").status_code == 200
    assert sample("crm_http_requests_total", **labels) == before + 1
    assert sample("crm_http_request_duration_seconds_count", **labels) >= 1
    assert sample("crm_http_requests_total", handler="/healthz", method="GET", status="2xx") >= 1
    exposed = "".join(
        str(s.labels)
        for m in REGISTRY.collect()
        if m.name.startswith("crm_http")
        for s in m.samples
    )
    assert "c-secret-42" not in exposed


def offer(issued_at: dt.datetime, trigger: str) -> bytes:
    return orjson.dumps(
        {"type": "offer_issued", "issued_at": issued_at.isoformat(), "trigger": {"type": trigger}}
    )


def test_published_offers_count_their_age_from_the_trigger_time() -> None:
    now = dt.datetime(2026, 3, 1, 10, 20, tzinfo=dt.UTC)
    labels = {"stage": "offer_published", "trigger": "purchase"}
    fast_before = sample("crm_freshness_seconds_bucket", le="300.0", **labels)
    all_before = sample("crm_freshness_seconds_count", **labels)
    observe_offers_published(
        [
            (OFFERS, b"c-1", offer(now - dt.timedelta(seconds=90), "purchase")),
            (OFFERS, b"c-2", offer(now - dt.timedelta(hours=2), "purchase")),
            (OFFERS, b"c-3", orjson.dumps({"type": "offer_revoked", "offer_id": "o"})),
            (DEADLETTER, None, offer(now, "purchase")),
        ],
        now,
        topic=OFFERS,
    )
    # Two offers counted, one of them within 5 minutes; a revocation and a dead letter are not.
    assert sample("crm_freshness_seconds_count", **labels) == all_before + 2
    assert sample("crm_freshness_seconds_bucket", le="300.0", **labels) == fast_before + 1
