"""End-to-end fixtures: a fresh embedded broker, a real SMTP server, services as processes."""

from __future__ import annotations

import email
import email.policy
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from crm.embedded import EmbeddedKafka, free_port
from tests.keys import SERVICE_KEYS

SERVICES = ("ingest", "profiles", "offers", "notifier")

# aiosmtpd logs every connection from its own thread, also after a test's output is closed.
logging.getLogger("mail.log").setLevel(logging.WARNING)


MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)


class Mailbox:
    """An aiosmtpd handler that keeps every message it accepts: its bytes exactly as the
    notifier sent them (`raw`) and, parsed, for reading (`messages`)."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.raw: list[bytes] = []
        self.recipients: list[list[str]] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self._lock:
            self.messages.append(message)  # type: ignore[arg-type]
            self.raw.append(bytes(envelope.content))
            self.recipients.append(list(envelope.rcpt_tos))
        return "250 Message accepted"

    def message_ids(self) -> Counter[bytes]:
        """How many times each Message-ID arrived, read from the raw header bytes."""
        found: Counter[bytes] = Counter()
        with self._lock:
            raw = list(self.raw)
        for content in raw:
            head = content.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
            match = MESSAGE_ID.search(head)
            assert match, "an e-mail without a Message-ID"
            found[match.group(1)] += 1
        return found

    def count(self) -> int:
        with self._lock:
            return len(self.messages)


@pytest.fixture
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedKafka]:
    """Each end-to-end test gets its own broker: consumer groups and topics start empty."""
    with EmbeddedKafka(log_file=tmp_path / "broker.log") as kafka:
        yield kafka


@dataclass
class Pipeline:
    """The four services as `crm run` processes sharing one environment."""

    env: dict[str, str]
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def start(self, name: str) -> None:
        self.ports[name] = self.ports.get(name) or free_port()
        log = (self.log_dir / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "crm.cli", "run", name],
            env={**self.env, "CRM_HTTP_PORT": str(self.ports[name])},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()

    def start_all(self) -> None:
        for name in SERVICES:
            self.start(name)
        for name in SERVICES:
            self.wait_ready(name)

    def wait_ready(self, name: str, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.processes[name].poll() is not None:
                raise AssertionError(f"{name} exited: {self.logs(name)[-3000:]}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.ports[name]}/readyz", timeout=2
                ) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{name} not ready: {self.logs(name)[-3000:]}")

    def stop(self, name: str, sig: int = signal.SIGTERM, within: float = 30.0) -> int:
        process = self.processes[name]
        if process.poll() is None:
            process.send_signal(sig)
        try:
            return process.wait(timeout=within)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.stop(name)

    def logs(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")


@pytest.fixture
def pipeline_env(broker: EmbeddedKafka, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update(
        {
            "CRM_KAFKA_BOOTSTRAP": broker.bootstrap,
            "CRM_STORE_URL": f"sqlite:///{tmp_path / 'store'}",
            "CRM_OUTBOX_DIR": str(tmp_path / "outbox"),
            "CRM_QUIET_HOURS": "off",
            # E-mails go at once: these tests count each e-mail; the grace has its own tests.
            "CRM_SEND_GRACE_S": "0",
            "CRM_LOG_FORMAT": "json",
            "CRM_LOG_LEVEL": "INFO",
            **SERVICE_KEYS,
            "CRM_BATCH_TIMEOUT_MS": "50",
        }
    )
    return env


@pytest.fixture
def make_pipeline(pipeline_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    created: list[Pipeline] = []

    def make(**extra: str) -> Pipeline:
        log_dir = tmp_path / f"logs-{len(created)}"
        log_dir.mkdir()
        pipeline = Pipeline({**pipeline_env, **extra}, log_dir)
        created.append(pipeline)
        return pipeline

    yield make
    for pipeline in created:
        pipeline.stop_all()
