"""The one edge between Kafka records and a service: decode by topic, dead-letter what fails.

Every consumer receives its records here. Each record is decoded into its typed event by the
decoder its topic is declared with (one table: topic -> decoder); what does not decode is
dead-lettered with one formatter and counted under one name, `dead_lettered_<reason>`; what
decodes is handed on as a `Received` (the event and where it came from), so services see
typed events only, never aiokafka records. A service may reject an event later (a checkout
whose card number is malformed); the edge dead-letters that the same way. Fields an event does
not know, a newer producer's optional ones, are dropped, never dead-lettered: versions mix
during a rolling upgrade and after a rollback.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

import orjson
import structlog
from aiokafka import ConsumerRecord
from pydantic import BaseModel, TypeAdapter, ValidationError

from shared.errors import Rejected
from shared.events import CONSUMER_EXTRA, DeadLetter
from shared.logging import get_logger
from shared.privacy import mask_card_numbers
from shared.topics import DEADLETTER

log = get_logger(__name__)

E = TypeVar("E", covariant=True)
M = TypeVar("M")

KEPT_FIELDS: Final = frozenset(
    {
        "event_id",
        "type",
        "occurred_at",
        "store_id",
        "customer_id",
        "offer_id",
        "campaign_id",
        "cause_event_id",
        "checkout_event_id",
        "kind",
        "currency",
        "channel",
        "changed_at",
        "issued_at",
        "schema_version",
    }
)
"""The only payload fields a dead letter keeps (ids, types, times, the store), and only when
they are short scalars: never a name, an e-mail address, a birth date, a card number, free-text
details or any other field of the payload."""
KEPT_VALUE_LIMIT: Final = 128
"""A kept field longer than this is left out (an id is short; a long value is not an id)."""

Outgoing = tuple[str, bytes | None, bytes | None]
"""(topic, key, value) to publish; a None value is a tombstone."""


def dump(model: BaseModel) -> bytes:
    """JSON bytes of an event."""
    return model.model_dump_json().encode()


@dataclass(frozen=True, slots=True)
class Source:
    """Where a record came from: what a dead letter and a log line say of it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    value: bytes | None = None
    timestamp_ms: int = 0
    """The record's Kafka timestamp (when it was produced or appended): its arrival time."""

    @classmethod
    def of(cls, record: ConsumerRecord[Any, Any]) -> Source:
        value = record.value
        return cls(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key if isinstance(record.key, bytes) else None,
            value=value if isinstance(value, bytes) else None,
            timestamp_ms=int(record.timestamp or 0),
        )

    @property
    def arrived_at(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.timestamp_ms / 1000, dt.UTC)


@dataclass(frozen=True, slots=True)
class Received(Generic[E]):
    """A decoded event and the record it came in."""

    event: E
    source: Source

    @property
    def log(self) -> structlog.stdlib.BoundLogger:
        """A logger bound to this record: topic, partition, offset and the event's id."""
        return log.bind(
            topic=self.source.topic,
            partition=self.source.partition,
            offset=self.source.offset,
            event_id=getattr(self.event, "event_id", None),
        )


Decoder = Callable[[Source], M]
"""Turns a record into its event; raises `Rejected` for a record that cannot be processed. A
decoder may return None for a record that is not for this service (counted as `ignored`)."""


@dataclass(frozen=True, slots=True)
class Foreign(Generic[M]):
    """The decoder of a topic whose owner (its main consumer) dead-letters what does not
    decode: here such a record is only counted (`skipped_invalid`), never dead-lettered twice."""

    decoder: Decoder[M]


def foreign(decoder: Decoder[M]) -> Foreign[M]:
    return Foreign(decoder)


def describe(exc: ValidationError) -> str:
    """Where and why validation failed, never the input itself (it may hold personal data)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(message)'}: {e['msg']}"
        for e in exc.errors(include_url=False, include_input=False)[:5]
    )


def failing_field(exc: ValidationError) -> str | None:
    """The path of the first field that failed validation (`birth_date`, `lines.0.sku`)."""
    errors = exc.errors(include_url=False, include_input=False)
    path = ".".join(str(p) for p in errors[0]["loc"]) if errors else ""
    return path or None


def json_decoder(
    model: type[M] | TypeAdapter[M], *, invalid: str = "invalid_event"
) -> Callable[[Source], M]:
    """A decoder validating the record's JSON against a model: `empty_message` without a value,
    `invalid_json` for what is not JSON, `invalid` for JSON that is not a valid event. Fields
    the model does not know (a newer producer's) are dropped (`CONSUMER_EXTRA`)."""
    adapter: TypeAdapter[M] = model if isinstance(model, TypeAdapter) else TypeAdapter(model)

    def decode(source: Source) -> M:
        if not source.value:
            raise Rejected("empty_message", "the message has no value")
        try:
            return adapter.validate_json(source.value, extra=CONSUMER_EXTRA)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False)
            if errors and errors[0]["type"] == "json_invalid":
                raise Rejected("invalid_json", describe(exc)) from None
            raise Rejected(invalid, describe(exc), field=failing_field(exc)) from None

    return decode


