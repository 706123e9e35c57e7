"""The notifier against a real SMTP server (aiosmtpd on a free loopback port)."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
import re
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from services.notifier.app import build_service, decode_contact, decode_offer
from services.notifier.domain import message_id_for, new_delivery
from services.notifier.service import NotifierService
from services.notifier.settings import NotifierSettings
from services.notifier.store import StoreChanges
from services.notifier.store_sqlite import SqliteNotifierRepository
from shared.edge import Outgoing, Received, Source
from shared.events import DeliveryRecorded, OfferIssued
from shared.settings import CalendarSettings, KafkaSettings, Settings, SmtpSettings, StoreSettings
from shared.storage import StoreLocation
from shared.topics import CONTACTS, DELIVERIES, OFFERS

UTC = dt.UTC
DAY = dt.datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


class ScriptedHandler:
    """Accepts mail, but first answers RCPT with the scripted replies, or drops the link."""

    def __init__(self) -> None:
        self.received: list[EmailMessage] = []
        self.raw: list[bytes] = []
        """The DATA bytes exactly as the server received them."""
        self.rcpt_replies: list[str] = []
        self.drop_next_data = False

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.rcpt_replies:
            return self.rcpt_replies.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.drop_next_data:
            self.drop_next_data = False
            assert server.transport is not None
            server.transport.close()
            return "421 closing"
        content = envelope.original_content or b""
        self.raw.append(content)
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.received.append(message)
        return "250 Message accepted"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def smtp_server() -> Iterator[tuple[ScriptedHandler, int]]:
    handler = ScriptedHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


async def make_service(
    port: int, clock: Clock, *, quiet: str = "off", attempts: int = 3, grace_s: float = 0
) -> tuple[NotifierService, SqliteNotifierRepository]:
    """The service on a memory store; no send grace unless asked, so that an e-mail goes out
    in the batch of its offer."""
    settings = Settings(
        kafka=KafkaSettings(kafka_bootstrap="test:9092"),
        store=StoreSettings(store_url="memory://"),
        smtp=SmtpSettings(smtp_host="127.0.0.1", smtp_port=port, smtp_timeout_s=5),
        calendar=CalendarSettings(timezone="UTC", quiet_hours=quiet),
    )
    repo = await SqliteNotifierRepository.open(StoreLocation.parse("memory://"))
    service = build_service(
        settings,
        repo,
        notifier_settings=NotifierSettings(
            send_grace_s=grace_s,
            send_max_attempts=attempts,
            send_backoff_base_s=0.01,
            send_backoff_max_s=0.05,
            send_rate_per_s=0,
        ),
        clock=clock,
    )
    return service, repo


@pytest.fixture
async def setup(
    smtp_server: tuple[ScriptedHandler, int],
) -> AsyncIterator[tuple[ScriptedHandler, NotifierService, SqliteNotifierRepository, Clock]]:
    handler, port = smtp_server
    clock = Clock(DAY)
    service, repo = await make_service(port, clock)
    yield handler, service, repo, clock
    await repo.close()


_offsets = iter(range(1_000_000))


def record(topic: str, key: str, payload: dict[str, Any] | None) -> Received[Any]:
    """The event of a record, decoded as the edge decodes it."""
    value = None if payload is None else json.dumps(payload).encode()
    source = Source(topic=topic, partition=0, offset=next(_offsets), key=key.encode(), value=value)
    decode = decode_contact if topic == CONTACTS else decode_offer
    event = decode(source)
    assert event is not None
    return Received(event, source)


async def handle(service: NotifierService, *batch: Received[Any]) -> list[Outgoing]:
    """One batch through the service: what it has to publish (it rejects nothing here)."""
    handled = await service.handle(batch)
    assert list(handled.rejected) == []
    return list(handled.outgoing)


def contact(customer_id: str = "c-1", *, consent: bool = True, at: str = "09:00") -> Received[Any]:
    return record(
        CONTACTS,
        customer_id,
        {
            "type": "contact_changed",
            "customer_id": customer_id,
            "email": f"{customer_id}@example.com",
            "first_name": "Ana",
            "marketing_consent": consent,
            "home_store_id": None,
            "changed_at": f"2026-03-02T{at}:00+00:00",
        },
    )


def offer_dict(offer_id: str = "of-1", customer_id: str = "c-1") -> dict[str, Any]:
    return {
        "type": "offer_issued",
        "offer_id": offer_id,
        "customer_id": customer_id,
        "kind": "birthday",
        "coupon_code": f"BDAY-{offer_id.upper()}",
        "discount_percent": "15",
        "valid_from": "2026-03-02",
        "valid_until": "2026-03-09",
        "issued_at": "2026-03-02T00:00:00+00:00",
        "template": "birthday",
    }


def offer(offer_id: str = "of-1", customer_id: str = "c-1") -> Received[Any]:
    return record(OFFERS, customer_id, offer_dict(offer_id, customer_id))


def outcomes(outgoing: list[Any]) -> list[DeliveryRecorded]:
    return [DeliveryRecorded.model_validate_json(v) for t, _, v in outgoing if t == DELIVERIES]


async def test_email_is_received_with_both_parts_and_the_headers(setup: Any) -> None:
    handler, service, repo, _ = setup
    outgoing = await handle(service, contact(), offer())

    assert len(handler.received) == 1
    message = handler.received[0]
    assert message["Message-ID"] == "<offer-of-1@crm-stream>"
    assert message["To"] == "c-1@example.com"
    assert "birthday" in str(message["Subject"]).lower()
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    assert text is not None
    assert html is not None
    assert "BDAY-OF-1" in text.get_content()
    assert "BDAY-OF-1" in html.get_content()

    [recorded] = outcomes(outgoing)
    assert (recorded.state, recorded.attempts, recorded.message_id) == (
        "sent",
        1,
        "<offer-of-1@crm-stream>",
    )
    assert "c-1@example.com" not in recorded.model_dump_json()
    assert (await repo.get_deliveries(["of-1"]))["of-1"].state == "sent"
    # Seen again after a restart: not sent again.
    again = await handle(service, offer())
    assert len(handler.received) == 1
    assert [r.state for r in outcomes(again)] == ["sent"]


def raw_header(raw: bytes, name: bytes) -> bytes:
    """A header's value as sent, RFC 5322 folding undone but nothing decoded."""
    match = re.search(rb"^" + name + rb":(.*(?:\r\n[ \t].*)*)\r\n", raw, re.MULTILINE)
    assert match, raw[:2000]
    return re.sub(rb"\r\n([ \t])", rb"\1", match.group(1)).strip()


