"""Hostile HTTP: schemathesis generates requests from every service's OpenAPI document (valid
ones and ones that break the schema) and sends each without a token and with a token of every
role, over real HTTP to the service's real app (its routes, its guards and its SQLite store, with
FastStream's test broker for Kafka). No request may get a 500, and every service still answers
`/healthz` afterwards."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from faststream.kafka import TestKafkaBroker
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from starlette.types import Receive, Scope, Send

from services.ingest.app import SPEC as INGEST
from services.notifier.app import SPEC as NOTIFIER
from services.offers.app import SPEC as OFFERS
from services.profiles.app import SPEC as PROFILES
from services.reports.app import SPEC as REPORTS
from shared.auth import token_hash
from shared.http import HttpEndpoints
from shared.settings import HttpSettings, KafkaSettings, Settings, SmtpSettings, StoreSettings
from shared.skeleton import ServiceApp, ServiceSpec

pytestmark = pytest.mark.slow

TOKENS = {role: f"hostile-{role}-token" for role in ("agent", "marketing", "till", "admin")}
SPECS: dict[str, ServiceSpec[Any, Any]] = {
    spec.name: spec for spec in (INGEST, PROFILES, OFFERS, NOTIFIER, REPORTS)
}
EXAMPLES = 12
"""Generated requests per operation (each sent five times: no token, then each role)."""


@schemathesis.serializer("message/rfc822")
def raw_message(_: schemathesis.SerializationContext, value: Any) -> bytes:
    """The bounce API takes a raw e-mail (a DSN): generated text goes as its bytes."""
    if isinstance(value, bytes):
        return value
    return (value if isinstance(value, str) else repr(value)).encode("utf-8", "surrogatepass")


class Process:
    """One service as `crm run <service>` serves it: its app started (store opened, Kafka on the
    test broker) and its HTTP endpoints on a real uvicorn server, in a thread of its own."""

    def __init__(self, spec: ServiceSpec[Any, Any], folder: Path) -> None:
        tokens = ",".join(f"{role}:{token_hash(token)}" for role, token in TOKENS.items())
        self.settings = Settings(
            kafka=KafkaSettings(kafka_bootstrap="localhost:9092"),
            store=StoreSettings(store_url=f"sqlite:///{folder}"),
            smtp=SmtpSettings(outbox_dir=folder / "outbox"),
            http=HttpSettings(
                http_host="127.0.0.1",
                http_port=0,
                api_tokens=tokens,  # type: ignore[arg-type]
                # the generator sends thousands of requests a second with one token each
                api_rate_limit=0,
                api_failed_auth_limit=0,
            ),
        )
        # no start-up check (it reads the rules file) and no background task (timers)
        self.app = ServiceApp(dataclasses.replace(spec, check=None, background=None), self.settings)
        self.endpoints = HttpEndpoints([self.app], self.settings)
        self.server = self.endpoints.server()
        self.server.config.app = self._asgi
        self.server.config.lifespan = "on"
        self.server.config.interface = "asgi3"
        self._stack = AsyncExitStack()

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.endpoints.api(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self._stack.enter_async_context(TestKafkaBroker(self.app.broker))
                await self.app.start()
                self._stack.push_async_callback(self.app.stop)
                self.endpoints.started = True
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._stack.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def __enter__(self) -> str:
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.server.started, f"{self.app.name} did not start"
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Every service up, by name: its base URL."""
    folder = tmp_path_factory.mktemp("hostile")
    processes = {name: Process(spec, folder / name) for name, spec in SPECS.items()}
    urls: dict[str, str] = {}
    try:
        for name, process in processes.items():
            urls[name] = process.__enter__()
        yield urls
    finally:
        for name in urls:
            processes[name].__exit__()


def load_schema(base: str) -> Any:
    """A service's OpenAPI document, as its admin reads it from the service itself."""
    return schemathesis.openapi.from_url(
        f"{base}/openapi.json", headers={"Authorization": f"Bearer {TOKENS['admin']}"}
    )


def fuzz(operation: Any, mode: GenerationMode, failures: list[str]) -> None:
    """Send the generated requests of one operation, each without a token and with every
    role's; note every answer of 500 or more."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,  # the same requests on every run: a failure is reproducible
        phases=[Phase.explicit, Phase.generate],  # every failure is listed, unshrunk
        suppress_health_check=list(HealthCheck),
    )
    def send(case: Any) -> None:
        for role, token in (("no token", None), *TOKENS.items()):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            response = case.call(headers=headers)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} ({role}, {mode}): "
                    f"{response.status_code} {response.text[:300]}"
                )

    try:
        send()
    except Unsatisfiable:
        assert mode is GenerationMode.NEGATIVE  # nothing in it to break (GET /healthz)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_no_generated_request_gets_a_server_error(services: dict[str, str], name: str) -> None:
    schema = load_schema(services[name])
    operations = [result.ok() for result in schema.get_all_operations()]
    failures: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, mode, failures)
    assert operations
    assert failures == []


def test_every_service_answers_health_after_the_hostile_requests(services: dict[str, str]) -> None:
    for name, base in services.items():
        response = httpx.get(f"{base}/healthz")
        assert response.status_code == 200, name
        ready = httpx.get(f"{base}/readyz")
        assert ready.json()["services"] == {name: True}, name
