"""Kafka plumbing shared by the services: broker factory, batch subscription options,
publishing a batch without per-message waits, topic creation and checks, lag, and the retry
policy.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Int8, Int16, Int32, Schema, String
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaPublishMessage
from faststream.kafka.exceptions import BatchBufferOverflowException
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
from shared.topics import MIN_INSYNC_REPLICAS, TOPIC_SPECS, TopicSpec

log = get_logger(__name__)

FETCH_MAX_WAIT_MS = 20
"""Longest a fetch waits on an empty partition. Tansu appears to answer an empty fetch only
when this runs out, even if records arrive meanwhile, so aiokafka's 500 ms default added up to half a
second per hop (crm bench: p50 checkout -> offer of ~1 s at 2,000/s)."""


HEARTBEAT_INTERVAL_MS = 1_000
"""Heartbeats every second, well under a third of the shortest session timeout (6 s)."""


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
        # On SIGTERM the batch in hand finishes and commits within this; Kubernetes'
        # terminationGracePeriodSeconds is above it plus the preStop pause.
        "graceful_timeout": settings.shutdown_grace_s,
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

    With `CRM_KAFKA_INSTANCE_ID` the consumer is a static member of its group: it leaves no
    group on stop, and the broker keeps its partitions for it until the session timeout, so
    a rolling restart (a StatefulSet pod back under the same name) moves no partition. The
    id is the same in every group of the process (`crm run all`): it is unique per group.
    """
    return broker.subscriber(
        *topics,
        batch=True,
        group_id=group_id,
        group_instance_id=settings.kafka_instance_id,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        max_records=settings.batch_max_records,
        batch_timeout_ms=settings.batch_timeout_ms,
        max_partition_fetch_bytes=2 * 1024 * 1024,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
    )


_PARTITIONER: Final = DefaultPartitioner()


def _aiokafka_producer(broker: KafkaBroker) -> AIOKafkaProducer | None:
    """The connected broker's aiokafka producer; None for FastStream's test broker (whose
    producer is not aiokafka's) or before `start`. FastStream has no public accessor."""
    config = getattr(broker, "config", None)  # absent on a test double of the broker
    state = getattr(getattr(config, "producer", None), "_producer", None)
    producer = getattr(state, "producer", None) if state else None
    return producer if isinstance(producer, AIOKafkaProducer) else None


async def publish_all(broker: KafkaBroker, messages: Sequence[Outgoing]) -> None:
    """Publish `messages` and wait for every acknowledgement.

    They are grouped per partition (aiokafka's default partitioner on the key, so each key
    lands where a keyed send would put it) and handed to the producer as record batches, as
    full as the producer's batch size allows, in their order: order per key is kept. The
    broker's middlewares (metrics, tracing) run once per batch and their headers
    (`traceparent`) go on every record. A call with a tombstone or a keyless message, and
    the test broker, publish message by message.
    """
    producer = _aiokafka_producer(broker)
    keyed = [(t, k, v) for t, k, v in messages if k is not None and v is not None]
    if producer is None or len(keyed) < len(messages):
        pending = [
            await broker.publish(value, topic, key=key, no_confirm=True)
            for topic, key, value in messages
        ]
        # The test broker confirms at once and hands back results, not futures.
        futures = [item for item in pending if inspect.isawaitable(item)]
        if futures:
            await asyncio.gather(*futures)
        return
    partitions: dict[str, list[int]] = {}
    groups: dict[tuple[str, int], list[tuple[bytes, bytes]]] = {}
    for topic, key, value in keyed:
        if topic not in partitions:
            partitions[topic] = sorted(await producer.partitions_for(topic))
        every = partitions[topic]
        partition = _PARTITIONER(key, every, every)
        groups.setdefault((topic, partition), []).append((key, value))
    sent = []
    for (topic, partition), records in groups.items():
        sent += await _publish_partition(broker, topic, partition, records)
    await asyncio.gather(*sent)


BATCH_BYTES: Final = 448 * 1024
"""What a batch handed to the producer may hold, keys and values and `RECORD_OVERHEAD` per
record: under the producer's 512 KiB batches."""
RECORD_OVERHEAD: Final = 256
"""Bytes counted per record besides key and value: its headers (`content-type`,
`correlation_id`, `traceparent`: about 130) and framing."""


