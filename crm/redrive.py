"""`crm redrive`: send dead-lettered records through again once the cause is fixed.

A dead letter names where its record came from (topic, partition, offset) and never holds its
payload. Redrive selects dead letters from `crm.deadletter`, reads each original record at its
position while the source topic still retains it, checks it is the same record (its SHA-256
is in the dead letter), and publishes its key, value and headers again to the same topic, with
a `crm-redrive-of: topic/partition/offset` header naming the copy's origin.

Why the source topic, not a path of the failed service's own: every consumer of every topic is
idempotent by event id, so the groups that already processed the record drop the copy.
- raw topics: only ingest reads them; it records an event id only once the event is published
  (a rejected or failed record is never recorded), so the copy is processed, a second copy is
  a duplicate.
- `crm.events`: profiles skips event ids it applied (`recent_event_ids`), reports keeps facts
  keyed by event id.
- `crm.profiles.changed`, `crm.segments`: offers' ledger folds a change it has once.
- `crm.offers`: states only move forward in profiles, reports keeps facts by offer id, the
  notifier's delivery records allow one e-mail per offer; marketing gets offer ids that are
  deterministic, as after any redelivery.
- `crm.clock`, `crm.deliveries`: a day evaluated or a delivery recorded is not done twice.
Compacted topics (`crm.contacts`, `crm.campaigns`, `crm.segment-definitions`) are refused: the
copy would become the latest value of its key and undo a newer one (an erasure's tombstone
would lose to an old e-mail address). A new state is published by their owner instead.

The copy arrives now: for the rules it is a late event (`CRM_ALLOWED_LATENESS`), as it was.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from pydantic import ValidationError

from crm.registry import BY_NAME
from crm.traffic import exact_ends, open_producer
from shared.events import DeadLetter
from shared.kafka import client_options, require_bootstrap
from shared.logging import get_logger
from shared.settings import KafkaSettings
from shared.topics import DEADLETTER, TOPIC_SPECS

log = get_logger(__name__)

REDRIVE_HEADER: Final = "crm-redrive-of"
"""Header of a redriven copy: `topic/partition/offset` of the record it copies."""

REDRIVABLE: Final = frozenset(spec.name for spec in TOPIC_SPECS if not spec.compacted) - {
    DEADLETTER
}
"""Topics whose records may be published again: append-only topics read by idempotent
consumers (see the module's docstring); compacted topics and dead letters are not."""

FETCH_WITHIN_S: Final = 10.0
"""How long a read (dead letters, an original record) waits for the broker without progress."""

Status = Literal["redriven", "would_redrive", "lost", "refused", "unread", "failed_again"]


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """Where a record is: topic, partition, offset."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"

    @property
    def partition_of(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters to redrive: every given criterion must match."""

    reason: str | None = None
    service: str | None = None
    source_topic: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    position: Position | None = None

    def matches(self, letter: DeadLetter) -> bool:
        at = letter.dead_lettered_at
        return (
            (self.reason is None or letter.reason == self.reason)
            and (self.service is None or letter.service == self.service)
            and (self.source_topic is None or letter.source_topic == self.source_topic)
            and (self.since is None or at >= self.since)
            and (self.until is None or at < self.until)
            and (self.position is None or position_of(letter) == self.position)
        )


def position_of(letter: DeadLetter) -> Position:
    return Position(letter.source_topic, letter.partition, letter.offset)


@dataclass(slots=True)
class Item:
    """One source record to redrive, with every dead letter selected for it."""

    position: Position
    letters: list[DeadLetter]
    status: Status = "would_redrive"
    note: str = ""
    copy: Position | None = None
    """Where the redriven copy was published."""
    record: ConsumerRecord[Any, Any] | None = field(default=None, repr=False)
    """The original record, once found."""

    @property
    def event_id(self) -> str | None:
        for letter in self.letters:
            value = letter.fields.get("event_id")
            if isinstance(value, str):
                return value
        return None

    @property
    def services(self) -> list[str]:
        return sorted({letter.service for letter in self.letters})

    @property
    def reasons(self) -> list[str]:
        return sorted({letter.reason for letter in self.letters})

    @property
    def dead_lettered_at(self) -> dt.datetime:
        return min(letter.dead_lettered_at for letter in self.letters)

    def as_json(self) -> dict[str, Any]:
        return {
            "source": str(self.position),
            "services": self.services,
            "reasons": self.reasons,
            "event_id": self.event_id,
            "dead_lettered_at": self.dead_lettered_at.isoformat(),
            "status": self.status,
            "note": self.note,
            "copy": str(self.copy) if self.copy else None,
        }


@dataclass(slots=True)
class RedriveReport:
    """What a redrive selected and did."""

    dry_run: bool
    items: list[Item] = field(default_factory=list)
    failed_again: int = 0
    """Redriven records dead-lettered again (seen only with `wait`)."""
    unreadable: int = 0
    """Records of `crm.deadletter` that are not dead letters this version reads."""
    incomplete: bool = False
    """`crm.deadletter` stopped answering before its end: the selection may miss some."""

    def count(self, *statuses: Status) -> int:
        return sum(item.status in statuses for item in self.items)

    @property
    def selected(self) -> int:
        return len(self.items)

    @property
    def redriven(self) -> int:
        return self.count("redriven", "failed_again")

    @property
    def lost(self) -> int:
        return self.count("lost")

    @property
    def refused(self) -> int:
        return self.count("refused")

    def counts(self) -> dict[str, int]:
        return {
            "selected": self.selected,
            "would_redrive" if self.dry_run else "redriven": (
                self.count("would_redrive") if self.dry_run else self.redriven
            ),
            "lost": self.lost,
            "refused": self.refused,
            "unread": self.count("unread"),
            "failed_again": self.failed_again,
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            **self.counts(),
            "unreadable_dead_letters": self.unreadable,
            "incomplete": self.incomplete,
            "items": [item.as_json() for item in self.items],
        }


# ---------------------------------------------------------------- pure decisions


def group_by_source(letters: Iterable[DeadLetter]) -> list[Item]:
    """One item per source record, oldest dead letter first: a record dead-lettered by two
    services (or twice by one, after a re-read batch) is published again once, which reaches
    every group of its topic."""
    items: dict[Position, Item] = {}
    for letter in letters:
        position = position_of(letter)
        if position in items:
            items[position].letters.append(letter)
        else:
            items[position] = Item(position, [letter])
    return sorted(items.values(), key=lambda item: (item.dead_lettered_at, item.position))


def refusal(topic: str) -> str | None:
    """Why records of `topic` are not published again, or None when they may be."""
    if topic in REDRIVABLE:
        return None
    if topic == DEADLETTER:
        return "dead letters are not redriven"
    if any(spec.name == topic for spec in TOPIC_SPECS):
        return "compacted topic: a copy would replace a newer value of its key"
    return "not a crm topic"


def lost_because(offset: int, first_retained: int, end: int) -> str | None:
    """Why the record at `offset` of a partition that holds `first_retained` to `end` (the
    offset after its last record) cannot be read, or None while it is there to read."""
    if offset < first_retained:
        return f"beyond retention: the partition now starts at offset {first_retained}"
    if offset >= end:
        return f"past the partition's end ({end}): the topic was re-created"
    return None


def same_record(letter: DeadLetter, value: bytes | None) -> bool:
    """Whether `value` is the payload the dead letter was written for (its SHA-256)."""
    return hashlib.sha256(value or b"").hexdigest() == letter.payload_sha256


def redrive_headers(
    headers: Sequence[tuple[str, bytes]], origin: Position
) -> list[tuple[str, bytes]]:
    """The original headers, and the origin of this copy (replacing an earlier copy's)."""
    kept = [(name, value) for name, value in headers if name != REDRIVE_HEADER]
    return [*kept, (REDRIVE_HEADER, str(origin).encode())]


def is_again(letter: DeadLetter, copies: Collection[Position], event_ids: Collection[str]) -> bool:
    """Whether a new dead letter is of a redriven copy, or of an event a copy carried (a
    downstream service failing on it)."""
    return position_of(letter) in copies or letter.fields.get("event_id") in event_ids


# ---------------------------------------------------------------- Kafka


def _reader(settings: KafkaSettings, **options: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=require_bootstrap(settings),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **options,
        **client_options(settings),
    )


async def _read_letters(
    consumer: AIOKafkaConsumer,
    starts: Mapping[TopicPartition, int],
    report: RedriveReport,
    keep: Callable[[DeadLetter], bool],
) -> list[DeadLetter]:
    """The dead letters from `starts` to the partitions' current ends that `keep` accepts
    (filtered as they are read: the topic holds 30 days of them)."""
    partitions = list(starts)
    if not partitions:
        return []
    consumer.assign(partitions)
    for tp, offset in starts.items():
        consumer.seek(tp, offset)
    ends = await consumer.end_offsets(partitions)
    kept: list[DeadLetter] = []
    # A deadline on progress, not on the whole read: a long topic is read to its end, a
    # partition that stops answering ends the read (and says so).
    stalled = time.monotonic() + FETCH_WITHIN_S

    async def behind() -> bool:
        return any([await consumer.position(tp) < ends[tp] for tp in partitions])

    while await behind():
        if time.monotonic() > stalled:
            log.warning("dead_letters_read_incomplete", topic=DEADLETTER)
            report.incomplete = True
            break
        batch = await consumer.getmany(*partitions, timeout_ms=200)
        for records in batch.values():
            stalled = time.monotonic() + FETCH_WITHIN_S
            for record in records:
                try:
                    letter = DeadLetter.model_validate_json(record.value or b"")
                except ValidationError:
                    report.unreadable += 1
                    continue
                if keep(letter):
                    kept.append(letter)
    return kept


async def _dead_letter_starts(
    consumer: AIOKafkaConsumer, since: dt.datetime | None
) -> dict[TopicPartition, int]:
    """Where to start reading `crm.deadletter`: its beginning, or the first record appended at
    or after `since` (a dead letter is appended when it is written)."""
    partitions = [
        TopicPartition(DEADLETTER, p)
        for p in sorted(consumer.partitions_for_topic(DEADLETTER) or ())
    ]
    if not partitions:
        return {}
    starts = dict(await consumer.beginning_offsets(partitions))
    if since is not None:
        ends = await consumer.end_offsets(partitions)
        found = await consumer.offsets_for_times(
            dict.fromkeys(partitions, int(since.timestamp() * 1000))
        )
        for tp in partitions:
            at = found.get(tp)
            starts[tp] = max(starts[tp], at.offset if at is not None else ends[tp])
    return starts


async def select(
    settings: KafkaSettings, selection: Selection, report: RedriveReport
) -> list[DeadLetter]:
    """The dead letters of `crm.deadletter` that match the selection."""
    consumer = _reader(settings)
    await consumer.start()
    try:
        starts = await _dead_letter_starts(consumer, selection.since)
        return await _read_letters(consumer, starts, report, selection.matches)
    finally:
        await consumer.stop()


class Unanswered(TimeoutError):
    """The broker sent nothing of a partition in time."""


async def _fetch_one(
    consumer: AIOKafkaConsumer, position: Position
) -> ConsumerRecord[Any, Any] | None:
    """The record at `position`, or None when there is none (compacted away); `Unanswered`
    when the broker does not say within `FETCH_WITHIN_S`."""
    tp = position.partition_of
    consumer.seek(tp, position.offset)
    deadline = time.monotonic() + FETCH_WITHIN_S
    while time.monotonic() < deadline:
        batch = await consumer.getmany(tp, timeout_ms=200, max_records=50)
        for record in batch.get(tp, []):
            if record.offset == position.offset:
                return record
            if record.offset > position.offset:
                return None
        if await consumer.position(tp) > position.offset:
            return None
    raise Unanswered(str(position))


async def fetch_originals(settings: KafkaSettings, items: Sequence[Item]) -> None:
    """Find each item's original record (`Item.record`); the items whose record is gone are
    marked lost, the ones whose topic is not redriven refused."""
    consumer = _reader(settings, max_partition_fetch_bytes=2 * 1024 * 1024)
    await consumer.start()
    try:
        wanted = [item for item in items if _allowed(item)]
        partitions = {item.position.partition_of for item in wanted}
        known = sorted(
            tp
            for tp in partitions
            if tp.partition in (consumer.partitions_for_topic(tp.topic) or ())
        )
        first = await consumer.beginning_offsets(known) if known else {}
        ends = await exact_ends(consumer, await consumer.end_offsets(known)) if known else {}
        if known:
            consumer.assign(known)
        for item in wanted:
            tp = item.position.partition_of
            gone = (
                lost_because(item.position.offset, first[tp], ends[tp])
                if tp in first
                else "the source topic or partition does not exist"
            )
            if gone is not None:
                _lose(item, gone)
            else:
                try:
                    record = await _fetch_one(consumer, item.position)
                except Unanswered:
                    item.status, item.note = "unread", "not read in time: run the command again"
                    continue
                if record is None:
                    _lose(item, "no record at that offset (compacted away, or topic re-created)")
                elif not same_record(item.letters[0], record.value):
                    _lose(item, "another record is at that offset (the topic was re-created)")
                else:
                    item.record = record
    finally:
        await consumer.stop()


def _allowed(item: Item) -> bool:
    """False (and the item refused) when its topic is not redriven."""
    why = refusal(item.position.topic)
    if why is not None:
        item.status, item.note = "refused", why
    return why is None


def _lose(item: Item, why: str) -> None:
    item.status, item.note = "lost", why


async def _dead_letter_ends(settings: KafkaSettings) -> dict[TopicPartition, int]:
    consumer = _reader(settings)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(DEADLETTER, p)
            for p in sorted(consumer.partitions_for_topic(DEADLETTER) or ())
        ]
        if not partitions:
            return {}
        # Exact: the embedded broker reports the end of a partition's last batch only.
        return await exact_ends(consumer, await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()


async def publish_copies(producer: AIOKafkaProducer, items: Sequence[Item]) -> None:
    """Publish each found record again: same topic, key, value and headers, plus the origin."""
    for item in items:
        record = item.record
        if record is None or item.status != "would_redrive":
            continue
        headers = redrive_headers(list(record.headers or ()), item.position)
        sent = await producer.send_and_wait(
            item.position.topic, record.value, key=record.key, headers=headers
        )
        item.status = "redriven"
        item.copy = Position(sent.topic, sent.partition, sent.offset)
        log.info(
            "redriven",
            topic=item.position.topic,
            partition=item.position.partition,
            offset=item.position.offset,
            copy_partition=sent.partition,
            copy_offset=sent.offset,
            event_id=item.event_id,
            services=item.services,
            reasons=item.reasons,
        )


async def _processed(settings: KafkaSettings, items: Sequence[Item]) -> bool:
    """Whether every group that dead-lettered a record has committed past its copy."""
    for service in {s for item in items for s in item.services if s in BY_NAME}:
        consumer = _reader(settings, group_id=BY_NAME[service].group)
        await consumer.start()
        try:
            for item in items:
                if item.copy is None or service not in item.services:
                    continue
                committed = await consumer.committed(item.copy.partition_of)
                if committed is None or committed <= item.copy.offset:
                    return False
        finally:
            await consumer.stop()
    return True


async def watch_again(
    settings: KafkaSettings,
    items: Sequence[Item],
    starts: Mapping[TopicPartition, int],
    within: float,
) -> int:
    """Wait until the failed services have processed the copies (at most `within` seconds),
    then mark the items dead-lettered again since `starts`; returns how many."""
    copies = [item for item in items if item.copy is not None]
    if not copies:
        return 0
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await _processed(settings, copies):
            break
        await asyncio.sleep(0.5)
    consumer = _reader(settings)
    await consumer.start()
    try:
        unused = RedriveReport(dry_run=False)
        letters = await _read_letters(consumer, starts, unused, lambda _: True)
    finally:
        await consumer.stop()
    again = 0
    for item in copies:
        assert item.copy is not None
        ids = [item.event_id] if item.event_id else []
        fresh = (letter for letter in letters if letter not in item.letters)
        if any(is_again(letter, [item.copy], ids) for letter in fresh):
            item.status, item.note = "failed_again", "dead-lettered again"
            again += 1
    return again


async def redrive(
    settings: KafkaSettings,
    selection: Selection,
    *,
    dry_run: bool = False,
    wait_s: float = 0.0,
) -> RedriveReport:
    """Select dead letters, find their records and (unless `dry_run`) publish them again;
    with `wait_s`, watch for them being dead-lettered again."""
    report = RedriveReport(dry_run=dry_run)
    report.items = group_by_source(await select(settings, selection, report))
    await fetch_originals(settings, report.items)
    log.info("redrive_selected", dry_run=dry_run, **report.counts())
    if dry_run or not any(item.record is not None for item in report.items):
        return report
    starts = await _dead_letter_ends(settings)
    producer = await open_producer(settings)
    try:
        await publish_copies(producer, report.items)
    finally:
        await producer.stop()
    if wait_s > 0:
        report.failed_again = await watch_again(settings, report.items, starts, wait_s)
    log.info("redrive_done", **report.counts())
    return report
