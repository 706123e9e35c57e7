"""Traces across the Kafka hops on the embedded broker: the `traceparent` a till's checkout
carries is found again, same trace id, new span, in the raw headers of what ingest and then
profiles publish; the log lines written meanwhile carry that trace id; and with the exporter
off (the default) not one span leaves the process."""

from __future__ import annotations

import asyncio
import dataclasses
import http.server
import json
import logging
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiokafka import AIOKafkaProducer

from crm.traffic import read_topic
from services.ingest.app import SPEC as INGEST
from services.profiles.app import SPEC as PROFILES
from shared.kafka import consumer_lag, ensure_topics
from shared.logging import configure_logging
from shared.settings import (
    KafkaSettings,
    LogSettings,
    ObservabilitySettings,
    Settings,
    StoreSettings,
)
from shared.skeleton import ServiceApp
from shared.topics import CHECKOUTS_RAW, DEADLETTER, EVENTS, PROFILES_CHANGED
from shared.tracing import tracer_provider
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def checkout(event_id: str, card: str, **fields: Any) -> bytes:
    doc: dict[str, Any] = {
        "event_id": event_id,
        "store_id": "S001",
        "occurred_at": "2026-03-01T10:15:00+00:00",
        "card_number": card,
        "lines": [{"sku": "milk-1l", "quantity": 1, "unit_price": "1.19"}],
    }
    doc.update(fields)
    return json.dumps(doc).encode()


def traceparent() -> tuple[str, bytes]:
    """A new trace id and the `traceparent` header of a till's span in it."""
    trace_id = secrets.token_hex(16)
    return trace_id, f"00-{trace_id}-{secrets.token_hex(8)}-01".encode()


def trace_of(record: Any) -> tuple[str, str]:
    """(trace id, span id) of a record's `traceparent` header, as a consumer reads it."""
    headers = dict(record.headers)
    _, trace_id, span_id, _ = headers["traceparent"].decode().split("-")
    return trace_id, span_id


def card_of(unique: str) -> str:
    digits = unique.translate(str.maketrans("abcdef", "123456"))[:4]
    return f"6035 7100 {digits} 0042"


async def drained(settings: KafkaSettings, *apps: ServiceApp[Any]) -> None:
    """Wait until every app has caught up with its topics: what comes next is alone in its batch."""

    async def caught_up() -> bool:
        lags = [await consumer_lag(settings, a.spec.group, a.spec.topics) for a in apps]
        return not any(lags)

    await wait_for(caught_up, within=120.0)


@pytest.fixture
def json_log(tmp_path: Path) -> Iterator[Path]:
    """The process's log lines as JSON in a file, the logging set-up restored afterwards."""
    path = tmp_path / "service.log"
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("test", LogSettings(log_format="json"), log_file=path)
    yield path
    for handler in root.handlers:
        handler.close()
    root.handlers[:], root.level = handlers, level
    structlog.reset_defaults()