def _chunks(
    records: Sequence[tuple[bytes, bytes]], most: int = BATCH_BYTES
) -> Iterable[Sequence[tuple[bytes, bytes]]]:
    """Consecutive runs of `records` of at most `most` bytes each as counted above (a larger
    record is a run of its own)."""
    start, size = 0, 0
    for index, (key, value) in enumerate(records):
        length = len(key) + len(value) + RECORD_OVERHEAD
        if index > start and size + length > most:
            yield records[start:index]
            start, size = index, 0
        size += length
    if start < len(records):
        yield records[start:]


async def _publish_partition(
    broker: KafkaBroker, topic: str, partition: int, records: Sequence[tuple[bytes, bytes]]
) -> list[Awaitable[Any]]:
    """Hand `records` to the producer as batches for one partition; their acknowledgements.

    Should a batch still overflow the producer's buffer (FastStream says at which record,
    before anything is sent), the records before it go, and the rest in the next batch; a
    record larger than a whole batch goes alone, as a keyed send (up to the request size)."""

    async def batch(part: Sequence[tuple[bytes, bytes]]) -> Awaitable[Any]:
        messages = (KafkaPublishMessage(value, key=key) for key, value in part)
        return await broker.publish_batch(
            *messages, topic=topic, partition=partition, no_confirm=True
        )

    sent: list[Awaitable[Any]] = []
    for chunk in _chunks(records):
        start = 0
        while start < len(chunk):
            try:
                sent.append(await batch(chunk[start:]))
                start = len(chunk)
            except BatchBufferOverflowException as overflow:
                fits = overflow.message_position
                if fits == 0:
                    key, value = chunk[start]
                    sent.append(await broker.publish(value, topic, key=key, no_confirm=True))
                    start += 1
                else:
                    sent.append(await batch(chunk[start : start + fits]))
                    start += fits
    return sent


class TopicCheckError(RuntimeError):
    """The broker refused to create, describe or alter a topic (an ACL, an unknown config)."""


PARTITIONS: Final = "partitions"
REPLICATION: Final = "replication factor"
_NOT_ALTERABLE = (PARTITIONS, REPLICATION)
_TOPIC_ALREADY_EXISTS = 36
_SET = 0
"""IncrementalAlterConfigs' operation SET: give the config this value (others stay as they are)."""


@dataclass(frozen=True, slots=True)
class TopicState:
    """What a topic is, or should be: its partition count, replication and configs."""

    partitions: int
    replication: int
    configs: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class TopicDifference:
    """One setting of an existing topic that is not what the code expects."""

    topic: str
    setting: str
    """`partitions`, `replication factor` or a topic config's name."""
    expected: str
    actual: str | None
    """None: the topic does not set it (the broker's default applies)."""

    @property
    def alterable(self) -> bool:
        """Whether `crm create-topics --fix` may change it: configs yes; never the partition
        count (more partitions move keys to other partitions, so one customer's events would
        no longer be read in order) nor the replication (a partition reassignment)."""
        return self.setting not in _NOT_ALTERABLE

    def __str__(self) -> str:
        actual = "not set" if self.actual is None else self.actual
        return f"{self.topic}: {self.setting} is {actual}, expected {self.expected}"


@dataclass(frozen=True, slots=True)
class TopicReport:
    """What `reconcile_topics` did and found."""

    created: list[str] = field(default_factory=list)
    fixed: list[TopicDifference] = field(default_factory=list)
    differences: list[TopicDifference] = field(default_factory=list)
    """What still differs (after `fix`, what could not be fixed)."""


def desired_state(spec: TopicSpec, settings: KafkaSettings) -> TopicState:
    """How the settings say a topic is created: the spec's configs, the configured partition
    count (single-partition topics keep 1), replication and `min.insync.replicas`."""
    if (
        settings.topic_min_insync_replicas is not None
        and settings.topic_min_insync_replicas > settings.topic_replication
    ):
        raise KafkaConfigError(
            "CRM_TOPIC_MIN_INSYNC_REPLICAS exceeds CRM_TOPIC_REPLICATION: no write could succeed"
        )
    return TopicState(
        partitions=1 if spec.partitions == 1 else settings.topic_partitions,
        replication=settings.topic_replication,
        configs=spec.topic_configs(min_insync_replicas=settings.topic_min_insync_replicas),
    )


