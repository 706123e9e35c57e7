"""Kafka plumbing shared by the services: broker factory, batch subscription options,
publishing a batch without per-message waits, topic creation, lag, and the retry policy.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from faststream.kafka.subscriber.usecase import BatchSubscriber
from faststream.security import (
    BaseSecurity,
    SASLPlaintext,
    SASLScram256,
    SASLScram512,
)
from prometheus_client import REGISTRY

from shared.edge import Outgoing, Source, dead_letter, dead_letter_message
from shared.errors import StoreError
from shared.logging import get_logger
from shared.settings import KafkaSettings
from shared.topics import TOPIC_SPECS, TopicSpec

log = get_logger(__name__)

FETCH_MAX_WAIT_MS = 20
"""Longest a fetch waits on an empty partition. Tansu appears to answer an empty fetch only
when this runs out, even if records arrive meanwhile, so aiokafka's 500 ms default added up to half a
second per hop (crm bench: p50 checkout -> offer of ~1 s at 2,000/s)."""


class KafkaConfigError(ValueError):
    """Kafka settings are missing or inconsistent."""


def require_bootstrap(settings: KafkaSettings) -> str:
    if not settings.kafka_bootstrap:
        raise KafkaConfigError(
            "CRM_KAFKA_BOOTSTRAP is not set: give the Kafka bootstrap servers (host:port,...)"
        )
    return settings.kafka_bootstrap


def security_for(settings: KafkaSettings) -> BaseSecurity | None:
    """FastStream security object for the configured protocol (SASL/SCRAM, TLS)."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context: ssl.SSLContext | None = None
    if protocol.endswith("SSL"):
        context = ssl.create_default_context(
            cafile=str(settings.kafka_ca_file) if settings.kafka_ca_file else None
        )
    if protocol == "SSL":
        return BaseSecurity(ssl_context=context, use_ssl=True)
    if not settings.kafka_sasl_username or settings.kafka_sasl_password is None:
        raise KafkaConfigError(
            "CRM_KAFKA_SASL_USERNAME and CRM_KAFKA_SASL_PASSWORD are required with SASL"
        )
    user = settings.kafka_sasl_username
    password = settings.kafka_sasl_password.get_secret_value()
    use_ssl = context is not None
    if settings.kafka_sasl_mechanism == "PLAIN":
        return SASLPlaintext(user, password, ssl_context=context, use_ssl=use_ssl)
    if settings.kafka_sasl_mechanism == "SCRAM-SHA-256":
        return SASLScram256(user, password, ssl_context=context, use_ssl=use_ssl)
    return SASLScram512(user, password, ssl_context=context, use_ssl=use_ssl)


def client_options(settings: KafkaSettings) -> dict[str, Any]:
    """Security keyword arguments for plain aiokafka clients (admin, lag checks)."""
    security = security_for(settings)
    if security is None:
        return {}
    options: dict[str, Any] = {
        "security_protocol": settings.kafka_security_protocol,
        "ssl_context": security.ssl_context,
    }
    if settings.kafka_security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        password = settings.kafka_sasl_password
        options["sasl_plain_password"] = password.get_secret_value() if password else None
    return options


def new_broker(settings: KafkaSettings, *, client_id: str, **overrides: Any) -> KafkaBroker:
    """A KafkaBroker tuned for batches: producer lingers a few ms and sends large batches."""
    metrics = KafkaPrometheusMiddleware(registry=REGISTRY, app_name=client_id, metrics_prefix="crm")
    options: dict[str, Any] = {
        "client_id": client_id,
        "middlewares": (metrics,),
        "linger_ms": 5,
        "max_batch_size": 512 * 1024,
        "max_request_size": 2 * 1024 * 1024,
        "acks": "all",
        "security": security_for(settings),
        "allow_auto_create_topics": False,
        "graceful_timeout": 30.0,
        # One structlog setup for broker and services; per-batch lines only at DEBUG.
        "logger": get_logger("crm.broker"),
        "log_level": logging.DEBUG,
    }
    options.update(overrides)
    return KafkaBroker(settings.kafka_bootstrap or "localhost:9092", **options)


def batch_subscriber(
    broker: KafkaBroker, settings: KafkaSettings, group_id: str, *topics: str
) -> BatchSubscriber:
    """The batch subscriber every consumer uses.

    Offsets are committed only after a batch's handler returned, i.e. after its effects are
    durable; on an exception the batch is sought back and retried (NACK_ON_ERROR).
    """
    return broker.subscriber(
        *topics,
        batch=True,
        group_id=group_id,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        max_records=settings.batch_max_records,
        batch_timeout_ms=settings.batch_timeout_ms,
        max_partition_fetch_bytes=2 * 1024 * 1024,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=1_000,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
    )


async def publish_all(broker: KafkaBroker, messages: Sequence[Outgoing]) -> None:
    """Hand every message to the producer without waiting, then await all acknowledgements.

    The producer groups them into batches per partition; order per key is kept because one
    key maps to one partition and sends are enqueued in order.
    """
    pending = [
        await broker.publish(value, topic, key=key, no_confirm=True)
        for topic, key, value in messages
    ]
    # The test broker confirms at once and hands back results, not futures.
    futures = [item for item in pending if inspect.isawaitable(item)]
    if futures:
        await asyncio.gather(*futures)


