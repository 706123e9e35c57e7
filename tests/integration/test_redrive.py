"""`crm redrive` over the real Kafka protocol: a checkout dead-lettered by a bug in ingest is
sent through again once the fix is deployed, counted once however often it is redriven.

The broker is this module's own, so `crm.deadletter` holds only what these tests wrote; ingest
and profiles run in this process on SQLite files (ingest's event ids survive its restart), and
`crm redrive` runs as the command line it is.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from crm.embedded import EmbeddedKafka
from crm.redrive import REDRIVE_HEADER
from crm.traffic import read_topic
from services.ingest.app import SPEC as INGEST
from services.ingest.app import build as build_ingest
from services.ingest.service import IngestService
from services.ingest.store import IngestRepository
from services.profiles.app import SPEC as PROFILES
from services.profiles.service import ProfilesService
from shared.edge import Received, Source, dead_letter, dead_letter_message
from shared.events import DeadLetter
from shared.kafka import ensure_topics
from shared.privacy import card_id
from shared.raw import RawCheckout
from shared.settings import KafkaSettings, PrivacySettings, Settings, StoreSettings
from shared.skeleton import Handled, ServiceApp, running
from shared.topics import CHECKOUTS_RAW, DEADLETTER, EVENTS
from tests.keys import CARD_KEY, SERVICE_KEYS
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CARD = "6035 7700 1234 5678"
NEW_STORE = "S777"
"""A store opened after the release: the buggy ingest below fails on its checkouts."""


@pytest.fixture(scope="module")
def own_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaSettings]:
    log = tmp_path_factory.mktemp("redrive-broker") / "broker.log"
    with EmbeddedKafka(log_file=log) as broker:
        yield KafkaSettings(kafka_bootstrap=broker.bootstrap, batch_timeout_ms=50)


@pytest.fixture
def settings(own_kafka: KafkaSettings, tmp_path: Path) -> Settings:
    return Settings(
        kafka=own_kafka,
        store=StoreSettings(store_url=f"sqlite:///{tmp_path / 'store'}"),
        privacy=PrivacySettings(card_key=CARD_KEY),
    )


class StoreLookupBug(KeyError):
    """What the released ingest raised for a store it had no entry for (not transient)."""


class BuggyIngest(IngestService):
    """Ingest as released: a bug fails every checkout of the new store."""

    async def handle(self, batch: Sequence[Received[Any]]) -> Handled:
        if any(isinstance(r.event, RawCheckout) and r.event.store_id == NEW_STORE for r in batch):
            raise StoreLookupBug(NEW_STORE)
        return await super().handle(batch)


def buggy_build(settings: Settings, repository: IngestRepository) -> IngestService:
    real = build_ingest(settings, repository)
    return BuggyIngest(
        repository,
        card_key=CARD_KEY.encode(),
        calendar=settings.calendar,
        vault=real.vault,
    )


def checkout(event_id: str, store_id: str) -> bytes:
    return json.dumps(
        {
            "event_id": event_id,
            "store_id": store_id,
            "occurred_at": "2026-11-30T10:15:00+01:00",
            "card_number": CARD,
            "lines": [{"sku": "milk-1l", "quantity": 2, "unit_price": "1.19"}],
        }
    ).encode()


async def crm(settings: Settings, *args: str) -> tuple[int, dict[str, Any]]:
    """`crm redrive ... --json` as a process: its exit code and its JSON."""
    code, out = await crm_text(settings, *args, "--json")
    return code, json.loads(out)


async def crm_text(settings: Settings, *args: str) -> tuple[int, str]:
    """`crm redrive ...` as a process: its exit code and what it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env |= {
        **SERVICE_KEYS,
        "CRM_KAFKA_BOOTSTRAP": str(settings.kafka.kafka_bootstrap),
        "CRM_LOG_FORMAT": "json",
        "COLUMNS": "200",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "crm.cli",
        "redrive",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, errors = await asyncio.wait_for(process.communicate(), 180)
    assert process.returncode in (0, 1), errors.decode()[-3000:]
    return process.returncode, out.decode()


async def letters_of(settings: Settings, event_id: str) -> list[DeadLetter]:
    return [
        letter
        for letter in (
            DeadLetter.model_validate_json(r.value)
            for r in await read_topic(settings.kafka, DEADLETTER)
        )
        if letter.fields.get("event_id") == event_id
    ]


async def raw_copies(settings: Settings, event_id: str) -> list[Any]:
    """The records of the checkout on its raw topic: the till's and every redriven copy."""
    return [
        r
        for r in await read_topic(settings.kafka, CHECKOUTS_RAW)
        if json.loads(r.value)["event_id"] == event_id
    ]


async def normalized(settings: Settings, event_id: str) -> int:
    return sum(
        json.loads(r.value).get("event_id") == event_id
        for r in await read_topic(settings.kafka, EVENTS)
    )


@pytest.fixture
async def profiles(settings: Settings) -> AsyncIterator[ServiceApp[ProfilesService]]:
    await ensure_topics(settings.kafka)
    async with running(ServiceApp(PROFILES, settings)) as app:
        yield app


async def visits(app: ServiceApp[ProfilesService]) -> int:
    profile = await app.service.repository.find_by_card(card_id(CARD, CARD_KEY.encode()))
    return profile.visits if profile is not None else 0


async def test_a_checkout_dead_lettered_by_a_bug_is_redriven_after_the_fix_and_counted_once(
    settings: Settings, profiles: ServiceApp[ProfilesService], unique: str
) -> None:
    good, bad = f"{unique}-s001", f"{unique}-new-store"
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.kafka_bootstrap)
    await producer.start()
    try:
        async with running(ServiceApp(INGEST, settings, build=buggy_build)):
            await producer.send_and_wait(CHECKOUTS_RAW, checkout(good, "S001"), key=b"S001")
            await producer.send_and_wait(CHECKOUTS_RAW, checkout(bad, NEW_STORE), key=b"S777")

            async def dead_lettered() -> bool:
                return bool(await letters_of(settings, bad))

            await wait_for(dead_lettered)

            async def one_visit() -> bool:
                return await visits(profiles) == 1

            await wait_for(one_visit)
    finally:
        await producer.stop()
    [letter] = await letters_of(settings, bad)
    assert (letter.service, letter.reason) == ("ingest", "processing_failed")
    origin = f"{CHECKOUTS_RAW}/{letter.partition}/{letter.offset}".encode()
    since = letter.dead_lettered_at.isoformat()

    # Redriven before the fix: it fails again, and says so.
    async with running(ServiceApp(INGEST, settings, build=buggy_build)):
        code, early = await crm(settings, "--reason", "processing_failed", "--wait", "60")
    assert (code, early["redriven"], early["failed_again"]) == (1, 1, 1)
    assert len(await letters_of(settings, bad)) == 2
    [early_copy] = [r for r in await raw_copies(settings, bad) if r.headers]
    copy = f"{CHECKOUTS_RAW}/{early_copy.partition}/{early_copy.offset}".encode()

    # The fix is deployed: ingest runs again on the same store and group.
    async with running(ServiceApp(INGEST, settings)):
        code, dry = await crm(
            settings, "--reason", "processing_failed", "--since", since, "--dry-run"
        )
        assert (code, dry["selected"], dry["would_redrive"], dry["lost"]) == (0, 2, 2, 0)
        assert {item["event_id"] for item in dry["items"]} == {bad}
        assert len(await raw_copies(settings, bad)) == 2  # the dry run published nothing

        code, first = await crm(settings, "--reason", "processing_failed", "--wait", "60")
        assert (code, first["redriven"], first["lost"], first["failed_again"]) == (0, 2, 0, 0)

        async def two_visits() -> bool:
            return await visits(profiles) == 2

        await wait_for(two_visits)

        # Redriven again: ingest has the event id now and drops the copies.
        code, second = await crm(settings, "--service", "ingest", "--since", since, "--wait", "60")
        assert (code, second["redriven"], second["failed_again"]) == (0, 2, 0)
        headers = sorted(
            dict(r.headers).get(REDRIVE_HEADER, b"") for r in await raw_copies(settings, bad)
        )
        assert headers == sorted([b"", origin, origin, origin, copy, copy])
        assert await normalized(settings, bad) == 1
        assert await visits(profiles) == 2


