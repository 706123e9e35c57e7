"""The services started the way the image starts them: ENTRYPOINT + CMD of the Dockerfile, the
environment contract, against the embedded broker; health, readiness and metrics over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from crm.embedded import EmbeddedKafka, free_port
from shared.topics import CHECKOUTS_RAW
from tests.keys import SERVICE_KEYS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def image_command() -> list[str]:
    """ENTRYPOINT + CMD of the Dockerfile (exec form)."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    command = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    return [*entrypoint, *command]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_image_command_serves_health_readiness_and_moving_metrics(tmp_path: Path) -> None:
    command = image_command()
    assert command == ["crm", "run", "all"]
    executable = shutil.which("crm", path=str(Path(sys.executable).parent)) or "crm"
    port, metrics_port = free_port(), free_port()
    with EmbeddedKafka(log_file=tmp_path / "broker.log") as broker:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
        env.update(
            {
                "CRM_KAFKA_BOOTSTRAP": broker.bootstrap,
                "CRM_STORE_URL": f"sqlite:///{tmp_path / 'data'}",
                "CRM_OUTBOX_DIR": str(tmp_path / "outbox"),
                "CRM_HTTP_PORT": str(port),
                "CRM_METRICS_PORT": str(metrics_port),
                "CRM_LOG_FORMAT": "json",
                **SERVICE_KEYS,
            }
        )
        log = (tmp_path / "service.log").open("wb")
        process = subprocess.Popen(
            [executable, *command[1:]], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        base = f"http://127.0.0.1:{port}"
        ops = f"http://127.0.0.1:{metrics_port}"  # /metrics, apart from the public port
        try:
            deadline = time.monotonic() + 60
            ready = (0, "")
            while time.monotonic() < deadline and ready[0] != 200:
                assert process.poll() is None, (tmp_path / "service.log").read_text()
                with contextlib.suppress(OSError):
                    ready = get(f"{base}/readyz")
                time.sleep(0.3)
            assert ready[0] == 200, ready
            assert json.loads(ready[1])["services"] == {
                "ingest": True,
                "profiles": True,
                "offers": True,
                "notifier": True,
                "reports": True,
            }
            assert get(f"{base}/healthz") == (200, '{"status":"ok"}')
            assert get(f"{base}/metrics")[0] == 404
            before = get(f"{ops}/metrics")[1]

            asyncio.run(send_checkouts(broker.bootstrap))

            def moved() -> bool:
                text = get(f"{ops}/metrics")[1]
                return (
                    metric(
                        text, "crm_received_messages_total", handler=CHECKOUTS_RAW.replace(".", "_")
                    )
                    + metric(text, "crm_received_messages_total")
                    > metric(before, "crm_received_messages_total")
                    and metric(text, "crm_dead_lettered_total", service="ingest", reason="no_lines")
                    >= 1
                    and metric(
                        text, "crm_service_events_total", service="profiles", event="events_applied"
                    )
                    >= 3
                )

            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not moved():
                time.sleep(0.5)
            after = get(f"{ops}/metrics")[1]
            assert moved(), after[-3000:]
            assert "crm_consumer_lag" in after
            assert "crm_received_processed_messages_duration_seconds_bucket" in after
        finally:
            process.terminate()
            assert process.wait(timeout=60) == 0
            log.close()


async def send_checkouts(bootstrap: str) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for n in range(3):
            doc = {
                "event_id": f"m-{n}",
                "store_id": "S001",
                "occurred_at": "2026-03-01T10:00:00Z",
                "card_number": "6035 0000 0000 0001",
                "lines": [{"sku": "MILK", "quantity": 1, "unit_price": "1.19"}],
            }
            await producer.send_and_wait(CHECKOUTS_RAW, json.dumps(doc).encode())
        broken = {
            "event_id": "bad",
            "store_id": "S001",
            "occurred_at": "2026-03-01T10:00:00Z",
            "lines": [],
        }
        await producer.send_and_wait(CHECKOUTS_RAW, json.dumps(broken).encode())
    finally:
        await producer.stop()
