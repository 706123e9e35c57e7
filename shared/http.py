"""HTTP endpoints of a running process: `/healthz`, `/readyz` and the service routes on the public
port (`CRM_HTTP_PORT`), `/metrics` on the ops port (`CRM_METRICS_PORT`), or, without one, on the
HTTP port for an admin token only.

FastStream's Prometheus middleware (added to every broker) measures messages received,
processed, published and their latency per topic; this module adds each service's own counters
(dead letters per reason, offers per kind, e-mails per outcome) and consumer lag, and serves
them with prometheus_client. `crm run all` serves every service's endpoints on one port.

The public port is guarded (`shared.http_guard`): body limits, security headers, rate limits.
Metrics go on a port of their own, as Prometheus exporters do: the ingress never routes it and
the NetworkPolicy opens it to the monitoring namespace only, and Prometheus needs no API token.
The OpenAPI document is served to the `admin` role only; no Swagger UI (it loads its scripts
from a CDN).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator, Sequence
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Gauge,
    generate_latest,
    make_asgi_app,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from shared.auth import TokenTable, require
from shared.http_guard import (
    DEFAULT_BODY_LIMIT,
    AuthFailures,
    RateLimitMiddleware,
    SecurityHeadersMiddleware,
    TokenBuckets,
)
from shared.kafka import consumer_lag
from shared.logging import get_logger
from shared.metrics import instrument_http
from shared.settings import HttpSettings, Settings
from shared.skeleton import ServiceApp

log = get_logger(__name__)

# stats key prefix -> metric family; anything else goes to crm_service_events_total.
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("dead_lettered_", "crm_dead_lettered"),
    ("issued_", "crm_offers_issued"),
    ("suppressed_", "crm_offers_suppressed"),
    ("emails_", "crm_emails"),
)
_FAMILIES: dict[str, tuple[str, str]] = {
    "crm_dead_lettered": ("reason", "Messages dead-lettered, by reason."),
    "crm_offers_issued": ("kind", "Offers issued, by kind."),
    "crm_offers_suppressed": (
        "reason",
        "Offers (offers) or their e-mails (notifier) suppressed, by reason.",
    ),
    "crm_emails": ("outcome", "E-mails by final outcome."),
}
_LABEL = re.compile(r"[^a-zA-Z0-9_]")


class ServiceStatsCollector(Collector):
    """Reads the services' in-memory counters at scrape time."""

    def __init__(self, apps: Sequence[ServiceApp[Any]]) -> None:
        self._apps = apps

    def collect(self) -> Iterator[CounterMetricFamily]:
        families = {
            metric: CounterMetricFamily(metric, help_text, labels=["service", label])
            for metric, (label, help_text) in _FAMILIES.items()
        }
        other = CounterMetricFamily(
            "crm_service_events", "Other service counters, by event.", labels=["service", "event"]
        )
        for app in self._apps:
            name, stats = app.name, app.stats
            for key, value in sorted(stats.items()):
                for prefix, metric in _PREFIXES:
                    if key.startswith(prefix):
                        label = _LABEL.sub("_", key[len(prefix) :])
                        families[metric].add_metric([name, label], value)
                        break
                else:
                    other.add_metric([name, _LABEL.sub("_", key)], value)
        yield from families.values()
        yield other