def kept_fields(value: bytes | None) -> dict[str, str | int | bool]:
    """The allow-listed fields of a payload (`KEPT_FIELDS`), short scalars only; nothing of a
    payload that is not a JSON object. Card-like digit runs are masked even in these."""
    if not value:
        return {}
    try:
        document = orjson.loads(value)
    except (orjson.JSONDecodeError, RecursionError):
        return {}
    if not isinstance(document, dict):
        return {}
    kept: dict[str, str | int | bool] = {}
    for name in KEPT_FIELDS & document.keys():
        item = document[name]
        if isinstance(item, str) and len(item) <= KEPT_VALUE_LIMIT:
            kept[name] = mask_card_numbers(item)
        elif isinstance(item, bool | int) and not isinstance(item, float):
            kept[name] = item
    return dict(sorted(kept.items()))


def dead_letter(
    *,
    service: str,
    source: Source,
    reason: str,
    detail: str,
    field: str | None = None,
    now: dt.datetime | None = None,
) -> DeadLetter:
    """A dead letter for a record: where it came from, why, the failing field's path and the
    allow-listed fields of its payload; of the rest of the payload only its size and hash."""
    raw = source.value or b""
    return DeadLetter(
        service=service,
        reason=reason,
        detail=mask_card_numbers(detail)[:1000],
        field=field[:200] if field else None,
        source_topic=source.topic,
        partition=source.partition,
        offset=source.offset,
        dead_lettered_at=now or dt.datetime.now(dt.UTC),
        fields=kept_fields(source.value),
        payload_bytes=len(raw),
        payload_sha256=hashlib.sha256(raw).hexdigest(),
    )


def dead_letter_message(letter: DeadLetter) -> Outgoing:
    return (DEADLETTER, f"{letter.source_topic}:{letter.partition}".encode(), dump(letter))


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Edge:
    """Decodes a service's records by topic and dead-letters what fails."""

    def __init__(
        self,
        *,
        service: str,
        decoders: Mapping[str, Decoder[Any] | Foreign[Any]],
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        self.service = service
        self._decoders = decoders
        self._clock = clock

    def decode(
        self, records: Sequence[ConsumerRecord[Any, Any]], stats: Counter[str]
    ) -> tuple[list[Received[Any]], list[Outgoing]]:
        """The batch's events, in record order, and the dead letters of what did not decode."""
        received: list[Received[Any]] = []
        letters: list[Outgoing] = []
        for record in records:
            source = Source.of(record)
            entry = self._decoders.get(source.topic)
            owned = not isinstance(entry, Foreign)
            decoder = entry.decoder if isinstance(entry, Foreign) else entry
            try:
                if decoder is None:
                    raise Rejected(
                        "unexpected_topic", f"{self.service} does not read {source.topic}"
                    )
                event = decoder(source)
            except Rejected as rejected:
                if owned:
                    letters.append(self.reject(source, rejected, stats))
                else:
                    stats["skipped_invalid"] += 1
                    log.debug(
                        "record_skipped",
                        reason=rejected.reason,
                        topic=source.topic,
                        partition=source.partition,
                        offset=source.offset,
                    )
                continue
            if event is None:
                stats["ignored"] += 1
                continue
            received.append(Received(event, source))
        return received, letters

    def reject(self, source: Source, rejected: Rejected, stats: Counter[str]) -> Outgoing:
        """The dead letter of a record, counted and logged (never with the payload)."""
        stats[f"dead_lettered_{rejected.reason}"] += 1
        log.warning(
            "dead_lettered",
            reason=rejected.reason,
            topic=source.topic,
            partition=source.partition,
            offset=source.offset,
        )
        letter = dead_letter(
            service=self.service,
            source=source,
            reason=rejected.reason,
            detail=rejected.detail,
            field=rejected.field,
            now=self._clock(),
        )
        return dead_letter_message(letter)
