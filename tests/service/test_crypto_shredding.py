"""Crypto-shredding: personal fields travel sealed with a per-customer key, and an erasure
destroys the key, so what the topics retain of the customer no longer opens.

Ingest and profiles run through FastStream's TestKafkaBroker on one key vault; the tests read
the bytes of the records published on `crm.events` and `crm.contacts`, and feed those same
bytes to a fresh profiles service as a replay (or a restore of the topics) would.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from faststream.kafka import TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage

from services.ingest.app import create_app as create_ingest
from services.ingest.store_sqlite import SqliteIngestRepository
from services.notifier.app import create_app as create_notifier
from services.notifier.settings import NotifierSettings
from services.notifier.store_sqlite import SqliteNotifierRepository
from services.profiles.app import create_app as create_profiles
from services.profiles.store_sqlite import SqliteProfilesRepository
from shared.edge import Source
from shared.events import NORMALIZED_EVENT
from shared.privacy import card_id, customer_id_for_card
from shared.settings import DEV_CARD_KEY, KafkaSettings, Settings, SmtpSettings, StoreSettings
from shared.storage import StoreLocation
from shared.topics import CONTACTS, CUSTOMERS_RAW, EVENTS, INTERACTIONS_RAW, OFFERS
from shared.vault import Opener, Pending, sealed_decoder
from shared.vault_sqlite import SqliteVault

CARD = "6035 1234 5678 9012"
EMAIL = "ana.pereira@example.com"
NAME = "Anastasia"
BORN = "1990-02-28"
NOTE = "Ana called about her parcel to Rua das Flores"
PERSONAL = (EMAIL, NAME, BORN, "Rua das Flores")
T0 = dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)
NOW = T0 + dt.timedelta(days=30)

Record = tuple[bytes | None, bytes]


def settings() -> Settings:
    return Settings(
        kafka=KafkaSettings(kafka_bootstrap="test:9092"), store=StoreSettings(store_url="memory://")
    )


def customer() -> str:
    return customer_id_for_card(card_id(CARD, DEV_CARD_KEY.encode()))


def raw_customer(event_id: str, kind: str, at: dt.datetime, **fields: Any) -> bytes:
    document = {
        "event_id": event_id,
        "type": kind,
        "occurred_at": at.isoformat(),
        "card_number": CARD,
    }
    return json.dumps(document | fields).encode()


def signup(event_id: str, at: dt.datetime) -> bytes:
    return raw_customer(
        event_id,
        "signup",
        at,
        email=EMAIL,
        first_name=NAME,
        birth_date=BORN,
        marketing_consent=True,
    )


def interaction(event_id: str, at: dt.datetime) -> bytes:
    document = {
        "event_id": event_id,
        "type": "support_ticket",
        "occurred_at": at.isoformat(),
        "card_number": CARD,
        "channel": "phone",
        "details": {"note": NOTE, "topic": "delivery"},
    }
    return json.dumps(document).encode()


@dataclass
class Pipeline:
    vault: SqliteVault
    ingest_repo: SqliteIngestRepository
    events: list[Record] = field(default_factory=list)

    async def ingest(self, *messages: tuple[str, bytes]) -> list[Record]:
        """Raw messages through ingest; returns the records it published on crm.events."""
        app = create_ingest(settings(), repository=self.ingest_repo, vault=self.vault)
        published: list[Record] = []

        @app.broker.subscriber(EVENTS)
        async def collect(message: KafkaMessage) -> None:
            published.append((message.raw_message.key, message.body))  # type: ignore[union-attr]

        async with TestKafkaBroker(app.broker) as broker:
            for topic, value in messages:
                await broker.publish(value, topic, key=b"S001")
        self.events.extend(published)
        return published

    async def profiles(
        self, records: list[Record]
    ) -> tuple[SqliteProfilesRepository, list[Record], Counter[str]]:
        """Records of crm.events through a fresh profiles service (a replay); returns its
        store, the records it published on crm.contacts and its counters."""
        repo = await SqliteProfilesRepository.open(StoreLocation.parse("memory://"))
        app = create_profiles(settings(), repository=repo, clock=lambda: NOW, vault=self.vault)
        contacts: list[Record] = []

        @app.broker.subscriber(CONTACTS)
        async def collect(message: KafkaMessage) -> None:
            contacts.append((message.raw_message.key, message.body))  # type: ignore[union-attr]

        async with TestKafkaBroker(app.broker) as broker:
            for key, value in records:
                await broker.publish(value, EVENTS, key=key)
        return repo, contacts, app.service.stats


@pytest.fixture
async def pipeline() -> AsyncIterator[Pipeline]:
    vault = await SqliteVault.open(StoreLocation.parse("memory://"))
    repo = await SqliteIngestRepository.open(StoreLocation.parse("memory://"))
    yield Pipeline(vault, repo)
    await repo.close()
    await vault.close()


def assert_nothing_personal(records: list[Record]) -> None:
    for _, value in records:
        for personal in PERSONAL:
            assert personal.encode() not in value, personal


def kids(records: list[Record]) -> set[str]:
    """The key ids of the envelopes in these records."""
    found = set()
    for _, value in records:
        for item in json.loads(value).values():
            if isinstance(item, dict) and "kid" in item:
                found.add(item["kid"])
    return found


async def test_sign_up_and_interaction_travel_sealed_and_profiles_open_them(
    pipeline: Pipeline,
) -> None:
    events = await pipeline.ingest(
        (CUSTOMERS_RAW, signup("s-1", T0)),
        (INTERACTIONS_RAW, interaction("i-1", T0 + dt.timedelta(hours=1))),
    )
    assert len(events) == 2
    assert_nothing_personal(events)
    key = (await pipeline.vault.current([customer()]))[customer()]
    assert kids(events) == {key.kid}

    repo, contacts, _ = await pipeline.profiles(events)
    assert_nothing_personal(contacts)
    assert kids(contacts) == {key.kid}
    profile = await repo.get(customer())
    await repo.close()
    assert profile is not None
    assert profile.email == EMAIL
    assert profile.first_name == NAME
    assert profile.birth_date == dt.date.fromisoformat(BORN)
    assert profile.latest_interactions[-1].details["note"] == NOTE


async def test_an_erasure_destroys_the_key_and_a_replay_finds_nothing_personal(
    pipeline: Pipeline,
) -> None:
    before = await pipeline.ingest(
        (CUSTOMERS_RAW, signup("s-1", T0)),
        (INTERACTIONS_RAW, interaction("i-1", T0 + dt.timedelta(hours=1))),
    )
    [kid] = kids(before)
    await pipeline.ingest((CUSTOMERS_RAW, raw_customer("x-1", "erase", T0 + dt.timedelta(days=1))))
    assert await pipeline.vault.current([customer()]) == {}
    assert await pipeline.vault.keys([kid]) == {}

    # The records retained before the erasure no longer open.
    decode = sealed_decoder(NORMALIZED_EVENT)
    pending = [decode(Source(EVENTS, 0, n, k, v)) for n, (k, v) in enumerate(before)]
    assert all(isinstance(p, Pending) for p in pending)
    stats: Counter[str] = Counter()
    opened = await Opener(pipeline.vault, stats).open(pending)  # type: ignore[arg-type]
    assert stats["undecryptable"] == 4  # e-mail, first name, birth date, details
    assert all(PERSONAL[0] not in repr(event) for event in opened)

    # A restore of the topics as they were before the erasure rebuilds no personal data.
    repo, contacts, stats = await pipeline.profiles(before)
    profile = await repo.get(customer())
    assert profile is not None
    document = profile.model_dump_json()
    await repo.close()
    for personal in PERSONAL:
        assert personal not in document, personal
    assert profile.email is None
    assert profile.first_name is None
    assert profile.birth_date is None
    assert stats["undecryptable"] == 4
    assert_nothing_personal(contacts)

    # And the replay of everything retained ends erased.
    repo, _, _ = await pipeline.profiles(pipeline.events)
    profile = await repo.get(customer())
    await repo.close()
    assert profile is not None
    assert profile.erased


async def test_a_sign_up_after_an_erasure_gets_a_new_key(pipeline: Pipeline) -> None:
    first = await pipeline.ingest((CUSTOMERS_RAW, signup("s-1", T0)))
    await pipeline.ingest((CUSTOMERS_RAW, raw_customer("x-1", "erase", T0 + dt.timedelta(days=1))))
    again = await pipeline.ingest((CUSTOMERS_RAW, signup("s-2", T0 + dt.timedelta(days=2))))
    assert_nothing_personal(again)
    [old], [new] = kids(first), kids(again)
    assert new != old
    assert set(await pipeline.vault.keys([old, new])) == {new}


async def test_an_event_older_than_the_erasure_goes_out_without_personal_fields(
    pipeline: Pipeline,
) -> None:
    """It arrives after the erasure but happened before it: the erasure wins, no key is made."""
    await pipeline.ingest((CUSTOMERS_RAW, raw_customer("x-1", "erase", T0 + dt.timedelta(days=1))))
    late = await pipeline.ingest((CUSTOMERS_RAW, signup("s-1", T0)))
    [(_, value)] = late
    assert_nothing_personal(late)
    assert json.loads(value)["email"] is None
    assert await pipeline.vault.current([customer()]) == {}


async def test_a_redelivered_batch_seals_with_the_same_key(pipeline: Pipeline) -> None:
    first = await pipeline.ingest((CUSTOMERS_RAW, signup("s-1", T0)))
    # The same raw message again, as after a crash before ingest recorded it: a fresh store.
    pipeline.ingest_repo = await SqliteIngestRepository.open(StoreLocation.parse("memory://"))
    again = await pipeline.ingest((CUSTOMERS_RAW, signup("s-1", T0)))
    await pipeline.ingest_repo.close()
    assert kids(first) == kids(again)
    assert len(kids(first)) == 1


def written(outbox: Path) -> list[Path]:
    """The e-mails the notifier wrote to its outbox."""
    return sorted(outbox.glob("*.eml")) if outbox.exists() else []


async def notified(
    pipeline: Pipeline, contacts: list[Record], outbox: Path
) -> tuple[list[Path], Counter[str]]:
    """crm.contacts records, then an offer for the customer, through a fresh notifier that
    writes .eml files: the e-mails written and its counters."""
    repo = await SqliteNotifierRepository.open(StoreLocation.parse("memory://"))
    app = create_notifier(
        settings().model_copy(update={"smtp": SmtpSettings(smtp_host=None, outbox_dir=outbox)}),
        repository=repo,
        clock=lambda: NOW,
        notifier_settings=NotifierSettings(send_grace_s=0),
        poll=False,
        vault=pipeline.vault,
    )
    offer = {
        "type": "offer_issued",
        "offer_id": "of-1",
        "customer_id": customer(),
        "kind": "frequent_item",
        "coupon_code": "CPN-OF-1",
        "discount_percent": "10",
        "sku": "MILK-1L",
        "product_name": "Milk 1 l",
        "valid_from": NOW.date().isoformat(),
        "valid_until": (NOW + dt.timedelta(days=14)).date().isoformat(),
        "issued_at": NOW.isoformat(),
        "template": "frequent_item",
    }
    async with TestKafkaBroker(app.broker) as broker:
        for key, value in contacts:
            await broker.publish(value, CONTACTS, key=key)
        await broker.publish(json.dumps(offer).encode(), OFFERS, key=customer().encode())
    await repo.close()
    return written(outbox), app.service.stats


async def test_the_notifier_opens_a_sealed_contact_and_not_once_its_key_is_destroyed(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    events = await pipeline.ingest((CUSTOMERS_RAW, signup("s-1", T0)))
    repo, contacts, _ = await pipeline.profiles(events)
    await repo.close()
    assert_nothing_personal(contacts)

    [email], _ = await notified(pipeline, contacts, tmp_path / "before")
    assert EMAIL.encode() in await asyncio.to_thread(email.read_bytes)

    await pipeline.ingest((CUSTOMERS_RAW, raw_customer("x-1", "erase", T0 + dt.timedelta(days=1))))
    emails, stats = await notified(pipeline, contacts, tmp_path / "after")
    assert emails == []
    assert stats["undecryptable"] == 2  # the e-mail address and the first name