class HttpEndpoints:
    """The FastAPI app of a process and the background task that measures consumer lag."""

    def __init__(
        self,
        apps: Sequence[ServiceApp[Any]],
        settings: Settings,
        *,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.apps = apps
        self.settings = settings
        self.started = False
        self.api = FastAPI(
            title="crm-stream",
            description="Health and APIs of crm-stream services.",
            version="1",
            docs_url=None,
            redoc_url=None,
            openapi_url=None,
        )
        self._lag = (
            Gauge(
                "crm_consumer_lag",
                "Messages not yet committed by the service's consumer group.",
                ["service"],
                registry=registry,
            )
            if "crm_consumer_lag" not in registry._names_to_collectors
            else None
        )
        with contextlib.suppress(ValueError):  # already registered in this process
            registry.register(ServiceStatsCollector(apps))
        self.api.add_api_route("/healthz", self.healthz, methods=["GET"], tags=["ops"])
        self.api.add_api_route("/readyz", self.readyz, methods=["GET"], tags=["ops"])
        self.metrics = make_asgi_app(registry)
        for app in apps:
            if app.spec.routes is not None:
                self.api.include_router(app.spec.routes(app))
        http = settings.http
        tokens = TokenTable.parse(http.api_tokens.get_secret_value() if http.api_tokens else None)
        self.api.add_api_route(
            "/openapi.json",
            self.openapi,
            methods=["GET"],
            include_in_schema=False,
            dependencies=[Depends(require(tokens, "admin"))],
        )
        if http.metrics_port is None:
            # No ops port: the metrics stay on the HTTP port, as the contract says, but only
            # for an admin token (Prometheus sends it with `authorization: credentials`).
            self.api.add_api_route(
                "/metrics",
                self.metrics_for_admins,
                methods=["GET"],
                include_in_schema=False,
                dependencies=[Depends(require(tokens, "admin"))],
            )
        self._registry = registry
        guard(self.api, tokens, http)
        instrument_http(self.api)

    async def metrics_for_admins(self) -> Response:
        """The Prometheus exposition of this process (admin only, when there is no ops port)."""
        return Response(generate_latest(self._registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi(self) -> JSONResponse:
        """The OpenAPI document of this process's routes (admin only)."""
        return JSONResponse(self.api.openapi())

    async def healthz(self) -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    async def readyz(self, response: Response) -> dict[str, Any]:
        """Started and connected to Kafka (each service's store is opened before it starts)."""
        checks: dict[str, bool] = {}
        for app in self.apps:
            checks[app.name] = bool(self.started and app.started and await app.broker.ping(1.0))
        ready = all(checks.values()) and bool(checks)
        response.status_code = 200 if ready else 503
        return {"status": "ready" if ready else "not ready", "services": checks}

    async def measure_lag(self, every: float | None = None) -> None:
        """Update the lag gauge periodically (a background task), every
        `CRM_CONSUMER_LAG_INTERVAL_S`; with 0, never: in production a Kafka exporter reads
        every group's lag from the broker, instead of each pod opening a consumer."""
        every = self.settings.observability.consumer_lag_interval_s if every is None else every
        if every <= 0:
            return
        while True:
            for app in self.apps:
                spec = app.spec
                try:
                    lag = await consumer_lag(self.settings.kafka, spec.group, spec.topics)
                except Exception as exc:
                    log.warning(
                        "lag_measure_failed", service_name=spec.name, error=type(exc).__name__
                    )
                    continue
                if self._lag is not None:
                    self._lag.labels(service=spec.name).set(lag)
            await asyncio.sleep(every)

    def server(self) -> uvicorn.Server:
        config = uvicorn.Config(
            self.api,
            host=self.settings.http.http_host,
            port=self.settings.http.http_port,
            lifespan="off",
            log_config=None,
            access_log=False,  # access logs would carry URLs; the API keeps personal data out of them anyway
            server_header=False,
        )
        return _QuietServer(config)

    def metrics_server(self) -> uvicorn.Server | None:
        """The ops port's server (`/metrics`), or None when `CRM_METRICS_PORT` is unset."""
        port = self.settings.http.metrics_port
        if port is None:
            return None
        config = uvicorn.Config(
            self.metrics,
            host=self.settings.http.http_host,
            port=port,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
        )
        return _QuietServer(config)


def guard(api: FastAPI, tokens: TokenTable, http: HttpSettings) -> None:
    """Put the guards in front of an app's routes. The last added runs first: security headers
    on every answer (a 413 and a 429 included), the rate limits, then the body limit (the
    default here; a route's own `max_body_size` replaces it), all before routing, parsing and
    authentication."""
    api.add_middleware(RequestBodyLimitMiddleware, max_body_size=DEFAULT_BODY_LIMIT)
    api.add_exception_handler(RequestValidationError, _invalid_request)
    per_token = (
        TokenBuckets(http.api_rate_limit, http.api_rate_burst) if http.api_rate_limit > 0 else None
    )
    api.add_middleware(
        RateLimitMiddleware,
        identify=tokens.identify,
        per_token=per_token,
        failures=AuthFailures(http.api_failed_auth_limit),
    )
    api.add_middleware(SecurityHeadersMiddleware)


async def _invalid_request(_: Request, exc: Exception) -> JSONResponse:
    """422 with where and why, not the input: FastAPI's default echoes it, which fails on a
    number JSON cannot carry (a 500 for `Infinity`) and would send a card number back."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors
    ]
    return JSONResponse({"detail": detail}, status_code=422)


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: `crm run` owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