async def test_one_click_unsubscribe_headers_arrive_plain_not_encoded(setup: Any) -> None:
    handler, service, _, _ = setup
    await handle(service, contact(), offer())

    [raw] = handler.raw
    link = raw_header(raw, b"List-Unsubscribe")
    # RFC 2369 / RFC 8058: a literal <URL> (longer than a 78-character line), no encoded-word.
    assert re.fullmatch(rb"<http://localhost:8080/unsubscribe\?token=[A-Za-z0-9._%-]+>", link), link
    assert len(link) > 78
    assert b"=?" not in link
    assert raw_header(raw, b"List-Unsubscribe-Post") == b"List-Unsubscribe=One-Click"


async def test_temporary_refusal_is_retried_and_the_email_arrives_once(setup: Any) -> None:
    handler, service, _repo, _ = setup
    handler.rcpt_replies = ["451 4.3.0 Try again later"]
    outgoing = await handle(service, contact(), offer())

    assert len(handler.received) == 1
    [recorded] = outcomes(outgoing)
    assert (recorded.state, recorded.attempts) == ("sent", 2)
    assert service.stats["send_retries"] == 1


async def test_temporary_refusals_until_the_last_attempt_end_failed(setup: Any) -> None:
    handler, service, repo, _ = setup
    handler.rcpt_replies = ["451 4.3.0 Try again later"] * 3
    outgoing = await handle(service, contact(), offer())

    assert handler.received == []
    [recorded] = outcomes(outgoing)
    assert (recorded.state, recorded.attempts, recorded.reason) == (
        "failed",
        3,
        "smtp_451_recipient",
    )
    assert (await repo.get_deliveries(["of-1"]))["of-1"].state == "failed"