async def test_a_dead_letter_whose_record_is_gone_is_reported_lost_and_nothing_is_sent(
    settings: Settings, unique: str
) -> None:
    await ensure_topics(settings.kafka)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.kafka_bootstrap)
    await producer.start()
    try:
        kept = await producer.send_and_wait(
            CHECKOUTS_RAW, checkout(f"{unique}-kept", "S001"), key=unique.encode()
        )
        replaced = Source(
            topic=CHECKOUTS_RAW,
            partition=kept.partition,
            offset=kept.offset,
            value=checkout(f"{unique}-before-the-topic-was-recreated", "S001"),
        )
        past_the_end = Source(
            topic=CHECKOUTS_RAW, partition=kept.partition, offset=kept.offset + 10_000
        )
        for source in (replaced, past_the_end):
            letter = dead_letter(
                service="ingest", source=source, reason=f"bug_{unique}", detail="a bug"
            )
            topic, key, value = dead_letter_message(letter)
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()
    before = len(await read_topic(settings.kafka, CHECKOUTS_RAW))

    code, report = await crm(settings, "--reason", f"bug_{unique}")

    assert (code, report["selected"], report["lost"], report["redriven"]) == (0, 2, 2, 0)
    notes = sorted(item["note"] for item in report["items"])
    assert notes[0].startswith("another record is at that offset")
    assert notes[1].startswith("past the partition's end")
    assert len(await read_topic(settings.kafka, CHECKOUTS_RAW)) == before


async def test_one_record_is_selected_by_its_position(settings: Settings, unique: str) -> None:
    await ensure_topics(settings.kafka)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.kafka_bootstrap)
    await producer.start()
    try:
        sent = []
        for n in range(2):
            value = checkout(f"{unique}-{n}", "S001")
            at = await producer.send_and_wait(CHECKOUTS_RAW, value, key=unique.encode())
            source = Source(
                topic=CHECKOUTS_RAW, partition=at.partition, offset=at.offset, value=value
            )
            letter = dead_letter(service="ingest", source=source, reason="x", detail="x")
            topic, key, dumped = dead_letter_message(letter)
            await producer.send_and_wait(topic, dumped, key=key)
            sent.append(at)
    finally:
        await producer.stop()
    position = [str(sent[1].partition), str(sent[1].offset)]
    one = ("--topic", CHECKOUTS_RAW, "--partition", position[0], "--offset", position[1])

    code, table = await crm_text(settings, *one, "--dry-run")
    assert code == 0
    assert f"{CHECKOUTS_RAW}/{position[0]}/{position[1]}" in table
    assert "would redrive: 1" in table

    code, report = await crm(settings, *one)

    assert (code, report["selected"], report["redriven"]) == (0, 1, 1)
    assert report["items"][0]["event_id"] == f"{unique}-1"
    assert len(await raw_copies(settings, f"{unique}-1")) == 2
    assert len(await raw_copies(settings, f"{unique}-0")) == 1