async def test_a_checkout_trace_travels_in_kafka_headers_and_log_lines(
    kafka_settings: KafkaSettings, unique: str, json_log: Path
) -> None:
    await ensure_topics(kafka_settings)
    settings = Settings(kafka=kafka_settings, store=StoreSettings(store_url="memory://"))
    ingest = ServiceApp(dataclasses.replace(INGEST, group=f"crm-ingest-{unique}"), settings)
    profiles = ServiceApp(dataclasses.replace(PROFILES, group=f"crm-profiles-{unique}"), settings)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.kafka_bootstrap)
    await producer.start()
    await ingest.start()
    await profiles.start()
    try:
        await drained(kafka_settings, ingest, profiles)
        good_trace, good_parent = traceparent()
        bad_trace, bad_parent = traceparent()
        good, bad = f"{unique}-good", f"{unique}-bad"
        card = card_of(unique)

        async def mine(topic: str, needle: str) -> list[Any]:
            return [
                r for r in await read_topic(kafka_settings, topic) if needle in r.value.decode()
            ]

        # One after the other: a batch continues the trace of its first traced record only.
        await producer.send_and_wait(
            CHECKOUTS_RAW, checkout(good, card), headers=[("traceparent", good_parent)]
        )
        await wait_for(lambda: mine(EVENTS, good))
        await producer.send_and_wait(
            CHECKOUTS_RAW, checkout(bad, card, lines=[]), headers=[("traceparent", bad_parent)]
        )

        async def all_published() -> bool:
            return bool(
                await mine(EVENTS, good)
                and await mine(PROFILES_CHANGED, good)
                and await mine(DEADLETTER, bad)
            )

        await wait_for(all_published)
        [purchase] = await mine(EVENTS, good)
        [change] = await mine(PROFILES_CHANGED, good)
        [letter] = await mine(DEADLETTER, bad)
        # ingest consumed the checkout and published the purchase: one trace, a new span ...
        assert trace_of(purchase)[0] == good_trace
        assert trace_of(purchase)[1] != good_parent.decode().split("-")[2]
        # ... which profiles consumed, publishing the profile change in the same trace.
        assert trace_of(change)[0] == good_trace
        assert trace_of(change)[1] != trace_of(purchase)[1]
        # The dead letter of the other checkout continues that checkout's own trace.
        assert trace_of(letter)[0] == bad_trace

        # A till that sends no trace: ingest starts one (not sampled, nothing exported), and
        # profiles carries it on.
        untraced = f"{unique}-untraced"
        await producer.send_and_wait(CHECKOUTS_RAW, checkout(untraced, card))

        async def carried_on() -> bool:
            return bool(await mine(PROFILES_CHANGED, untraced))

        await wait_for(carried_on)
        [started] = await mine(EVENTS, untraced)
        [followed] = await mine(PROFILES_CHANGED, untraced)
        assert trace_of(started)[0] == trace_of(followed)[0]
        assert trace_of(started)[0] not in {good_trace, bad_trace}
        flags = dict(followed.headers)["traceparent"].decode().rsplit("-", 1)[1]
        assert not int(flags, 16) & 0x01  # not sampled
    finally:
        await profiles.stop()
        await ingest.stop()
        await producer.stop()
    text = await asyncio.to_thread(json_log.read_text)
    lines = [json.loads(line) for line in text.splitlines()]
    [dead_lettered] = [
        line
        for line in lines
        if line["event"] == "dead_lettered" and line.get("trace_id") == bad_trace
    ]
    assert len(dead_lettered["span_id"]) == 16
    assert dead_lettered["service"] == "test"


class _Collector(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that only records which paths were posted to."""

    posted: list[str]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        type(self).posted.append(self.path)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        return


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """A local OTLP collector, named by the standard `OTEL_EXPORTER_OTLP_ENDPOINT`."""
    posted: list[str] = []
    handler = type("Collector", (_Collector,), {"posted": posted})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    yield posted
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("exporter", "exported"), [("none", False), ("otlp", True)])
async def test_spans_are_exported_only_when_an_exporter_is_configured(
    kafka_settings: KafkaSettings,
    unique: str,
    collector: list[str],
    exporter: str,
    exported: bool,
) -> None:
    await ensure_topics(kafka_settings)
    observability = ObservabilitySettings(otel_exporter=exporter)
    settings = Settings(
        kafka=kafka_settings,
        store=StoreSettings(store_url="memory://"),
        observability=observability,
    )
    # A service name of its own: a fresh provider, whose exporter reads this test's endpoint.
    spec = dataclasses.replace(INGEST, name=f"ingest-{unique}", group=f"crm-ingest-{unique}")
    ingest = ServiceApp(spec, settings)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.kafka_bootstrap)
    await producer.start()
    await ingest.start()
    try:
        await drained(kafka_settings, ingest)
        _, parent = traceparent()
        event_id = f"{unique}-exported"
        await producer.send_and_wait(
            CHECKOUTS_RAW, checkout(event_id, card_of(unique)), headers=[("traceparent", parent)]
        )

        async def published() -> bool:
            records = await read_topic(kafka_settings, EVENTS)
            return any(event_id in r.value.decode() for r in records)

        await wait_for(published)
    finally:
        await ingest.stop()
        await producer.stop()
    assert await asyncio.to_thread(tracer_provider(spec.name, observability).force_flush)
    assert (collector.count("/v1/traces") > 0) is exported
    if not exported:
        assert collector == []
