"""The metrics the SLOs are written on: freshness from a checkout to its offer and e-mail, and
HTTP requests per route.

**Freshness** (`crm_freshness_seconds`) is measured from *event time*, the `occurred_at` of
the raw checkout (normalized by ingest and carried as the offer's `issued_at`), not from the
time ingest received it: the customer waits from the swipe, and a till that sends late is a
stale offer too. A till clock ahead of ours gives a negative age, counted as 0. Two stages:
`offer_published` (offers, once the batch's records are acknowledged by Kafka) and
`email_sent` (notifier, once SMTP accepted it or the outbox file is written), labelled by the
offer's `trigger` type: `purchase` and `segment` run on event time; `clock` offers (birthday,
anniversary, win-back) are measured from the start of their day and have an SLO of their own.

**HTTP requests** (`crm_http_requests_total`, `crm_http_request_duration_seconds`) by method,
route template (never the raw path: it may hold a customer id or a token) and status class,
measured by prometheus-fastapi-instrumentator's middleware in front of every guard, so a 413
or a 429 counts too (route `none` when the guard answered before routing).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Final, Literal

import orjson
from prometheus_client import REGISTRY, Histogram
from prometheus_fastapi_instrumentator import metrics as http_metrics
from prometheus_fastapi_instrumentator.middleware import PrometheusInstrumentatorMiddleware
from starlette.applications import Starlette

from shared.events import OfferIssued

Stage = Literal["offer_published", "email_sent"]

FRESHNESS_BUCKETS: Final = (
    1.0,
    5.0,
    15.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1_800.0,
    3_600.0,
    7_200.0,
    14_400.0,
    28_800.0,
    43_200.0,
    86_400.0,
    172_800.0,
)
"""Seconds to two days: a live pipeline answers in seconds, an e-mail held over quiet hours
goes out up to about 11 hours later, a backlog shows in hours."""

FRESHNESS = Histogram(
    "crm_freshness_seconds",
    "Seconds from a checkout's event time (the trigger of an offer) to the offer published "
    "(stage offer_published) and to its e-mail sent (stage email_sent), by trigger type.",
    ["stage", "trigger"],
    buckets=FRESHNESS_BUCKETS,
)

HTTP_DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Built once per process: the instrumentator's metric functions register their metric when
# called, and every HTTP app of the process (tests build many) shares them.
_HTTP_INSTRUMENTATIONS = [
    fn
    for fn in (
        http_metrics.requests(
            metric_name="http_requests",
            metric_doc="HTTP requests by method, route template and status class.",
            metric_namespace="crm",
            registry=REGISTRY,
        ),
        http_metrics.latency(
            metric_name="http_request_duration_seconds",
            metric_doc="Seconds to answer HTTP requests by method, route template and status class.",
            metric_namespace="crm",
            buckets=HTTP_DURATION_BUCKETS,
            registry=REGISTRY,
        ),
    )
    if fn is not None
]


def trigger_type(offer: OfferIssued) -> str:
    """`purchase`, `segment`, `clock`, or `unknown` for an offer that names no trigger."""
    return offer.trigger.type if offer.trigger is not None else "unknown"


def observe_freshness(
    stage: Stage, trigger: str, event_time: dt.datetime, now: dt.datetime
) -> None:
    """Count one offer or e-mail `now`, for a trigger that happened at `event_time`."""
    FRESHNESS.labels(stage=stage, trigger=trigger).observe(
        max(0.0, (now - event_time).total_seconds())
    )


def observe_offers_published(
    outgoing: Sequence[tuple[str, bytes | None, bytes | None]],
    now: dt.datetime,
    *,
    topic: str,
) -> None:
    """The freshness of every `offer_issued` among a batch's published records on `topic`
    (read back from the bytes: only their time and trigger)."""
    for destination, _, value in outgoing:
        if destination != topic or value is None or b'"offer_issued"' not in value:
            continue
        record = orjson.loads(value)
        if record.get("type") != "offer_issued":
            continue
        trigger = record.get("trigger") or {}
        issued_at = dt.datetime.fromisoformat(record["issued_at"])
        observe_freshness("offer_published", str(trigger.get("type", "unknown")), issued_at, now)


def instrument_http(app: Starlette) -> None:
    """Count and time every request of `app` by method, route template and status class.
    Added last, so it runs first: it sees the guards' 413 and 429 answers as well."""
    app.add_middleware(
        PrometheusInstrumentatorMiddleware,
        should_group_status_codes=True,
        should_group_untemplated=True,
        instrumentations=_HTTP_INSTRUMENTATIONS,
        registry=REGISTRY,
    )


__all__ = [
    "FRESHNESS",
    "FRESHNESS_BUCKETS",
    "instrument_http",
    "observe_freshness",
    "observe_offers_published",
    "trigger_type",
]
