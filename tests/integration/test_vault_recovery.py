"""The data keys' durable copy over the real Kafka protocol on the embedded broker: ingest
publishes each key it seals with, wrapped, on `crm.data-keys` and a tombstone when it erases
it; a vault lost with the stores is rebuilt from the topic, and the sealed fields published
before the loss open again (SQLite and the MongoDB-wire server). And what ingest's batches
hold, through its real edge: a key goes out once, a tombstone before a new key."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from crm.traffic import read_topic
from services.ingest.app import create_app
from services.ingest.store_sqlite import SqliteIngestRepository
from shared.edge import Source
from shared.events import NORMALIZED_EVENT, CustomerSignedUp, DataKeyWrapped
from shared.kafka import ensure_topics
from shared.settings import KafkaSettings, Settings, StoreSettings
from shared.storage import StoreLocation
from shared.topics import CUSTOMERS_RAW, DATA_KEYS, EVENTS
from shared.vault import DataKey, Opener, Pending, open_vault, sealed_decoder, vault_for
from shared.vault_recovery import KeyWrapper, key_message, recover_keys
from tests.reliability.harness import record
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def customer_event(event_id: str, kind: str, card: str, **fields: Any) -> bytes:
    document = {
        "event_id": event_id,
        "type": kind,
        "occurred_at": "2026-03-01T10:15:00+00:00",
        "card_number": card,
        **fields,
    }
    return json.dumps(document).encode()


async def records_of(kafka: KafkaSettings, topic: str, customer_id: str) -> list[Any]:
    return [r for r in await read_topic(kafka, topic) if r.key == customer_id.encode()]


async def test_ingest_publishes_wrapped_keys_and_a_lost_vault_is_rebuilt_from_them(
    kafka_settings: KafkaSettings, every_store: StoreSettings, unique: str
) -> None:
    await ensure_topics(kafka_settings)
    settings = Settings(kafka=kafka_settings, store=StoreSettings(store_url="memory://"))
    repository = await SqliteIngestRepository.open(StoreLocation.parse("memory://"))
    lost = vault_for(settings.store)  # the vault that dies with the stores
    app = create_app(settings, repository=repository, vault=lost)
    digits = "".join(str(int(c, 16) % 10) for c in unique)
    card = f"6035 7{digits[:3]} {digits[3:7]} {digits[7]}{digits[:3]}"
    decode = sealed_decoder(NORMALIZED_EVENT)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.kafka_bootstrap)
    await producer.start()
    await app.start()
    try:
        signup = customer_event(
            f"{unique}-signup",
            "signup",
            card,
            email=f"ana-{unique}@example.com",
            first_name="Ana",
            marketing_consent=True,
        )
        await producer.send_and_wait(CUSTOMERS_RAW, signup, key=b"desk")

        async def signed_up() -> Source | None:
            for record in await read_topic(kafka_settings, EVENTS):
                if f"{unique}-signup".encode() in record.value:
                    return Source.of(record)
            return None

        async def published_signup() -> bool:
            return await signed_up() is not None

        await wait_for(published_signup)
        sealed = await signed_up()
        assert sealed is not None
        assert sealed.key is not None
        customer_id = sealed.key.decode()
        assert f"ana-{unique}".encode() not in (sealed.value or b"")

        async def key_published() -> bool:
            return bool(await records_of(kafka_settings, DATA_KEYS, customer_id))

        await wait_for(key_published)
        (published,) = await records_of(kafka_settings, DATA_KEYS, customer_id)
        key = (await lost.current([customer_id]))[customer_id]
        for clear in (key.key, base64.b64encode(key.key), key.key.hex().encode()):
            assert clear not in published.value
        wrapped = DataKeyWrapped.model_validate_json(published.value)
        assert (wrapped.customer_id, wrapped.kid) == (customer_id, key.kid)

        # The stores are lost: an empty vault, rebuilt from the topic.
        # (Other tests on this session's broker may wrap with other keys: accepted here.)
        async with open_vault(every_store) as rebuilt:
            report = await recover_keys(settings, rebuilt, accept_unreadable=True)
            assert report.restored >= 1
            assert (await rebuilt.current([customer_id]))[customer_id] == key
            pending = decode(sealed)
            assert isinstance(pending, Pending)
            (opened,) = await Opener(rebuilt, Counter()).open([pending])
            assert isinstance(opened, CustomerSignedUp)
            assert opened.email == f"ana-{unique}@example.com"

        erase = customer_event(f"{unique}-erase", "erase", card)
        await producer.send_and_wait(CUSTOMERS_RAW, erase, key=b"desk")

        async def tombstoned() -> bool:
            records = await records_of(kafka_settings, DATA_KEYS, customer_id)
            return bool(records) and records[-1].value is None

        await wait_for(tombstoned)
        assert await lost.current([customer_id]) == {}
        # A restore after the erasure finds the tombstone: the key stays destroyed.
        async with open_vault(StoreSettings(store_url="memory://")) as after:
            report = await recover_keys(settings, after, accept_unreadable=True)
            assert await after.current([customer_id]) == {}
            assert report.tombstoned >= 1
    finally:
        await app.stop()
        await producer.stop()
        await repository.close()


async def test_a_key_goes_out_once_and_a_tombstone_precedes_the_key_of_a_new_sign_up() -> None:
    settings = Settings(store=StoreSettings(store_url="memory://"))
    repository = await SqliteIngestRepository.open(StoreLocation.parse("memory://"))
    app = create_app(settings, repository=repository)
    card = "6035 1234 5678 9012"
    offset = 0

    async def batch(*values: bytes) -> list[tuple[str, bytes | None, bytes | None]]:
        nonlocal offset
        records = [record(CUSTOMERS_RAW, v, offset + n) for n, v in enumerate(values)]
        offset += len(values)
        outgoing, handled = await app.prepare(records)
        await handled.save()
        return [(topic, key, value) for topic, key, value in outgoing if topic == DATA_KEYS]

    try:
        first = await batch(customer_event("e-1", "signup", card, email="ana@example.com"))
        (_, customer, value) = first[0]
        assert len(first) == 1
        assert value is not None
        old_kid = DataKeyWrapped.model_validate_json(value).kid
        # The same customer's key seals again: already on Kafka, not published again.
        assert await batch(customer_event("e-2", "update", card, first_name="Ana")) == []

        again = await batch(
            customer_event("e-3", "erase", card),
            customer_event(
                "e-4",
                "signup",
                card,
                email="ana@example.org",
                occurred_at="2026-03-02T10:15:00+00:00",
            ),
        )
        # (The leads of the customer's addresses, merged into them, are erased too.)
        mine = [value for _, key, value in again if key == customer]
        assert [value is None for value in mine] == [True, False]
        renewed = mine[1]
        assert renewed is not None
        assert DataKeyWrapped.model_validate_json(renewed).kid != old_kid
        assert app.service.stats["data_keys_published"] == 2
    finally:
        await repository.close()


def run_recovery(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.vault_recovery", *args],
        env={"PATH": os.environ.get("PATH", ""), "CRM_LOG_FORMAT": "json", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_recovery_command_refuses_the_development_wrapping_key(tmp_path: Path) -> None:
    done = run_recovery(
        {"CRM_KAFKA_BOOTSTRAP": "127.0.0.1:9", "CRM_STORE_URL": f"sqlite://{tmp_path}"}
    )

    assert done.returncode == 2
    assert "CRM_KEY_WRAPPING_KEY is the development key" in done.stderr


def test_the_recovery_command_rebuilds_a_stores_vault_from_the_topic(
    kafka_settings: KafkaSettings, tmp_path: Path, unique: str
) -> None:
    wrapping = f"the-wrapping-key-of-this-test-{unique}-32b"
    key = DataKey.new(f"c-{unique}")
    key = DataKey(key.customer_id, key.kid, key.key, dt.datetime.now(dt.UTC))
    topic, message_key, value = key_message(KeyWrapper(wrapping), key)

    async def publish() -> None:
        await ensure_topics(kafka_settings)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, value, key=message_key)
        finally:
            await producer.stop()

    asyncio.run(publish())
    env = {
        "CRM_KAFKA_BOOTSTRAP": str(kafka_settings.kafka_bootstrap),
        "CRM_STORE_URL": f"sqlite://{tmp_path}",
    }

    refused = run_recovery({**env, "CRM_KEY_WRAPPING_KEY": f"another-wrapping-key-{unique}-32b"})
    # Other tests on this broker wrap with other keys: their records are accepted unreadable.
    done = run_recovery({**env, "CRM_KEY_WRAPPING_KEY": wrapping}, "--accept-unreadable")

    assert refused.returncode == 2, refused.stderr
    assert KeyWrapper(wrapping).key_id in refused.stderr
    assert wrapping not in refused.stderr + refused.stdout
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("data keys: ")

    async def restored() -> dict[str, DataKey]:
        async with open_vault(StoreSettings(store_url=f"sqlite://{tmp_path}")) as vault:
            return await vault.current([key.customer_id])

    assert asyncio.run(restored()) == {key.customer_id: key}
