"""Bounces reported after the SMTP conversation: a delivery status notification (RFC 3464)
posted to the notifier's `POST /api/bounces`, through TestKafkaBroker and an ASGI client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage

from services.notifier.api import notifier_routes
from services.notifier.app import create_app
from services.notifier.mailer import wire_bytes
from services.notifier.service import NotifierService
from services.notifier.settings import NotifierSettings
from services.notifier.store_sqlite import SqliteNotifierRepository
from shared.auth import token_hash
from shared.settings import (
    CalendarSettings,
    HttpSettings,
    KafkaSettings,
    Settings,
    SmtpSettings,
    StoreSettings,
)
from shared.skeleton import ServiceApp
from shared.storage import StoreLocation
from shared.topics import CONTACTS, DELIVERIES, OFFERS
from tests.service.test_notifier_app import DAY, Clock, contact_payload, offer_payload

TOKENS = {"admin": "admin-token", "agent": "agent-token"}
FORWARDER_TOKEN = "the-mail-servers-bounce-pipe"


class CapturingTransport:
    """An SMTP server that accepts everything: the messages as they would go on the wire."""

    idempotent = False
    rate_limited = False

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, message: EmailMessage, *, name: str) -> None:
        self.sent.append(wire_bytes(message))

    async def close(self) -> None:
        return None


@dataclass
class Bounces:
    app: ServiceApp[NotifierService]
    broker: KafkaBroker
    repo: SqliteNotifierRepository
    transport: CapturingTransport
    records: list[bytes] = field(default_factory=list)
    """The raw values published on crm.deliveries."""

    async def publish(self, topic: str, payload: dict[str, Any], key: str) -> None:
        await self.broker.publish(json.dumps(payload).encode(), topic, key=key.encode())

    def client(self) -> httpx.AsyncClient:
        api = FastAPI()
        api.include_router(notifier_routes(self.app))
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://crm.test")

    def outcomes(self) -> list[tuple[str, str, str | None]]:
        return [(d["offer_id"], d["state"], d["reason"]) for d in map(json.loads, self.records)]


@pytest.fixture
async def b(tmp_path: Path) -> AsyncIterator[Bounces]:
    tokens = ",".join(f"{role}:{token_hash(token)}" for role, token in TOKENS.items())
    settings = Settings(
        kafka=KafkaSettings(kafka_bootstrap="test:9092"),
        store=StoreSettings(store_url="memory://"),
        smtp=SmtpSettings(smtp_host=None, outbox_dir=tmp_path / "outbox"),
        calendar=CalendarSettings(timezone="UTC", quiet_hours="off"),
        http=HttpSettings(api_tokens=tokens),  # type: ignore[arg-type]
    )
    repo = await SqliteNotifierRepository.open(StoreLocation.parse("memory://"))
    transport = CapturingTransport()
    app = create_app(
        settings,
        repository=repo,
        transport=transport,
        clock=Clock(DAY),
        notifier_settings=NotifierSettings(
            send_grace_s=0, send_rate_per_s=0, bounce_token_sha256=token_hash(FORWARDER_TOKEN)
        ),
        poll=False,
    )
    harness = Bounces(app=app, broker=app.broker, repo=repo, transport=transport)

    @app.broker.subscriber(DELIVERIES, batch=False)
    async def collect(_: Any, message: KafkaMessage) -> None:
        harness.records.append(message.body)

    async with TestKafkaBroker(app.broker):
        yield harness
    await repo.close()


def dsn(original: bytes, *, action: str = "failed", status: str = "5.1.1") -> bytes:
    """A delivery status notification as a receiving MTA sends it back (Postfix's layout)."""
    headers = original.split(b"\r\n\r\n", 1)[0]
    diagnostic = (
        "550 5.1.1 <ana@example.com>: Recipient address rejected: User unknown"
        if action == "failed"
        else "451 4.4.1 Connection timed out"
    )
    return (
        b"From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\n"
        b"To: offers@crm-stream.local\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\n"
        b"Message-ID: <20260302120501.4F2A1@mx.example.net>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: multipart/report; report-type=delivery-status;\r\n"
        b'\tboundary="4F2A1.1772452701/mx.example.net"\r\n'
        b"\r\n"
        b"This is a MIME-encapsulated message.\r\n"
        b"\r\n"
        b"--4F2A1.1772452701/mx.example.net\r\n"
        b"Content-Description: Notification\r\n"
        b"Content-Type: text/plain; charset=us-ascii\r\n"
        b"\r\n"
        b"This is the mail system at host mx.example.net.\r\n"
        b"I'm sorry to have to inform you that your message could not\r\n"
        b"be delivered to one or more recipients.\r\n"
        b"\r\n"
        b"--4F2A1.1772452701/mx.example.net\r\n"
        b"Content-Description: Delivery report\r\n"
        b"Content-Type: message/delivery-status\r\n"
        b"\r\n"
        b"Reporting-MTA: dns; mx.example.net\r\n"
        b"X-Postfix-Queue-ID: 4F2A1\r\n"
        b"Arrival-Date: Mon,  2 Mar 2026 12:00:01 +0000 (UTC)\r\n"
        b"\r\n"
        b"Final-Recipient: rfc822; Ana@Example.com\r\n"
        b"Original-Recipient: rfc822;ana@example.com\r\n"
        b"Action: " + action.encode() + b"\r\n"
        b"Status: " + status.encode() + b"\r\n"
        b"Remote-MTA: dns; mail.example.com\r\n"
        b"Diagnostic-Code: smtp; " + diagnostic.encode() + b"\r\n"
        b"\r\n"
        b"--4F2A1.1772452701/mx.example.net\r\n"
        b"Content-Description: Undelivered Message Headers\r\n"
        b"Content-Type: text/rfc822-headers\r\n"
        b"\r\n" + headers + b"\r\n"
        b"\r\n"
        b"--4F2A1.1772452701/mx.example.net--\r\n"
    )


async def post_dsn(b: Bounces, body: bytes, token: str | None = TOKENS["admin"]) -> httpx.Response:
    headers = {"Content-Type": "message/rfc822"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with b.client() as client:
        return await client.post("/api/bounces", content=body, headers=headers)


async def first_email(b: Bounces) -> bytes:
    await b.publish(CONTACTS, contact_payload(), key="c-1")
    await b.publish(OFFERS, offer_payload("of-1"), key="c-1")
    [sent] = b.transport.sent
    assert b.outcomes() == [("of-1", "sent", None)]
    return sent


async def test_dsn_of_a_permanent_failure_bounces_the_email_and_suppresses_the_address(
    b: Bounces,
) -> None:
    sent = await first_email(b)

    response = await post_dsn(b, dsn(sent))

    assert response.status_code == 202
    assert response.json() == {"result": "bounced"}
    assert b.outcomes()[-1] == ("of-1", "bounced", "dsn_5.1.1")
    assert (await b.repo.get_contacts(["c-1"]))["c-1"].bounced
    # No more e-mail to that address.
    await b.publish(OFFERS, offer_payload("of-2"), key="c-1")
    assert len(b.transport.sent) == 1
    assert b.outcomes()[-1] == ("of-2", "suppressed", "bounced")
    # The same report again: the same outcome, nothing else changes.
    assert (await post_dsn(b, dsn(sent))).json() == {"result": "already_bounced"}
    assert b.outcomes()[-1] == ("of-1", "bounced", "dsn_5.1.1")


async def test_a_new_address_after_a_bounce_receives_email_again(b: Bounces) -> None:
    sent = await first_email(b)
    assert (await post_dsn(b, dsn(sent))).json() == {"result": "bounced"}

    changed = contact_payload(at="2026-03-02T13:00:00+00:00") | {"email": "ana@new.example"}
    await b.publish(CONTACTS, changed, key="c-1")
    await b.publish(OFFERS, offer_payload("of-2"), key="c-1")

    assert len(b.transport.sent) == 2
    assert b.outcomes()[-1] == ("of-2", "sent", None)


async def test_dsn_of_a_delay_changes_nothing(b: Bounces) -> None:
    sent = await first_email(b)

    response = await post_dsn(b, dsn(sent, action="delayed", status="4.4.1"))

    assert (response.status_code, response.json()) == (202, {"result": "not_failed"})
    assert b.outcomes() == [("of-1", "sent", None)]
    assert not (await b.repo.get_contacts(["c-1"]))["c-1"].bounced
    await b.publish(OFFERS, offer_payload("of-2"), key="c-1")
    assert len(b.transport.sent) == 2


async def test_bounce_endpoint_takes_admin_or_the_forwarder_token_only(b: Bounces) -> None:
    sent = await first_email(b)
    assert (await post_dsn(b, dsn(sent), token=None)).status_code == 401
    assert (await post_dsn(b, dsn(sent), token="guess")).status_code == 401
    assert (await post_dsn(b, dsn(sent), token=TOKENS["agent"])).status_code == 403
    assert b.outcomes() == [("of-1", "sent", None)]

    response = await post_dsn(b, dsn(sent), token=FORWARDER_TOKEN)
    assert (response.status_code, response.json()) == (202, {"result": "bounced"})


async def test_a_message_that_is_not_a_dsn_is_refused(b: Bounces) -> None:
    sent = await first_email(b)
    assert (await post_dsn(b, sent)).status_code == 422  # our own e-mail, not a report
    other = dsn(sent).replace(b"<offer-of-1@crm-stream>", b"<someone-else@example.org>")
    assert (await post_dsn(b, other)).json() == {"result": "unknown_message"}
    assert b.outcomes() == [("of-1", "sent", None)]


def with_whole_message(report: bytes, original: bytes, padding: int) -> bytes:
    """The report carrying the whole original message (`message/rfc822`), padded in size."""
    head, _, _ = report.partition(b"Content-Description: Undelivered Message Headers\r\n")
    filler = b"X-Padding: " + b"x" * 70 + b"\r\n"
    return (
        head
        + b"Content-Description: Undelivered Message\r\n"
        + b"Content-Type: message/rfc822\r\n\r\n"
        + filler * (padding // len(filler))
        + original
        + b"\r\n--4F2A1.1772452701/mx.example.net--\r\n"
    )


async def test_a_large_dsn_with_the_whole_message_is_taken_and_an_oversized_body_is_not(
    b: Bounces,
) -> None:
    sent = await first_email(b)
    too_big = with_whole_message(dsn(sent), sent, padding=300 * 1024)
    assert (await post_dsn(b, too_big)).status_code == 413
    assert b.outcomes() == [("of-1", "sent", None)]

    report = with_whole_message(dsn(sent), sent, padding=150 * 1024)
    assert len(report) > 100 * 1024
    response = await post_dsn(b, report)
    assert (response.status_code, response.json()) == (202, {"result": "bounced"})


async def test_a_dsn_after_the_customer_was_erased_links_nothing_to_them(b: Bounces) -> None:
    sent = await first_email(b)
    await b.broker.publish(None, CONTACTS, key=b"c-1")  # the erasure's tombstone

    response = await post_dsn(b, dsn(sent))

    assert response.json() == {"result": "unknown_message"}
    assert b.outcomes() == [("of-1", "sent", None)]