async def test_permanent_refusal_bounces_and_later_offers_are_suppressed(setup: Any) -> None:
    handler, service, repo, _ = setup
    handler.rcpt_replies = ["550 5.1.1 No such user"]
    first = await handle(service, contact(), offer("of-1"))

    [bounced] = outcomes(first)
    assert (bounced.state, bounced.reason) == ("bounced", "smtp_550_recipient")
    assert (await repo.get_contacts(["c-1"]))["c-1"].bounced

    later = await handle(service, offer("of-2"))
    [suppressed] = outcomes(later)
    assert (suppressed.state, suppressed.reason) == ("suppressed", "bounced")
    assert handler.received == []


async def test_dropped_connection_is_retried_on_a_new_one(setup: Any) -> None:
    handler, service, _, _ = setup
    handler.drop_next_data = True
    outgoing = await handle(service, contact(), offer("of-1"), offer("of-2"))

    assert sorted(m["Message-ID"] for m in handler.received) == [
        "<offer-of-1@crm-stream>",
        "<offer-of-2@crm-stream>",
    ]
    assert sorted((r.offer_id, r.state) for r in outcomes(outgoing)) == [
        ("of-1", "sent"),
        ("of-2", "sent"),
    ]


async def test_consent_withdrawn_before_sending_means_no_email(
    smtp_server: tuple[ScriptedHandler, int],
) -> None:
    handler, port = smtp_server
    clock = Clock(dt.datetime(2026, 3, 2, 23, 0, tzinfo=UTC))
    service, repo = await make_service(port, clock, quiet="21:00-08:00")
    try:
        await handle(service, contact(), offer())
        assert (await repo.get_deliveries(["of-1"]))["of-1"].state == "pending"
        withdrawn = await handle(service, contact(consent=False, at="23:30"))
        assert [(r.state, r.reason) for r in outcomes(withdrawn)] == [
            ("suppressed", "consent_withdrawn")
        ]
        clock.now = dt.datetime(2026, 3, 3, 8, 30, tzinfo=UTC)
        assert await service.run_due() == []
        assert handler.received == []
    finally:
        await repo.close()


async def test_held_back_email_is_sent_by_the_poll_after_quiet_hours(
    smtp_server: tuple[ScriptedHandler, int],
) -> None:
    handler, port = smtp_server
    clock = Clock(dt.datetime(2026, 3, 2, 23, 0, tzinfo=UTC))
    service, repo = await make_service(port, clock, quiet="21:00-08:00")
    try:
        await handle(service, contact(), offer())
        assert handler.received == []
        clock.now = dt.datetime(2026, 3, 3, 8, 0, 5, tzinfo=UTC)
        [recorded] = outcomes(await service.run_due())
        assert recorded.state == "sent"
        assert len(handler.received) == 1
    finally:
        await repo.close()


async def test_delivery_left_sending_by_a_crash_is_resent_with_the_same_message_id(
    setup: Any,
) -> None:
    handler, service, repo, clock = setup
    await handle(service, contact())
    interrupted = replace(
        new_delivery(OfferIssued.model_validate(offer_dict()), DAY), state="sending"
    )
    await repo.apply(StoreChanges(deliveries=[interrupted]))

    # Within the lease it may be a send in flight on another instance: left alone.
    assert await service.run_due() == []
    assert handler.received == []
    clock.now = DAY + dt.timedelta(seconds=service.settings.sending_lease_s + 1)
    [recorded] = outcomes(await service.run_due())
    assert recorded.state == "sent"
    assert [m["Message-ID"] for m in handler.received] == [message_id_for("of-1")]