def topic_differences(name: str, desired: TopicState, actual: TopicState) -> list[TopicDifference]:
    """Where an existing topic falls short of what the code expects.

    Fewer partitions or replicas than expected are differences, more are not (a cluster may
    have raised them on purpose). `min.insync.replicas` may be higher, never lower. Every
    other config the spec states must be what it states: a retention shorter than the
    spec's loses what a replay or a redrive reads; a longer one keeps personal data longer
    than documented. A topic the spec does not compact must not be compacted (raw topics are
    keyed by store or card: compaction would drop checkouts).
    """
    found: list[TopicDifference] = []
    if actual.partitions < desired.partitions:
        found.append(
            TopicDifference(name, PARTITIONS, str(desired.partitions), str(actual.partitions))
        )
    if actual.replication < desired.replication:
        found.append(
            TopicDifference(name, REPLICATION, str(desired.replication), str(actual.replication))
        )
    for config, expected in desired.configs.items():
        value = actual.configs.get(config)
        if config == MIN_INSYNC_REPLICAS:
            short = value is None or not value.isdigit() or int(value) < int(expected)
        else:
            short = value != expected
        if short:
            found.append(TopicDifference(name, config, expected, value))
    if "cleanup.policy" not in desired.configs:
        policy = actual.configs.get("cleanup.policy")
        if policy not in (None, "delete"):
            found.append(TopicDifference(name, "cleanup.policy", "delete", policy))
    return found


class _IncrementalAlterConfigsResponse_v0(Response):  # type: ignore[misc]
    API_KEY = 44
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "responses",
            Array(
                ("error_code", Int16),
                ("error_message", String("utf-8")),
                ("resource_type", Int8),
                ("resource_name", String("utf-8")),
            ),
        ),
    )


class _IncrementalAlterConfigsRequest_v0(RequestStruct):  # type: ignore[misc]
    API_KEY = 44
    API_VERSION = 0
    RESPONSE_TYPE = _IncrementalAlterConfigsResponse_v0
    SCHEMA = Schema(
        (
            "resources",
            Array(
                ("resource_type", Int8),
                ("resource_name", String("utf-8")),
                (
                    "configs",
                    Array(
                        ("name", String("utf-8")),
                        ("config_operation", Int8),
                        ("value", String("utf-8")),
                    ),
                ),
            ),
        ),
        ("validate_only", Boolean),
    )


class _IncrementalAlterConfigsRequest(Request[_IncrementalAlterConfigsRequest_v0]):  # type: ignore[misc]
    """Kafka's IncrementalAlterConfigs (KIP-339), which aiokafka lacks. Its AlterConfigs
    replaces a topic's whole set of configs, resetting every one not named to the broker's
    default: a fix of one retention would silently drop the others (the embedded broker does
    not implement AlterConfigs at all). Version 0 is served by Kafka 2.3 and later."""

    API_KEY = 44

    def __init__(self, resources: list[Any]) -> None:
        self._resources = resources

    def build(
        self, request_struct_class: type[_IncrementalAlterConfigsRequest_v0]
    ) -> _IncrementalAlterConfigsRequest_v0:
        return request_struct_class(self._resources, False)


async def _describe(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, TopicState]:
    """Partitions, replication (the smallest of any partition) and configs of existing topics."""
    metadata = await admin.describe_topics(names)
    counts: dict[str, tuple[int, int]] = {}
    for topic in metadata:
        if topic["error_code"]:
            raise TopicCheckError(f"{topic['topic']}: describe failed, error {topic['error_code']}")
        partitions = topic["partitions"]
        counts[topic["topic"]] = (
            len(partitions),
            min((len(p["replicas"]) for p in partitions), default=0),
        )
    responses: list[Any] = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
    )
    configs: dict[str, dict[str, str]] = {}
    for response in responses:
        for code, message, _type, name, entries in response.resources:
            if code:
                raise TopicCheckError(f"{name}: describe configs failed: {message} ({code})")
            configs[name] = {entry[0]: entry[1] for entry in entries if entry[1] is not None}
    return {
        name: TopicState(partitions=p, replication=r, configs=configs.get(name, {}))
        for name, (p, r) in counts.items()
    }


