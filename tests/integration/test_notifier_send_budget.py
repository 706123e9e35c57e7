"""One sending budget for every notifier instance: two services on one store, each with its own
pacing, together send no faster than CRM_SEND_RATE_PER_S, whether their due pollers or their
Kafka batches send.

Real clock, real store (a SQLite file both open, and the MongoDB-wire server). The only
assertion on time is a lower bound: the budget cannot be beaten however fast the machine,
while per-instance limits alone would let two instances send twice as fast.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from services.notifier.app import build_service, decode_contact, decode_offer
from services.notifier.domain import Contact, new_delivery
from services.notifier.service import NotifierService
from services.notifier.settings import NotifierSettings
from services.notifier.store import NotifierRepository, StoreChanges, open_repository
from shared.edge import Received, Source
from shared.events import OfferIssued
from shared.settings import CalendarSettings, Settings, SmtpSettings, StoreSettings
from shared.topics import CONTACTS, OFFERS

RATE_PER_S = 40.0
WINDOW_S = 0.1
PER_WINDOW = round(RATE_PER_S * WINDOW_S)
DELIVERIES = 24


class RecordingSmtp:
    """An SMTP server that accepts everything, rate-limited like the real transport."""

    idempotent = False
    rate_limited = True

    def __init__(self, sent: list[tuple[str, float]]) -> None:
        self.sent = sent

    async def send(self, message: EmailMessage, *, name: str) -> None:
        self.sent.append((name, time.monotonic()))

    async def close(self) -> None:
        return None


@pytest.fixture(params=["sqlite-file", pytest.param("mongo", marks=pytest.mark.mongo)])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSettings:
    if request.param == "sqlite-file":
        return StoreSettings(store_url=f"sqlite://{tmp_path}")
    store: StoreSettings = request.getfixturevalue("mongo_store")
    return store


@pytest.fixture
async def two_instances(
    shared_store: StoreSettings, tmp_path: Path
) -> AsyncIterator[tuple[list[tuple[str, float]], list[NotifierService]]]:
    settings = Settings(
        # The repositories below are on the shared store; this one only chooses the key
        # vault, and no contact here is sealed.
        store=StoreSettings(store_url="memory://"),
        smtp=SmtpSettings(outbox_dir=tmp_path / "outbox"),
        calendar=CalendarSettings(quiet_hours="off"),
    )
    notifier = NotifierSettings(
        send_grace_s=0, send_rate_per_s=RATE_PER_S, send_budget_window_s=WINDOW_S
    )
    sent: list[tuple[str, float]] = []
    async with open_repository(shared_store) as first, open_repository(shared_store) as second:
        services = [
            build_service(settings, repo, transport=RecordingSmtp(sent), notifier_settings=notifier)
            for repo in (first, second)
        ]
        yield sent, services


def due_offer(n: int, now: dt.datetime) -> OfferIssued:
    today = now.date()
    return OfferIssued.model_validate(
        {
            "offer_id": f"of-{n:03d}",
            "customer_id": f"c-{n:03d}",
            "kind": "frequent_item",
            "coupon_code": f"CPN-{n:03d}",
            "discount_percent": "10",
            "sku": "MILK-1L",
            "product_name": "Milk 1 l",
            "valid_from": today.isoformat(),
            "valid_until": (today + dt.timedelta(days=14)).isoformat(),
            "issued_at": now.isoformat(),
            "template": "frequent_item",
        }
    )


OFFER_IDS = [f"of-{n:03d}" for n in range(DELIVERIES)]


async def queue_due(repo: NotifierRepository) -> None:
    """Every delivery pending and due now, its contact known."""
    now = dt.datetime.now(dt.UTC)
    offers = [due_offer(n, now) for n in range(DELIVERIES)]
    contacts = [
        Contact(
            customer_id=o.customer_id,
            email=f"{o.customer_id}@example.com",
            first_name="Ana",
            marketing_consent=True,
            home_store_id="S001",
            changed_at=now,
        )
        for o in offers
    ]
    deliveries = [replace(new_delivery(o, now), state="pending", not_before=now) for o in offers]
    await repo.apply(StoreChanges(contacts=contacts, deliveries=deliveries))


async def drain(service: NotifierService, deadline: float) -> None:
    """Poll as the due poller does until no delivery is left to send."""
    while time.monotonic() < deadline:
        await service.run_due()
        found = await service.repository.get_deliveries(OFFER_IDS)
        if all(d.is_final for d in found.values()):
            return
        if not service.due_backlog:
            await asyncio.sleep(WINDOW_S / 4)
    raise AssertionError("the due deliveries were not sent in time")


async def test_two_instances_together_send_no_faster_than_the_shared_budget(
    two_instances: tuple[list[tuple[str, float]], list[NotifierService]],
) -> None:
    sent, services = two_instances
    await queue_due(services[0].repository)
    started = time.monotonic()
    deadline = started + 60
    await asyncio.gather(*(drain(s, deadline) for s in services))
    names = [name for name, _ in sent]
    assert Counter(names) == Counter(dict.fromkeys(OFFER_IDS, 1))
    # DELIVERIES / PER_WINDOW windows' worth of budget: the first window may be nearly over
    # when the pollers start, every later one is whole. Per-instance pacing alone (a burst
    # of a second's rate each) would send them all at once.
    windows = DELIVERIES // PER_WINDOW
    assert max(t for _, t in sent) - started >= (windows - 2) * WINDOW_S


def received(topic: str, key: str, payload: dict[str, object], offset: int) -> Received[Any]:
    """A record's event, decoded as the edge decodes it."""
    source = Source(
        topic=topic,
        partition=0,
        offset=offset,
        key=key.encode(),
        value=json.dumps(payload).encode(),
    )
    event = (decode_contact if topic == CONTACTS else decode_offer)(source)
    assert event is not None
    return Received(event, source)


def batch_of(numbers: range, now: dt.datetime) -> list[Received[Any]]:
    """Contacts and offers of these customers, as one Kafka batch brings them."""
    batch: list[Received[Any]] = []
    for n in numbers:
        offer = due_offer(n, now)
        contact = {
            "type": "contact_changed",
            "customer_id": offer.customer_id,
            "email": f"{offer.customer_id}@example.com",
            "first_name": "Ana",
            "marketing_consent": True,
            "home_store_id": None,
            "changed_at": now.isoformat(),
        }
        batch.append(received(CONTACTS, offer.customer_id, contact, 2 * n))
        batch.append(received(OFFERS, offer.customer_id, offer.model_dump(mode="json"), 2 * n + 1))
    return batch


async def test_batches_sending_at_once_in_two_instances_share_the_budget_too(
    two_instances: tuple[list[tuple[str, float]], list[NotifierService]],
) -> None:
    sent, services = two_instances
    now = dt.datetime.now(dt.UTC)
    half = DELIVERIES // 2
    started = time.monotonic()
    # No send grace: each batch sends its e-mails itself, without the due poller.
    await asyncio.gather(
        services[0].handle(batch_of(range(half), now)),
        services[1].handle(batch_of(range(half, DELIVERIES), now)),
    )
    assert Counter(name for name, _ in sent) == Counter(dict.fromkeys(OFFER_IDS, 1))
    windows = DELIVERIES // PER_WINDOW
    assert max(t for _, t in sent) - started >= (windows - 2) * WINDOW_S
    assert sum(s.stats["send_budget_waits"] for s in services) > 0
