"""The notifier app through FastStream's TestKafkaBroker, in outbox mode, on a memory store."""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from faststream import TestApp
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage

from services.notifier.app import create_app
from services.notifier.domain import Contact, new_delivery
from services.notifier.service import NotifierService
from services.notifier.settings import NotifierSettings
from services.notifier.store import StoreChanges
from services.notifier.store_sqlite import SqliteNotifierRepository
from shared.events import ConsentChanged, DeadLetter, DeliveryRecorded, OfferIssued
from shared.settings import (
    CalendarSettings,
    KafkaSettings,
    Settings,
    SmtpSettings,
    StoreSettings,
)
from shared.skeleton import ServiceApp
from shared.storage import StoreLocation
from shared.topics import CONTACTS, DEADLETTER, DELIVERIES, EVENTS, OFFERS

UTC = dt.UTC
DAY = dt.datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
NIGHT = dt.datetime(2026, 3, 2, 22, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@dataclass
class Harness:
    app: ServiceApp[NotifierService]
    broker: KafkaBroker
    repo: SqliteNotifierRepository
    outbox: Path
    clock: Clock
    deliveries: list[DeliveryRecorded] = field(default_factory=list)
    delivery_keys: list[bytes] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    events: list[ConsentChanged] = field(default_factory=list)

    def emails(self) -> list[Path]:
        return sorted(self.outbox.glob("*.eml")) if self.outbox.exists() else []

    async def publish(self, topic: str, payload: dict[str, Any] | None, key: str) -> None:
        value = None if payload is None else json.dumps(payload).encode()
        await self.broker.publish(value, topic, key=key.encode())


def offer_payload(offer_id: str = "of-1", customer_id: str = "c-1") -> dict[str, Any]:
    return {
        "type": "offer_issued",
        "offer_id": offer_id,
        "customer_id": customer_id,
        "kind": "frequent_item",
        "coupon_code": f"CPN-{offer_id.upper()}",
        "discount_percent": "10",
        "sku": "MILK-1L",
        "product_name": "Milk 1 l",
        "valid_from": "2026-03-02",
        "valid_until": "2026-03-16",
        "issued_at": "2026-03-02T10:00:00+00:00",
        "template": "frequent_item",
    }


def contact_payload(
    customer_id: str = "c-1", *, consent: bool = True, at: str = "2026-03-02T09:00:00+00:00"
) -> dict[str, Any]:
    return {
        "type": "contact_changed",
        "customer_id": customer_id,
        "email": "ana@example.com",
        "first_name": "Ana",
        "marketing_consent": consent,
        "home_store_id": "S001",
        "changed_at": at,
    }


async def harness_for(
    tmp_path: Path, *, quiet: str, now: dt.datetime, grace_s: float
) -> AsyncIterator[Harness]:
    """The app on a memory store with a clock the test moves; `grace_s` is the send grace."""
    settings = Settings(
        kafka=KafkaSettings(kafka_bootstrap="test:9092"),
        store=StoreSettings(store_url="memory://"),
        smtp=SmtpSettings(smtp_host=None, outbox_dir=tmp_path / "outbox"),
        calendar=CalendarSettings(timezone="UTC", quiet_hours=quiet),
    )
    repo = await SqliteNotifierRepository.open(StoreLocation.parse("memory://"))
    clock = Clock(now)
    app = create_app(
        settings,
        repository=repo,
        clock=clock,
        notifier_settings=NotifierSettings(send_grace_s=grace_s),
        poll=False,
    )
    broker = app.broker
    h = Harness(app=app, broker=broker, repo=repo, outbox=tmp_path / "outbox", clock=clock)

    @broker.subscriber(DELIVERIES, batch=False)
    async def collect_delivery(_: Any, message: KafkaMessage) -> None:
        h.deliveries.append(DeliveryRecorded.model_validate_json(message.body))
        h.delivery_keys.append(message.raw_message.key)  # type: ignore[union-attr]

    @broker.subscriber(DEADLETTER, batch=False)
    async def collect_dead(_: Any, message: KafkaMessage) -> None:
        h.dead.append(DeadLetter.model_validate_json(message.body))

    @broker.subscriber(EVENTS, batch=False)
    async def collect_event(_: Any, message: KafkaMessage) -> None:
        h.events.append(ConsentChanged.model_validate_json(message.body))

    async with TestKafkaBroker(broker):
        yield h
    await repo.close()


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    # No send grace: these tests see an e-mail sent in the batch that brought its offer.
    async for harness in harness_for(tmp_path, quiet="off", now=DAY, grace_s=0):
        yield harness


@pytest.fixture
async def quiet_h(tmp_path: Path) -> AsyncIterator[Harness]:
    async for harness in harness_for(tmp_path, quiet="21:00-08:00", now=NIGHT, grace_s=0):
        yield harness


async def test_offer_for_a_known_contact_is_written_once_even_when_published_twice(
    h: Harness,
) -> None:
    await h.publish(CONTACTS, contact_payload(), key="c-1")
    await h.publish(OFFERS, offer_payload(), key="c-1")
    await h.publish(OFFERS, offer_payload(), key="c-1")

    files = h.emails()
    assert [f.name for f in files] == ["of-1.eml"]
    parsed = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert parsed["Message-ID"] == "<offer-of-1@crm-stream>"
    assert "CPN-OF-1" in parsed.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    # The outcome may be reported again (same content), the e-mail is not written again.
    assert {(d.offer_id, d.state, d.attempts) for d in h.deliveries} == {("of-1", "written", 1)}
    assert set(h.delivery_keys) == {b"c-1"}
    stored = (await h.repo.get_deliveries(["of-1"]))["of-1"]
    assert (stored.state, stored.attempts) == ("written", 1)
    assert h.app.stats["emails_written"] == 1


async def test_offer_waits_for_the_contact_then_is_written(h: Harness) -> None:
    await h.publish(OFFERS, offer_payload(), key="c-1")
    assert h.emails() == []
    assert (await h.repo.get_deliveries(["of-1"]))["of-1"].state == "waiting_contact"
    assert h.deliveries == []

    await h.publish(CONTACTS, contact_payload(), key="c-1")
    assert [f.name for f in h.emails()] == ["of-1.eml"]
    assert [d.state for d in h.deliveries] == ["written"]


async def test_customer_without_consent_is_suppressed_and_nothing_is_written(h: Harness) -> None:
    await h.publish(CONTACTS, contact_payload(consent=False), key="c-1")
    await h.publish(OFFERS, offer_payload(), key="c-1")
    assert h.emails() == []
    assert [(d.state, d.reason) for d in h.deliveries] == [("suppressed", "no_consent")]


async def test_quiet_hours_hold_the_email_until_the_poller_runs_after_them(
    quiet_h: Harness,
) -> None:
    h = quiet_h
    await h.publish(CONTACTS, contact_payload(), key="c-1")
    await h.publish(OFFERS, offer_payload(), key="c-1")
    held = (await h.repo.get_deliveries(["of-1"]))["of-1"]
    assert held.state == "pending"
    assert held.not_before == dt.datetime(2026, 3, 3, 8, tzinfo=UTC)

    service = h.app.service
    assert await service.run_due() == []  # still night
    h.clock.now = dt.datetime(2026, 3, 3, 8, 0, 1, tzinfo=UTC)
    outgoing = await service.run_due()
    await h.app.publish(outgoing)
    assert [f.name for f in h.emails()] == ["of-1.eml"]
    assert [d.state for d in h.deliveries] == ["written"]


async def test_consent_withdrawn_cancels_a_held_back_email(quiet_h: Harness) -> None:
    h = quiet_h
    await h.publish(CONTACTS, contact_payload(), key="c-1")
    await h.publish(OFFERS, offer_payload(), key="c-1")
    await h.publish(
        CONTACTS, contact_payload(consent=False, at="2026-03-02T22:30:00+00:00"), key="c-1"
    )
    assert [(d.state, d.reason) for d in h.deliveries] == [("suppressed", "consent_withdrawn")]
    h.clock.now = dt.datetime(2026, 3, 3, 9, tzinfo=UTC)
    assert await h.app.service.run_due() == []
    assert h.emails() == []


async def test_erasure_tombstone_deletes_the_contact_and_cancels_waiting_emails(
    quiet_h: Harness,
) -> None:
    h = quiet_h
    await h.publish(CONTACTS, contact_payload(), key="c-1")
    await h.publish(OFFERS, offer_payload(), key="c-1")
    await h.publish(CONTACTS, None, key="c-1")

    assert await h.repo.get_contacts(["c-1"]) == {}
    stored = (await h.repo.get_deliveries(["of-1"]))["of-1"]
    assert (stored.state, stored.last_error, stored.offer) == (
        "suppressed",
        "customer_erased",
        None,
    )
    assert [(d.state, d.reason) for d in h.deliveries] == [("suppressed", "customer_erased")]


async def test_other_offer_events_are_ignored_and_garbage_is_dead_lettered(h: Harness) -> None:
    await h.publish(OFFERS, {"type": "offer_redeemed", "offer_id": "of-1"}, key="c-1")
    await h.publish(OFFERS, {"type": "held_out", "customer_id": "c-1"}, key="c-1")
    await h.publish(OFFERS, {"type": "offer_issued", "offer_id": "of-2"}, key="c-1")
    await h.publish(CONTACTS, {"customer_id": "c-1", "email": "x@example.com"}, key="c-1")

    assert [d.reason for d in h.dead] == ["invalid_offer", "invalid_contact"]
    assert all(d.service == "notifier" for d in h.dead)
    # The detail names fields, never the values (an address must not leak).
    assert "x@example.com" not in h.dead[1].detail
    # Offer events other than issued are not the notifier's: the edge counts them ignored.
    assert h.app.stats["ignored"] == 2
    assert h.emails() == []
    assert h.deliveries == []


async def test_keyless_tombstone_and_non_json_offer_are_dead_lettered(h: Harness) -> None:
    await h.publish(CONTACTS, None, key="")
    await h.broker.publish(b"not json", OFFERS, key=b"c-1")

    assert [d.reason for d in h.dead] == ["missing_key", "invalid_offer"]
    stats = h.app.stats
    assert (stats["dead_lettered_missing_key"], stats["dead_lettered_invalid_offer"]) == (1, 1)
    assert h.deliveries == []


async def test_app_opens_its_store_and_its_poller_sends_held_back_emails(tmp_path: Path) -> None:
    settings = Settings(
        kafka=KafkaSettings(kafka_bootstrap="test:9092"),
        store=StoreSettings(store_url="memory://"),
        smtp=SmtpSettings(smtp_host=None, outbox_dir=tmp_path / "outbox"),
        calendar=CalendarSettings(timezone="UTC", quiet_hours="off"),
    )
    app = create_app(
        settings, notifier_settings=NotifierSettings(due_poll_interval_s=0.02), clock=Clock(DAY)
    )
    broker = app.broker
    async with TestKafkaBroker(broker), TestApp(app.faststream):
        service = app.service
        await broker.publish(json.dumps(contact_payload()).encode(), CONTACTS, key=b"c-1")
        # Held back earlier by quiet hours, now due: only the poller can send it.
        held = replace(
            new_delivery(OfferIssued.model_validate(offer_payload()), DAY),
            state="pending",
            not_before=DAY - dt.timedelta(minutes=1),
        )
        await service.repository.apply(StoreChanges(deliveries=[held]))
        deadline = asyncio.get_running_loop().time() + 5
        outbox = tmp_path / "outbox" / "of-1.eml"
        while not outbox.exists():
            assert asyncio.get_running_loop().time() < deadline, "poller never sent"
            await asyncio.sleep(0.01)
    assert service.stats["emails_written"] == 1
    with pytest.raises(RuntimeError, match="not open"):
        _ = app.service


# ---------------------------------------------------------------- the send grace, revocations

GRACE = dt.timedelta(seconds=30)


@pytest.fixture
async def graced(tmp_path: Path) -> AsyncIterator[Harness]:
    async for harness in harness_for(tmp_path, quiet="off", now=DAY, grace_s=30):
        yield harness


def revoked_payload(offer_id: str = "of-1", customer_id: str = "c-1") -> dict[str, Any]:
    return {
        "type": "offer_revoked",
        "offer_id": offer_id,
        "customer_id": customer_id,
        "kind": "frequent_item",
        "coupon_code": f"CPN-{offer_id.upper()}",
        "reason": "consent",
        "revoked_at": "2026-03-02T10:30:00+00:00",
    }


async def due(h: Harness, at: dt.datetime) -> None:
    """The poller's turn at `at`: what it sends is published like the app does."""
    h.clock.now = at
    await h.app.publish(await h.app.service.run_due())


def outcomes(h: Harness) -> list[tuple[str, str, str | None]]:
    return [(d.offer_id, d.state, d.reason) for d in h.deliveries]


async def test_a_new_email_waits_the_grace_then_the_poller_sends_it(graced: Harness) -> None:
    h = graced
    await h.publish(CONTACTS, contact_payload(), key="c-1")
    await h.publish(OFFERS, offer_payload(), key="c-1")
    held = (await h.repo.get_deliveries(["of-1"]))["of-1"]
    assert (held.state, held.not_before) == ("pending", DAY + GRACE)
    assert h.emails() == []
    assert h.deliveries == []

    await due(h, DAY + GRACE - dt.timedelta(seconds=1))
    assert h.emails() == []
    await due(h, DAY + GRACE)
    assert [f.name for f in h.emails()] == ["of-1.eml"]
    assert outcomes(h) == [("of-1", "written", None)]
    assert (h.app.stats["deferred_grace"], h.app.stats["emails_written"]) == (1, 1)


async def test_a_contact_arriving_within_the_grace_does_not_cut_it_short(graced: Harness) -> None:
    h = graced
    await h.publish(OFFERS, offer_payload(), key="c-1")
    h.clock.now = DAY + dt.timedelta(seconds=5)
    await h.publish(CONTACTS, contact_payload(), key="c-1")
    held = (await h.repo.get_deliveries(["of-1"]))["of-1"]
    assert (held.state, held.not_before) == ("pending", DAY + GRACE)
    assert h.emails() == []
    await due(h, DAY + GRACE)
    assert [f.name for f in h.emails()] == ["of-1.eml"]


async def test_an_offer_revoked_within_the_grace_is_never_emailed(graced: Harness) -> None:
    h = graced
    await h.publish(CONTACTS, contact_payload(), key="c-1")
    await h.publish(OFFERS, offer_payload(), key="c-1")
    h.clock.now = DAY + dt.timedelta(seconds=10)
    await h.publish(OFFERS, revoked_payload(), key="c-1")

    assert outcomes(h) == [("of-1", "suppressed", "offer_revoked")]
    assert h.delivery_keys == [b"c-1"]
    stored = (await h.repo.get_deliveries(["of-1"]))["of-1"]
    assert (stored.state, stored.last_error, stored.attempts) == ("suppressed", "offer_revoked", 0)
    await due(h, DAY + dt.timedelta(hours=1))
    assert h.emails() == []
    stats = h.app.stats
    assert (stats["revocations_received"], stats["revoked_before_send"]) == (1, 1)
    assert stats["suppressed_offer_revoked"] == 1


async def test_a_revocation_arriving_before_its_offer_keeps_the_offer_from_being_sent(
    graced: Harness,
) -> None:
    h = graced
    await h.publish(CONTACTS, contact_payload(), key="c-1")
    # From another partition, the revocation overtook the offer it withdraws.
    await h.publish(OFFERS, revoked_payload(), key="c-0")
    assert outcomes(h) == [("of-1", "suppressed", "offer_revoked")]
    await h.publish(OFFERS, offer_payload(), key="c-1")
    await due(h, DAY + dt.timedelta(hours=1))

    assert h.emails() == []
    assert set(outcomes(h)) == {("of-1", "suppressed", "offer_revoked")}
    stored = (await h.repo.get_deliveries(["of-1"]))["of-1"]
    assert (stored.state, stored.last_error) == ("suppressed", "offer_revoked")
    assert stored.offer is not None  # seen now: a later issue of this id is a re-issue
    assert h.app.stats["revoked_before_offer"] == 1


async def test_a_revocation_after_sending_is_counted_and_changes_nothing(
    graced: Harness,
) -> None:
    h = graced
    await h.publish(CONTACTS, contact_payload(), key="c-1")
    await h.publish(OFFERS, offer_payload(), key="c-1")
    await due(h, DAY + GRACE)
    assert outcomes(h) == [("of-1", "written", None)]

    await h.publish(OFFERS, revoked_payload(), key="c-1")
    assert outcomes(h) == [("of-1", "written", None)]
    assert (await h.repo.get_deliveries(["of-1"]))["of-1"].state == "written"
    assert h.app.stats["revoked_after_send"] == 1
    assert len(h.emails()) == 1


async def test_an_offer_reissued_after_its_revocation_is_sent_once(graced: Harness) -> None:
    h = graced
    await h.publish(CONTACTS, contact_payload(), key="c-1")
    await h.publish(OFFERS, offer_payload(), key="c-1")
    await h.publish(OFFERS, revoked_payload(), key="c-1")
    reissued_at = DAY + dt.timedelta(minutes=5)
    h.clock.now = reissued_at
    await h.publish(OFFERS, offer_payload(), key="c-1")  # a later correction: same id
    held = (await h.repo.get_deliveries(["of-1"]))["of-1"]
    assert (held.state, held.not_before) == ("pending", reissued_at + GRACE)
    assert h.emails() == []

    await due(h, reissued_at + GRACE)
    await h.publish(OFFERS, offer_payload(), key="c-1")  # redelivered: not sent again
    await due(h, reissued_at + 2 * GRACE)
    assert [f.name for f in h.emails()] == ["of-1.eml"]
    assert outcomes(h)[:2] == [("of-1", "suppressed", "offer_revoked"), ("of-1", "written", None)]
    assert set(outcomes(h)[2:]) <= {("of-1", "written", None)}
    assert (h.app.stats["reissued"], h.app.stats["emails_written"]) == (1, 1)


async def test_a_garbled_revocation_is_dead_lettered(h: Harness) -> None:
    await h.publish(OFFERS, {"type": "offer_revoked", "offer_id": "of-1"}, key="c-1")
    assert [d.reason for d in h.dead] == ["invalid_offer"]
    assert h.deliveries == []


async def test_the_poller_goes_on_at_once_while_full_polls_are_due(tmp_path: Path) -> None:
    settings = Settings(
        kafka=KafkaSettings(kafka_bootstrap="test:9092"),
        store=StoreSettings(store_url="memory://"),
        smtp=SmtpSettings(smtp_host=None, outbox_dir=tmp_path / "outbox"),
        calendar=CalendarSettings(timezone="UTC", quiet_hours="off"),
    )
    # One delivery per poll and a long interval: only going on after a full poll sends all
    # three within the test's time.
    tuning = NotifierSettings(send_grace_s=30, due_poll_interval_s=60, due_batch_size=1)
    repo = await SqliteNotifierRepository.open(StoreLocation.parse("memory://"))
    held = [
        replace(
            new_delivery(OfferIssued.model_validate(offer_payload(f"of-{n}")), DAY),
            state="pending",
            not_before=DAY - dt.timedelta(seconds=n),
        )
        for n in range(1, 4)
    ]
    contact = Contact("c-1", "ana@example.com", "Ana", True, "S001", changed_at=DAY)
    await repo.apply(StoreChanges(contacts=[contact], deliveries=held))
    app = create_app(settings, repository=repo, notifier_settings=tuning, clock=Clock(DAY))
    outbox = tmp_path / "outbox"
    async with TestKafkaBroker(app.broker), TestApp(app.faststream):
        deadline = asyncio.get_running_loop().time() + 5
        while len(list(outbox.glob("*.eml")) if outbox.exists() else []) < 3:
            assert asyncio.get_running_loop().time() < deadline, "poller waited between polls"
            await asyncio.sleep(0.01)
    assert app.stats["emails_written"] == 3
    await repo.close()