async def _alter(admin: AIOKafkaAdminClient, differences: Sequence[TopicDifference]) -> None:
    """SET each difference's expected value, leaving the topics' other configs alone."""
    by_topic: dict[str, list[tuple[str, int, str]]] = {}
    for difference in differences:
        by_topic.setdefault(difference.topic, []).append(
            (difference.setting, _SET, difference.expected)
        )
    resources = [
        (int(ConfigResourceType.TOPIC), topic, configs) for topic, configs in by_topic.items()
    ]
    # The admin client has no public way to send a request it does not define; any broker
    # takes a topic's config change and hands it to the controller.
    response: Any = await admin._send_request(_IncrementalAlterConfigsRequest(resources))
    for code, message, _type, name in response.responses:
        if code:
            raise TopicCheckError(f"{name}: alter configs failed: {message} ({code})")


async def reconcile_topics(
    settings: KafkaSettings,
    specs: Iterable[TopicSpec] = TOPIC_SPECS,
    *,
    fix: bool = False,
    strict: bool = True,
) -> TopicReport:
    """Create the missing topics and compare the existing ones with their specs.

    With `fix`, configs that differ are set to the spec's values (IncrementalAlterConfigs)
    and the topics described again; partitions and replication are only reported. Without
    `strict`, a topic the broker will not describe (no DescribeConfigs right) is logged and
    left unchecked instead of raising.
    """
    specs = list(specs)
    desired = {spec.name: desired_state(spec, settings) for spec in specs}
    admin = AIOKafkaAdminClient(
        bootstrap_servers=require_bootstrap(settings), **client_options(settings)
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        created = await _create(admin, desired, [s for s in specs if s.name not in existing])
        present = [spec.name for spec in specs if spec.name in existing]
        try:
            differences = await _differences(admin, desired, present)
        except TopicCheckError as exc:
            if strict:
                raise
            log.warning("topics_not_checked", error=str(exc))
            return TopicReport(created=created)
        fixed: list[TopicDifference] = []
        if fix and any(d.alterable for d in differences):
            await _alter(admin, [d for d in differences if d.alterable])
            remaining = await _differences(admin, desired, present)
            fixed = [d for d in differences if d.alterable and d not in remaining]
            differences = remaining
        return TopicReport(created=created, fixed=fixed, differences=differences)
    finally:
        await admin.close()


async def _create(
    admin: AIOKafkaAdminClient, desired: Mapping[str, TopicState], missing: Sequence[TopicSpec]
) -> list[str]:
    if not missing:
        return []
    new = [
        NewTopic(
            spec.name,
            desired[spec.name].partitions,
            desired[spec.name].replication,
            topic_configs=dict(desired[spec.name].configs),
        )
        for spec in missing
    ]
    response: Any = await admin.create_topics(new)
    created = []
    for name, code, *rest in response.topic_errors:
        # Already there: another pod or job created it meanwhile; checked next time.
        if code and code != _TOPIC_ALREADY_EXISTS:
            message = rest[0] if rest else ""
            raise TopicCheckError(f"{name}: create failed: {message} ({code})")
        if not code:
            created.append(name)
    if created:
        log.info("topics_created", topics=created)
    return [spec.name for spec in missing if spec.name in created]


async def _differences(
    admin: AIOKafkaAdminClient, desired: Mapping[str, TopicState], names: list[str]
) -> list[TopicDifference]:
    if not names:
        return []
    actual = await _describe(admin, names)
    return [
        difference
        for name in names
        for difference in topic_differences(name, desired[name], actual[name])
    ]


async def ensure_topics(
    settings: KafkaSettings, specs: Iterable[TopicSpec] = TOPIC_SPECS
) -> list[str]:
    """Create the missing topics (`crm run` at start-up); returns the names created.

    An existing topic that differs from its spec, or that the login may not describe, is
    logged as a warning, not fixed and not fatal: a service should still start on a cluster
    whose topics an operator manages; `crm create-topics` reports the same differences and
    exits non-zero.
    """
    report = await reconcile_topics(settings, specs, strict=False)
    for difference in report.differences:
        log.warning(
            "topic_differs_from_spec",
            topic=difference.topic,
            setting=difference.setting,
            expected=difference.expected,
            actual=difference.actual,
        )
    return report.created


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
