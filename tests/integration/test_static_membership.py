"""Static group membership (CRM_KAFKA_INSTANCE_ID) over the real protocol on the embedded broker.

What the broker sees is checked, not the client's memory of its options: the member ids the
group coordinator hands out (a static member's id starts with its `group.instance.id`, in
Apache Kafka and in Tansu alike) and the partitions each member holds.

Tansu accepts JoinGroup v5+ with `group.instance.id`, keeps a static member's identity and its
partitions across a restart, but still runs a rebalance round when it comes back (the group's
generation moves); Apache Kafka 2.3+ hands the returning member its assignment without one.
The tests therefore assert what holds on both: identity and assignment survive a restart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faststream.kafka import KafkaBroker
from faststream.kafka.subscriber.usecase import BatchSubscriber

from shared.kafka import batch_subscriber, new_broker
from shared.settings import KafkaSettings
from tests.topics import create_topic
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

PARTITIONS = 4


async def group_member_ids(settings: KafkaSettings, group: str) -> list[str]:
    """The member ids the group coordinator reports (DescribeGroups)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([group])
        (described,) = response.to_object()["groups"]
        return sorted(m["member_id"] for m in described["members"])
    finally:
        await admin.close()


@asynccontextmanager
async def member(
    settings: KafkaSettings, group: str, topic: str, instance_id: str | None
) -> AsyncIterator[BatchSubscriber]:
    """A consumer built as every service builds it (`new_broker` + `batch_subscriber`)."""
    options = settings.model_copy(update={"kafka_instance_id": instance_id})
    broker: KafkaBroker = new_broker(options, client_id=f"crm-test-{instance_id}")
    subscriber = batch_subscriber(broker, options, group, topic)

    @subscriber
    async def handle(_: list[bytes]) -> None:
        return None

    await broker.start()
    try:
        yield subscriber
    finally:
        await broker.stop()


def held(subscriber: BatchSubscriber) -> frozenset[TopicPartition]:
    consumer = subscriber.consumer
    return frozenset(consumer.assignment()) if consumer is not None else frozenset()


async def test_instance_id_makes_a_static_member_the_broker_knows_by_that_id(
    kafka_settings: KafkaSettings, unique: str
) -> None:
    topic, group = f"crm.test.static.{unique}", f"crm-test-static-{unique}"
    await create_topic(kafka_settings, topic, PARTITIONS)
    async with (
        member(kafka_settings, group, topic, "crm-offers-0") as first,
        member(kafka_settings, group, topic, "crm-offers-1") as second,
    ):

        async def shared() -> bool:
            return len(held(first)) + len(held(second)) == PARTITIONS and bool(held(second))

        await wait_for(shared)
        ids = await group_member_ids(kafka_settings, group)
    assert len(ids) == 2
    assert ids[0].startswith("crm-offers-0-")
    assert ids[1].startswith("crm-offers-1-")


async def test_restarted_static_member_gets_its_partitions_back_and_the_other_keeps_its_own(
    kafka_settings: KafkaSettings, unique: str
) -> None:
    topic, group = f"crm.test.restart.{unique}", f"crm-test-restart-{unique}"
    await create_topic(kafka_settings, topic, PARTITIONS)
    async with member(kafka_settings, group, topic, "crm-notifier-1") as stays:
        async with member(kafka_settings, group, topic, "crm-notifier-0") as leaves:

            async def shared() -> bool:
                return bool(held(leaves)) and len(held(leaves)) + len(held(stays)) == PARTITIONS

            await wait_for(shared)
            before_leaving, before_staying = held(leaves), held(stays)
        # Stopped: a static member sends no LeaveGroup, so its partitions wait for it.
        ids_while_away = await group_member_ids(kafka_settings, group)
        assert any(i.startswith("crm-notifier-0-") for i in ids_while_away)
        async with member(kafka_settings, group, topic, "crm-notifier-0") as returns:

            async def back() -> bool:
                return held(returns) == before_leaving and held(stays) == before_staying

            await wait_for(back)