async def ensure_topics(
    settings: KafkaSettings, specs: Iterable[TopicSpec] = TOPIC_SPECS
) -> list[str]:
    """Create the missing topics; returns the names created."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=require_bootstrap(settings), **client_options(settings)
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in specs if spec.name not in existing]
        new = []
        for spec in missing:
            partitions = 1 if spec.partitions == 1 else settings.topic_partitions
            new.append(
                NewTopic(
                    spec.name,
                    partitions,
                    settings.topic_replication,
                    topic_configs=spec.topic_configs(),
                )
            )
        if new:
            await admin.create_topics(new)
            log.info("topics_created", topics=[t.name for t in new])
        return [t.name for t in new]
    finally:
        await admin.close()


def partition_lag(end: int, committed: int | None) -> int:
    """Messages of a partition not yet committed.

    Clamped at zero: Tansu (the embedded broker) reports a partition's end as the base offset
    of its last record batch plus one, so a group that committed a whole multi-record batch
    is ahead of the reported end. Apache Kafka reports the exact end.
    """
    return max(0, end - (committed or 0))


async def consumer_lag(settings: KafkaSettings, group_id: str, topics: Sequence[str]) -> int:
    """Messages in `topics` not yet committed by `group_id` (0 when drained)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=require_bootstrap(settings),
        group_id=group_id,
        enable_auto_commit=False,
        **client_options(settings),
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            return 0
        ends = await consumer.end_offsets(partitions)
        lag = 0
        for tp in partitions:
            lag += partition_lag(ends[tp], await consumer.committed(tp))
        return lag
    finally:
        await consumer.stop()


# ---------------------------------------------------------------- back-pressure and poison messages

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    KafkaError,
    StoreError,
)
"""Errors of the infrastructure (store, SMTP, Kafka down or slow, a concurrent writer): retried
without limit. Store adapters translate their drivers' errors into `StoreError`s
(`Unavailable`, `Conflict`), so this policy knows no driver. Anything else is taken for a
property of the records (a poison message).
"""


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` says the infrastructure is unavailable rather than the data is bad."""
    return isinstance(exc, TRANSIENT_ERRORS)


BatchWork = Callable[[Sequence[ConsumerRecord[Any, Any]]], Awaitable[None]]


class BatchGuard:
    """Back-pressure and poison-message isolation around a batch handler, for every service.

    A failing batch is retried by FastStream (NACK_ON_ERROR seeks back and re-reads it); the
    guard sleeps a capped exponential backoff before re-raising, so a consumer whose store or
    SMTP server is down pauses instead of spinning. Transient failures (`is_transient`) are
    retried without limit: nothing is dropped while the infrastructure is away. Any other
    failure repeated `max_attempts` times on the same batch switches to isolation: the records
    are processed one at a time, those that still fail are dead-lettered (reason
    `processing_failed`, only the error's type in the detail), the others are processed, and
    the batch is committed. A poison message therefore holds its partition for a bounded time.
    """

    def __init__(
        self,
        broker: KafkaBroker,
        *,
        service: str,
        max_attempts: int = 4,
        backoff_base_s: float = 0.2,
        backoff_max_s: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._broker = broker
        self._service = service
        self._max_attempts = max_attempts
        self._base = backoff_base_s
        self._cap = backoff_max_s
        self._sleep = sleep
        self._failures: dict[tuple[str, int, int], int] = {}
        self.stats: Counter[str] = Counter()

    @staticmethod
    def _keys(records: Sequence[ConsumerRecord[Any, Any]]) -> list[tuple[str, int, int]]:
        return [(r.topic, r.partition, r.offset) for r in records]

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after the `attempt`-th consecutive failure (1, 2, ...)."""
        return float(min(self._cap, self._base * 2 ** (attempt - 1)))

    async def run(self, records: Sequence[ConsumerRecord[Any, Any]], work: BatchWork) -> None:
        """Run `work` on the batch; raise (to have it re-read) after a backoff when it fails."""
        if not records:
            await work(records)
            return
        keys = self._keys(records)
        try:
            await work(records)
        except Exception as exc:
            # A re-read batch may start elsewhere (other partitions): count per record, so
            # the record that keeps failing reaches the limit whatever batch it comes in.
            attempt = max(self._failures.get(k, 0) for k in keys) + 1
            transient = is_transient(exc)
            if transient or attempt < self._max_attempts:
                self._failures = dict.fromkeys(keys, attempt)  # only the batch in hand
                delay = self.backoff(attempt)
                self.stats["transient_retries" if transient else "batch_retries"] += 1
                log.warning(
                    "batch_failed_retrying",
                    service_name=self._service,
                    error=type(exc).__name__,
                    transient=transient,
                    attempt=attempt,
                    delay_s=delay,
                    topic=keys[0][0],
                    partition=keys[0][1],
                    offset=keys[0][2],
                )
                await self._sleep(delay)
                raise
            self._failures.clear()
            await self._isolate(records, work)
            return
        self._failures.clear()

    async def _isolate(self, records: Sequence[ConsumerRecord[Any, Any]], work: BatchWork) -> None:
        """One record at a time; the ones that fail for a non-transient reason are dead-lettered."""
        log.warning("batch_isolating_poison", service_name=self._service, records=len(records))
        letters: list[Outgoing] = []
        for record in records:
            try:
                await work([record])
            except Exception as exc:
                if is_transient(exc):
                    raise  # the infrastructure went away meanwhile: re-read, back off again
                letter = dead_letter(
                    service=self._service,
                    source=Source.of(record),
                    reason="processing_failed",
                    detail=f"{type(exc).__name__} after {self._max_attempts} attempts",
                )
                letters.append(dead_letter_message(letter))
                self.stats["poison_dead_lettered"] += 1
                log.error(
                    "poison_message_dead_lettered",
                    service_name=self._service,
                    error=type(exc).__name__,
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                )
        await publish_all(self._broker, letters)
