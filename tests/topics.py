"""Test topics of their own on the shared broker."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared.settings import KafkaSettings


async def create_topic(settings: KafkaSettings, name: str, partitions: int) -> None:
    """A topic with `partitions` partitions, replication 1."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()