# ---------------------------------------------------------------- the send grace, revocations

GRACE = dt.timedelta(seconds=30)


def revoked(offer_id: str = "of-1", customer_id: str = "c-1") -> Received[Any]:
    return record(
        OFFERS,
        customer_id,
        {
            "type": "offer_revoked",
            "offer_id": offer_id,
            "customer_id": customer_id,
            "kind": "birthday",
            "coupon_code": f"BDAY-{offer_id.upper()}",
            "reason": "cap",
            "revoked_at": "2026-03-02T11:00:00+00:00",
        },
    )


@pytest.fixture
async def graced(
    smtp_server: tuple[ScriptedHandler, int],
) -> AsyncIterator[tuple[ScriptedHandler, NotifierService, SqliteNotifierRepository, Clock]]:
    handler, port = smtp_server
    clock = Clock(DAY)
    service, repo = await make_service(port, clock, grace_s=GRACE.total_seconds())
    yield handler, service, repo, clock
    await repo.close()


async def test_email_waits_the_grace_then_the_poll_sends_it_over_smtp(graced: Any) -> None:
    handler, service, repo, clock = graced
    assert outcomes(await handle(service, contact(), offer())) == []
    assert handler.received == []
    assert (await repo.get_deliveries(["of-1"]))["of-1"].not_before == DAY + GRACE

    clock.now = DAY + GRACE - dt.timedelta(seconds=1)
    assert await service.run_due() == []
    clock.now = DAY + GRACE
    [recorded] = outcomes(await service.run_due())
    assert (recorded.state, recorded.message_id) == ("sent", message_id_for("of-1"))
    assert [m["Message-ID"] for m in handler.received] == [message_id_for("of-1")]


async def test_offer_revoked_within_the_grace_never_reaches_the_smtp_server(
    graced: Any,
) -> None:
    handler, service, repo, clock = graced
    await handle(service, contact(), offer())
    clock.now = DAY + dt.timedelta(seconds=3)
    [recorded] = outcomes(await handle(service, revoked()))
    assert (recorded.state, recorded.reason, recorded.attempts) == (
        "suppressed",
        "offer_revoked",
        0,
    )
    clock.now = DAY + dt.timedelta(hours=1)
    assert await service.run_due() == []
    # Both redelivered, in their order: reported again, still not sent.
    assert [(r.state, r.reason) for r in outcomes(await handle(service, offer(), revoked()))] == [
        ("suppressed", "offer_revoked")
    ]
    assert handler.received == []
    assert (await repo.get_deliveries(["of-1"]))["of-1"].state == "suppressed"


async def test_revocation_before_the_offer_and_after_sending(graced: Any) -> None:
    handler, service, _repo, clock = graced
    await handle(service, contact())
    # of-1: the revocation overtook the offer; of-2: revoked once its e-mail had gone.
    await handle(service, revoked("of-1"))
    await handle(service, offer("of-1"), offer("of-2"))
    clock.now = DAY + GRACE
    [sent] = outcomes(await service.run_due())
    assert (sent.offer_id, sent.state) == ("of-2", "sent")
    assert outcomes(await handle(service, revoked("of-2"))) == []

    assert [m["Message-ID"] for m in handler.received] == [message_id_for("of-2")]
    stats = service.stats
    assert (stats["revoked_before_offer"], stats["revoked_after_send"]) == (1, 1)


async def test_offer_reissued_after_its_revocation_is_sent_once_over_smtp(graced: Any) -> None:
    handler, service, _repo, clock = graced
    await handle(service, contact(), offer(), revoked())
    clock.now = DAY + dt.timedelta(minutes=2)
    await handle(service, offer())  # re-issued by a later correction
    clock.now += GRACE
    [recorded] = outcomes(await service.run_due())
    assert recorded.state == "sent"
    await handle(service, offer())
    clock.now += GRACE
    assert await service.run_due() == []
    assert [m["Message-ID"] for m in handler.received] == [message_id_for("of-1")]
