"""The MongoDB restore drill: the services run on MongoDB, the operator's backup is taken at T
(every collection copied to a second database), more traffic (offers, e-mails, an erasure),
the database is lost and restored to T (copied back: MongoDB's point-in-time restore), then
`crm restore --point-in-time T` and the replay; the profiles and live offers are those before
the loss, no e-mail went out twice (Message-IDs as the SMTP server received them) and the
erased customer stays erased. Prints the RTO. Also: where the replay begins is found from the
records themselves, whatever the broker's time index answers."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pymongo import MongoClient

from crm.backup import offsets_at
from crm.embedded import EmbeddedKafka
from shared.settings import StoreSettings
from tests.e2e.conftest import Mailbox
from tests.e2e.restore_helpers import (
    GONE,
    check_restore_said,
    check_same_state,
    crm,
    drill_traffic,
    keys_of,
    snapshot,
    traces_of,
    wait_mail_settled,
)
from tests.reliability.harness import send_signups_first, wait_drained


def copy_database(url: str, source: str, target: str) -> int:
    """Every document of every collection of `source` into `target` (the repositories create
    their indexes when they open); returns the documents copied."""
    client: MongoClient[dict[str, Any]] = MongoClient(url)
    try:
        copied = 0
        for name in client[source].list_collection_names():
            documents = list(client[source][name].find())
            if documents:
                client[target][name].insert_many(documents)
                copied += len(documents)
        return copied
    finally:
        client.close()


def drop_database(url: str, name: str) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(url)
    try:
        client.drop_database(name)
        assert name not in client.list_database_names()
    finally:
        client.close()


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.mongo
def test_point_in_time_restore_of_mongodb_replays_to_the_same_state_without_mailing_twice(
    broker: EmbeddedKafka,
    smtp_server: tuple[Mailbox, int],
    make_pipeline: Any,
    mongo_store: StoreSettings,
) -> None:
    mailbox, port = smtp_server
    url, database = mongo_store.store_url or "", mongo_store.mongo_database
    pipeline = make_pipeline(
        CRM_SMTP_HOST="127.0.0.1",
        CRM_SMTP_PORT=str(port),
        CRM_STORE_URL=url,
        CRM_MONGO_DATABASE=database,
    )
    env = pipeline.env
    drill = drill_traffic()
    customers, erased = drill.customers, drill.erased

    pipeline.start_all()
    asyncio.run(send_signups_first(broker.bootstrap, drill.first))
    asyncio.run(wait_drained(broker.bootstrap))
    wait_mail_settled(mailbox)
    mailed_at_t = mailbox.count()

    # The operator's backup at T (the services keep running, idle).
    point = dt.datetime.now(dt.UTC)
    backup = f"{database}_at_t"
    assert copy_database(url, database, backup) > 0

    asyncio.run(send_signups_first(broker.bootstrap, [*drill.second, drill.erasure()]))
    asyncio.run(wait_drained(broker.bootstrap))
    wait_mail_settled(mailbox)
    assert mailbox.count() > mailed_at_t, "the traffic after T should send e-mails"
    profiles_before, offers_before = asyncio.run(snapshot(mongo_store, customers))
    assert profiles_before
    assert offers_before
    assert asyncio.run(traces_of(mongo_store, erased)) == GONE

    # The disaster: the services stop and the database is lost; MongoDB's point-in-time
    # restore brings it back as it was at T.
    pipeline.stop_all()
    lost_at = dt.datetime.now(dt.UTC)
    mailed_before_loss = mailbox.count()
    drop_database(url, database)
    started = time.monotonic()
    copy_database(url, backup, database)
    assert asyncio.run(keys_of(mongo_store, erased)), "at T the customer was not erased yet"

    # --force: the embedded broker keeps a stopped consumer listed in its group for ever.
    out = crm("restore", "--point-in-time", point.isoformat(), "--margin", "5s", "--force", env=env)
    check_restore_said(out)
    made_safe_in = time.monotonic() - started
    # Before any service runs: the erasure since T is re-applied from crm.events.
    assert asyncio.run(keys_of(mongo_store, erased)) == {}
    pipeline.start_all()
    asyncio.run(wait_drained(broker.bootstrap, within=300))
    wait_mail_settled(mailbox)
    rto = time.monotonic() - started

    after = asyncio.run(snapshot(mongo_store, customers))
    check_same_state((profiles_before, offers_before), after, drill.late_customers)
    profiles_after, offers_after = after
    received = mailbox.message_ids()
    assert sum(received.values()) == mailbox.count() == mailed_before_loss, "e-mailed again"
    assert max(received.values()) == 1, [k for k, n in received.items() if n > 1]
    assert asyncio.run(traces_of(mongo_store, erased)) == GONE, "the erased customer is back"

    print(
        f"\nMongoDB point-in-time drill: RPO {(lost_at - point).total_seconds():.1f} s (the "
        f"time since the point restored to); RTO {rto:.1f} s (the database copied back + "
        f"crm restore --point-in-time {made_safe_in:.1f} s + replay until drained); e-mails "
        f"re-sent: {sum(n - 1 for n in received.values())}; profiles {len(profiles_after)}, "
        f"live offers {len(offers_after)}, e-mails {mailbox.count()}"
    )


BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


async def lookups(bootstrap: str, cutoffs: list[int]) -> tuple[list[int], list[dict[Any, int]]]:
    """Records stamped BASE_MS + 1000 * i (some in one batch), on partition 0 of a new topic
    (partition 1 empty); where a replay from each cutoff begins."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic("pitr-probe", 2, 1)])
    finally:
        await admin.close()
    stamps = [*range(0, 10), 10, 10, 10, 10, *range(11, 20)]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=200)
    await producer.start()
    try:
        for i, second in enumerate(stamps):
            sent = await producer.send(
                "pitr-probe", b"x", partition=0, timestamp_ms=BASE_MS + second * 1000
            )
            if not 10 <= i < 13:  # 10..13: one batch
                await sent
        await producer.flush()
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition("pitr-probe", 0), TopicPartition("pitr-probe", 1)]
        found = []
        for cutoff in cutoffs:
            at = dt.datetime.fromtimestamp((BASE_MS + cutoff) / 1000, dt.UTC)
            found.append((await offsets_at(consumer, partitions, at)).offsets)
        return stamps, found
    finally:
        await consumer.stop()


@pytest.mark.integration
def test_the_replay_begins_at_the_first_record_stamped_at_the_cutoff_whatever_the_broker_answers(
    broker: EmbeddedKafka,
) -> None:
    """The embedded broker answers `offsets_for_times` by its own append time and with a
    batch's base offset; the records' own timestamps decide."""
    cutoffs = [-5000, 0, 500, 4000, 9500, 10_000, 10_500, 15_000, 19_000, 19_001, 99_000]
    stamps, found = asyncio.run(lookups(broker.bootstrap, cutoffs))
    for cutoff, offsets in zip(cutoffs, found, strict=True):
        first = next((i for i, s in enumerate(stamps) if s * 1000 >= cutoff), len(stamps))
        assert offsets == {
            TopicPartition("pitr-probe", 0): first,
            TopicPartition("pitr-probe", 1): 0,
        }, cutoff
