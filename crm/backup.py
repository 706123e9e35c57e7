"""`crm backup DEST` and `crm restore SRC`: the embedded mode's stores, backed up and restored safely.

The embedded mode (`CRM_STORE_URL=sqlite:///DIR`) keeps one SQLite file per service in DIR
(ingest, profiles, offers, notifier, reports) beside the key vault and the audit log. Every
`*.sqlite3` file of the folder is backed up; MongoDB has its own way (a replica set and the
operator's or Atlas's point-in-time backups: docs/operate.md, "Backup and restore").

**Backup, online and consistent.** The services keep running. In this order:
1. the Kafka positions: every group's committed offsets on the topics it reads, and the ends
   of `crm.events`, `crm.deliveries` and `crm.offers`;
2. a read transaction is opened on every file, all of them before any is copied (WAL: a
   reader sees one snapshot and blocks no writer);
3. each file is copied from its snapshot with SQLite's online backup API, in one step, and
   the copy's SHA-256 goes into `manifest.json` (written last, so a backup without one is
   incomplete), with the time, the application version and each file's schema fingerprint.

Every snapshot is taken after the positions were read, and every service commits an offset
only after its store has saved what it read: so each store holds at least what its group had
committed, possibly more. A restore rewinds each group to the recorded offsets and the
services read again what came after; what a store already holds is read as a duplicate
(idempotent consumers: event ids, deterministic offer ids, one delivery per offer). That is
why the stores need no common instant and the services need not stop. The offsets are
recorded rather than found again by time (`offsets_for_times`): they are exact whatever the
clocks, the consumers' lag at that time or the broker's time index.

**Restore, made safe** (the services stopped: their groups have no member, or `--force`):
1. the manifest and every file's checksum are verified, and each group's recorded offsets are
   checked against what the topics still retain (a backup older than a topic's retention has
   lost records: refused unless `accept_gap`);
2. the files are put back (a stale WAL beside a file is removed first);
3. erasures: `crm.events` is kept for ever and is the erasure log. Every `customer_erased`
   published since the backup is re-applied to the key vault (the customer's data keys, and
   those of the customers merged into them, are destroyed again) before any service starts,
   so nothing sealed for an erased customer opens again; the services' replay then erases
   them from every store as it did the first time;
4. data keys: those created after the backup are random (so that an erasure can destroy
   them), and the backup lacks them. Ingest publishes each one, wrapped with
   `CRM_KEY_WRAPPING_KEY`, on the compacted `crm.data-keys`; every key the vault lacks is put
   back from there, except those of customers erased since (`shared.vault_recovery`). After
   step 3, so that no erased customer's key comes back;
5. deliveries (the notifier's idempotency key): the outcomes published on `crm.deliveries`
   since the backup are written back as delivery records first; an offer issued on
   `crm.offers` after the notifier's recorded position that still has no delivery is
   recorded `suppressed` with the reason `assumed_sent` (and published so): the replay never
   e-mails an offer issued before the restore. What that costs: such an offer's e-mail that
   was still waiting (grace, quiet hours) when the stores were lost is not sent; its coupon
   still applies at the till. A delivery the backup holds as waiting, with no outcome since,
   resumes as after a crash of the notifier;
6. every service's group is moved to its recorded offsets; then `crm run` re-derives from the
   retained topics what happened after the backup.

Not restored: the audit entries written after the backup.

**Restore to a point in time** (`crm restore --point-in-time T`): the stores were put back to
the instant T by other means (MongoDB's point-in-time restore by the operator or Atlas, a
snapshot of any store); nothing is copied. What a backup's manifest records is found again
from the topics: for every partition a service reads, the first record whose timestamp is at
or after T minus a margin (the worst consumer lag at T plus the producers' clock skew:
replaying more is harmless, skipping a record the stores did not hold at T is not). The broker
is asked (`offsets_for_times`) and its answer is checked against the records themselves, since
a broker's time index may answer by append time or by batch: the answer moves forward past
records older than the cutoff and back until the record before it is older (`first_offset_at`).
Then the same steps 3 to 6 (`make_replay_safe`), reading `crm.events` and `crm.deliveries`
from those offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import importlib.metadata
import os
import shutil
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from crm.registry import SERVICES
from crm.replay import _members
from crm.traffic import exact_ends, open_producer
from services.ingest.store import open_repository as open_ingest
from services.notifier.domain import OFFER_REVOKED, Delivery, message_id_for, outcome_event
from services.notifier.store import StoreChanges, unlinked_delivery
from services.notifier.store import open_repository as open_notifier
from shared.erasure import unlinked_token
from shared.events import OFFER_EVENT, DeliveryRecorded, OfferIssued, OfferRevoked
from shared.kafka import client_options, require_bootstrap
from shared.logging import get_logger
from shared.privacy import customer_id_for_card, is_lead
from shared.settings import KafkaSettings, Settings
from shared.storage import StoreLocation
from shared.topics import DELIVERIES, EVENTS, OFFERS
from shared.vault import open_vault
from shared.vault_recovery import recover_vault

log = get_logger(__name__)

MANIFEST: Final = "manifest.json"
FORMAT: Final = 1
SUFFIX: Final = ".sqlite3"
ASSUMED_SENT: Final = "assumed_sent"
"""The reason of a delivery the restore records as done without knowing it was sent."""
SCANNED: Final = (EVENTS, DELIVERIES, OFFERS)
"""Topics whose ends a backup records: a restore reads them from there."""


class BackupError(RuntimeError):
    """A backup or a restore that cannot be made (wrong store, bad backup, running services)."""


# ---------------------------------------------------------------- the manifest


class Position(BaseModel):
    """An offset in one partition; `offset` None: the group had committed nothing there."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topic: str = Field(description="Topic name.")
    partition: int = Field(ge=0, description="Partition number.")
    offset: int | None = Field(ge=0, description="The next offset to read; None: none.")


class StoreFile(BaseModel):
    """One backed-up SQLite file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="The store's name (its file is `<name>.sqlite3`).")
    sha256: str = Field(description="SHA-256 of the backed-up file, hex.")
    size: int = Field(ge=0, description="Bytes.")
    schema_fingerprint: str = Field(description="SHA-256 of the file's schema statements.")


class Manifest(BaseModel):
    """What `manifest.json` holds: when, what version, which files, and the Kafka positions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = Field(description="Version of this manifest's layout.")
    app_version: str = Field(description="crm-stream version that made the backup.")
    created_at: AwareDatetime = Field(description="When the backup began (UTC).")
    stores: list[StoreFile] = Field(description="The files, by name.")
    groups: dict[str, list[Position]] = Field(
        description="Each service's consumer group: its committed offsets at the backup."
    )
    topic_ends: list[Position] = Field(
        description="The ends of crm.events, crm.deliveries and crm.offers at the backup."
    )

    def group_offsets(self, group: str) -> dict[TopicPartition, int | None]:
        return {TopicPartition(p.topic, p.partition): p.offset for p in self.groups.get(group, [])}

    def ends_of(self, topic: str) -> dict[TopicPartition, int]:
        return {
            TopicPartition(p.topic, p.partition): p.offset or 0
            for p in self.topic_ends
            if p.topic == topic
        }


def app_version() -> str:
    try:
        return importlib.metadata.version("crm-stream")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout
        return "unknown"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def schema_fingerprint(db: sqlite3.Connection) -> str:
    """A digest of a database's schema statements, in a stable order."""
    rows = db.execute(
        "SELECT type, name, coalesce(sql, '') FROM sqlite_master ORDER BY type, name"
    ).fetchall()
    return hashlib.sha256(orjson.dumps(rows)).hexdigest()


def verify_files(manifest: Manifest, folder: Path) -> list[str]:
    """What is wrong with a backup folder's files (missing, or not the bytes backed up)."""
    problems: list[str] = []
    for entry in manifest.stores:
        path = folder / f"{entry.name}{SUFFIX}"
        if not path.is_file():
            problems.append(f"{path.name} is missing")
        elif file_sha256(path) != entry.sha256:
            problems.append(f"{path.name} does not match its checksum")
    return problems


def positions(offsets: Mapping[TopicPartition, int | None]) -> list[Position]:
    return [
        Position(topic=tp.topic, partition=tp.partition, offset=offsets[tp])
        for tp in sorted(offsets, key=lambda tp: (tp.topic, tp.partition))
    ]


# ---------------------------------------------------------------- pure rules of the restore


@dataclass(frozen=True, slots=True)
class ResetPlan:
    """Where a group resumes, and the partitions whose records since the backup are gone."""

    targets: dict[TopicPartition, int]
    gaps: list[TopicPartition]


def reset_targets(
    recorded: Mapping[TopicPartition, int | None],
    beginnings: Mapping[TopicPartition, int],
    ends: Mapping[TopicPartition, int],
) -> ResetPlan:
    """Each partition's offset to resume from: the one recorded at the backup; the first
    retained record where the group had committed nothing (or the partition is new). A
    recorded offset before the first retained record is a gap (retention dropped records the
    restored store never saw); one past the end (a topic recreated since) resumes at the end."""
    targets: dict[TopicPartition, int] = {}
    gaps: list[TopicPartition] = []
    for tp in sorted(ends, key=lambda tp: (tp.topic, tp.partition)):
        first, end = beginnings.get(tp, 0), ends[tp]
        offset = recorded.get(tp)
        if offset is None:
            targets[tp] = first
        elif offset < first:
            gaps.append(tp)
            targets[tp] = first
        else:
            targets[tp] = min(offset, end)
    return ResetPlan(targets, gaps)


def _when(text: Any) -> dt.datetime | None:
    try:
        at = dt.datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)


@dataclass(slots=True)
class ErasureLog:
    """The erasures read from `crm.events` since the backup, and the merges that widen them."""

    erased: dict[str, dt.datetime] = field(default_factory=dict)
    merged: dict[str, set[str]] = field(default_factory=dict)
    """customer id -> the customers whose cards were linked to it since the backup."""

    def add(self, document: Mapping[str, Any]) -> None:
        kind, customer = document.get("type"), document.get("customer_id")
        if not isinstance(customer, str) or not customer:
            return
        if kind == "customer_erased":
            at = _when(document.get("occurred_at")) or dt.datetime.now(dt.UTC)
            self.erased[customer] = max(self.erased.get(customer, at), at)
        elif kind == "card_linked":
            into = self.merged.setdefault(customer, set())
            card = document.get("card_id")
            if isinstance(card, str) and card:
                into.add(card if is_lead(card) else customer_id_for_card(card))
            other = document.get("merged_customer_id")
            if isinstance(other, str) and other:
                into.add(other)

    def keys_to_destroy(self, cards_of: Mapping[str, Iterable[str]]) -> dict[str, dt.datetime]:
        """Every customer whose data keys the erasures destroy: each erased customer and the
        customers merged into them (since the backup, or by the restored card table, `cards_of`
        giving an erased customer's card ids)."""
        destroy: dict[str, dt.datetime] = {}
        for customer, at in self.erased.items():
            merged = set(self.merged.get(customer, ()))
            merged |= {
                c if is_lead(c) else customer_id_for_card(c) for c in cards_of.get(customer, ())
            }
            for cid in {customer, *merged}:
                destroy[cid] = max(destroy.get(cid, at), at)
        return destroy


@dataclass(slots=True)
class OfferLog:
    """The offers issued and revoked on `crm.offers` since the notifier's recorded position."""

    issued: dict[str, OfferIssued] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)

    def add(self, event: Any) -> None:
        if isinstance(event, OfferIssued):
            self.issued[event.offer_id] = event
        elif isinstance(event, OfferRevoked):
            self.revoked.add(event.offer_id)


def settle_deliveries(
    *,
    issued: Mapping[str, OfferIssued],
    outcomes: Mapping[str, DeliveryRecorded],
    stored: Mapping[str, Delivery],
    erased: Iterable[str],
    now: dt.datetime,
    revoked: Iterable[str] = (),
) -> list[Delivery]:
    """The delivery records a restore writes before the notifier starts (see the module's rule).

    - an outcome published since the backup is the record (unless the backup's record is
      final and newer);
    - an offer issued since the notifier's position that has neither a record nor an outcome
      is `suppressed` / `assumed_sent`: it is never e-mailed by the replay (`offer_revoked`
      when it was revoked since, as the notifier records a revocation before sending);
    - an erased customer's records are kept unlinked (no customer, no offer content).
    """
    gone = set(erased)
    withdrawn = set(revoked)
    settled: dict[str, Delivery] = {}
    for offer_id, outcome in outcomes.items():
        known = stored.get(offer_id)
        if known is not None and known.is_final and known.updated_at >= outcome.recorded_at:
            continue
        offer = issued.get(offer_id) or (known.offer if known is not None else None)
        if offer is not None and offer.customer_id != outcome.customer_id:
            offer = None  # the outcome is unlinked already (an erasure before it)
        settled[offer_id] = Delivery(
            offer_id=offer_id,
            customer_id=outcome.customer_id,
            state=outcome.state,
            message_id=outcome.message_id,
            offer=offer,
            updated_at=outcome.recorded_at,
            attempts=outcome.attempts,
            last_error=outcome.reason,
        )
    for offer_id, offer in issued.items():
        if offer_id in settled or offer_id in stored:
            continue
        settled[offer_id] = Delivery(
            offer_id=offer_id,
            customer_id=offer.customer_id,
            state="suppressed",
            message_id=message_id_for(offer_id),
            offer=offer,
            updated_at=now,
            last_error=OFFER_REVOKED if offer_id in withdrawn else ASSUMED_SENT,
        )
    return [
        unlinked_delivery(d, unlinked_token()) if d.customer_id in gone else d
        for d in settled.values()
    ]


def uncovered(
    plans: Mapping[str, ResetPlan],
) -> list[str]:
    """`group topic[partition]` of every gap, for the refusal's message."""
    return [
        f"{group} {tp.topic}[{tp.partition}]" for group, plan in plans.items() for tp in plan.gaps
    ]


TimedRecord = tuple[int, int]
"""A record's offset and timestamp (ms since the epoch)."""
ReadRange = Callable[[int, int], Awaitable[Sequence[TimedRecord]]]
"""Reads the records of one partition with offsets in [start, stop), in order (a compacted
partition may return fewer than stop - start)."""
WINDOW: Final = 64
"""Records read at once when checking the broker's answer."""


async def first_offset_at(
    *, cutoff_ms: int, hint: int | None, begin: int, end: int, read: ReadRange
) -> int:
    """The first offset of a partition whose record is stamped at or after `cutoff_ms`, or
    `end` when none is; `hint` is the broker's answer to `offsets_for_times` (None: none).

    Read, not trusted: a broker may index by append time or answer a batch's base offset
    (earlier than asked: harmless, the answer moves forward past older records) or answer
    later than the first such record (unsafe: the answer moves back until the record before it
    is older than the cutoff). Where the records cannot tell (a compacted hole), the earlier
    offset is kept: replaying more is harmless."""
    offset = end if hint is None else min(max(hint, begin), end)
    offset = await _forward(cutoff_ms, offset, end, read)
    return await _backward(cutoff_ms, offset, begin, read)


async def _forward(cutoff_ms: int, offset: int, end: int, read: ReadRange) -> int:
    """Past the records before `cutoff_ms` that follow `offset`: one window, then a binary
    search over the rest (a broker that answered far too early, e.g. 0 for "none")."""
    if offset >= end:
        return end
    records = await read(offset, min(offset + WINDOW, end))
    newer = next((o for o, ts in records if ts >= cutoff_ms), None)
    if newer is not None or not records:
        return offset if newer is None else newer
    low, high = records[-1][0] + 1, end
    while low < high:  # the first offset whose next record is at or after the cutoff
        middle = (low + high) // 2
        probe = await read(middle, min(middle + WINDOW, high))
        first = probe[0] if probe else None
        if first is None or first[1] >= cutoff_ms:
            high = middle
        else:
            low = first[0] + 1
    return low


async def _backward(cutoff_ms: int, offset: int, begin: int, read: ReadRange) -> int:
    """Back until the record before `offset` is older than `cutoff_ms` (or the beginning)."""
    step = WINDOW
    while offset > begin:
        start = max(begin, offset - step)
        records = await read(start, offset)
        older = next((o for o, ts in reversed(records) if ts < cutoff_ms), None)
        if older is not None:
            return older + 1
        offset = start
        step *= 2
    return begin


# ---------------------------------------------------------------- Kafka


def _consumer(settings: KafkaSettings, group: str | None = None) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=require_bootstrap(settings),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **client_options(settings),
    )


def _partitions(consumer: AIOKafkaConsumer, topics: Iterable[str]) -> list[TopicPartition]:
    return [
        TopicPartition(topic, p)
        for topic in topics
        for p in sorted(consumer.partitions_for_topic(topic) or ())
    ]


async def _ends(
    consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition]
) -> dict[TopicPartition, int]:
    if not partitions:
        return {}
    await consumer._client.force_metadata_update()
    return await exact_ends(consumer, await consumer.end_offsets(list(partitions)))


async def _kafka_positions(
    settings: KafkaSettings,
) -> tuple[dict[str, list[Position]], list[Position]]:
    """Every group's committed offsets, and the ends of the topics a restore reads."""
    groups: dict[str, list[Position]] = {}
    for spec in SERVICES:
        consumer = _consumer(settings, spec.group)
        await consumer.start()
        try:
            await consumer._client.force_metadata_update()
            committed = {
                tp: await consumer.committed(tp) for tp in _partitions(consumer, spec.topics)
            }
        finally:
            await consumer.stop()
        groups[spec.group] = positions(committed)
    reader = _consumer(settings)
    await reader.start()
    try:
        await reader._client.force_metadata_update()
        ends = await _ends(reader, _partitions(reader, SCANNED))
    finally:
        await reader.stop()
    return groups, positions(dict(ends))


async def _read_from(
    settings: KafkaSettings,
    topic: str,
    starts: Mapping[TopicPartition, int],
    within: float = 120.0,
) -> list[Any]:
    """A topic's records from `starts` (a partition not in it: from its first retained record)
    to each partition's end as of the call, in partition order."""
    reader = _consumer(settings)
    await reader.start()
    try:
        await reader._client.force_metadata_update()
        every = _partitions(reader, [topic])
        ends = await _ends(reader, every)
        begin = await reader.beginning_offsets(every) if every else {}
        first = {tp: max(starts.get(tp, begin[tp]), begin[tp]) for tp in every}
        todo = {tp: offset for tp, offset in first.items() if offset < ends[tp]}
        if not todo:
            return []
        reader.assign(sorted(todo, key=lambda tp: (tp.topic, tp.partition)))
        for tp, offset in todo.items():
            reader.seek(tp, offset)
        records: list[Any] = []
        deadline = time.monotonic() + within
        pending = set(todo)
        while pending:
            if time.monotonic() > deadline:
                raise BackupError(f"could not read {topic} to the end")
            batch = await reader.getmany(*pending, timeout_ms=200)
            for tp, found in batch.items():
                records.extend(r for r in found if r.offset < ends[tp])
            pending = {tp for tp in pending if await reader.position(tp) < ends[tp]}
        return records
    finally:
        await reader.stop()


async def _read_range(
    consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, stop: int, within: float = 30.0
) -> list[TimedRecord]:
    """The offsets and timestamps of `tp`'s records in [start, stop)."""
    if start >= stop:
        return []
    consumer.assign([tp])
    consumer.seek(tp, start)
    found: list[TimedRecord] = []
    deadline = time.monotonic() + within
    while await consumer.position(tp) < stop:
        if time.monotonic() > deadline:
            raise BackupError(f"could not read {tp.topic}[{tp.partition}] at {start}")
        batch = await consumer.getmany(tp, timeout_ms=200, max_records=stop - start)
        found.extend((r.offset, r.timestamp) for r in batch.get(tp, ()) if r.offset < stop)
    return found


@dataclass(frozen=True, slots=True)
class TimeOffsets:
    """Each partition's first offset at or after a cutoff, and the partitions where retention
    has dropped records that may have been at or after it."""

    offsets: dict[TopicPartition, int]
    gaps: set[TopicPartition]


async def offsets_at(
    consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition], cutoff: dt.datetime
) -> TimeOffsets:
    """Where a replay from `cutoff` begins on each partition (see `first_offset_at`)."""
    if not partitions:
        return TimeOffsets({}, set())
    cutoff_ms = int(cutoff.timestamp() * 1000)
    begin = await consumer.beginning_offsets(list(partitions))
    ends = await _ends(consumer, partitions)
    hints = await consumer.offsets_for_times(dict.fromkeys(partitions, cutoff_ms))
    offsets: dict[TopicPartition, int] = {}
    gaps: set[TopicPartition] = set()
    for tp in partitions:
        hint = hints.get(tp)

        async def read(start: int, stop: int, tp: TopicPartition = tp) -> list[TimedRecord]:
            return await _read_range(consumer, tp, start, stop)

        offsets[tp] = await first_offset_at(
            cutoff_ms=cutoff_ms,
            hint=None if hint is None else hint.offset,
            begin=begin[tp],
            end=ends[tp],
            read=read,
        )
        if offsets[tp] == begin[tp] > 0 and begin[tp] < ends[tp]:
            gaps.add(tp)  # the first retained record is already at or after the cutoff
    return TimeOffsets(offsets, gaps)


async def _commit(
    settings: KafkaSettings,
    group: str,
    topics: Sequence[str],
    targets: Mapping[TopicPartition, int],
) -> None:
    """Commit `targets` for `group`, as a member of it (which every broker accepts)."""
    if not targets:
        return
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=require_bootstrap(settings),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **client_options(settings),
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + 60.0
        while not set(targets) <= consumer.assignment():
            if time.monotonic() > deadline:
                raise BackupError(f"could not take over the partitions of group {group}")
            await consumer.getmany(timeout_ms=200, max_records=1)
        await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in targets.items()})
    finally:
        await consumer.stop()


# ---------------------------------------------------------------- backup


@dataclass(frozen=True, slots=True)
class BackupReport:
    folder: Path
    manifest: Manifest
    seconds: float


def _store_folder(settings: Settings) -> Path:
    location = StoreLocation.parse(settings.store.store_url)
    if location.kind != "sqlite" or location.directory is None:
        raise BackupError(
            "crm backup and crm restore are for the embedded mode (CRM_STORE_URL=sqlite:///DIR); "
            "MongoDB is backed up by its replica set's point-in-time backups"
        )
    return location.directory


def _copy_snapshots(folder: Path, dest: Path) -> list[StoreFile]:
    """Copy every store file of `folder` into `dest` from one read snapshot each, all of them
    opened before the first is copied."""
    names = sorted(p.name.removesuffix(SUFFIX) for p in folder.glob(f"*{SUFFIX}") if p.is_file())
    if not names:
        raise BackupError(f"no store files in {folder}")
    sources: dict[str, sqlite3.Connection] = {}
    try:
        for name in names:
            source = sqlite3.connect(folder / f"{name}{SUFFIX}", isolation_level=None)
            sources[name] = source
            source.execute("PRAGMA busy_timeout=10000")
            source.execute("BEGIN")
            source.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the snapshot
        entries: list[StoreFile] = []
        for name, source in sources.items():
            target_path = dest / f"{name}{SUFFIX}"
            target = sqlite3.connect(target_path, isolation_level=None)
            try:
                source.backup(target)  # one step: the whole snapshot
                fingerprint = schema_fingerprint(target)
                target.execute("PRAGMA journal_mode=DELETE")
            finally:
                target.close()
            with target_path.open("rb") as handle:
                os.fsync(handle.fileno())
            entries.append(
                StoreFile(
                    name=name,
                    sha256=file_sha256(target_path),
                    size=target_path.stat().st_size,
                    schema_fingerprint=fingerprint,
                )
            )
        return entries
    finally:
        for source in sources.values():
            with contextlib.suppress(sqlite3.Error):
                source.execute("ROLLBACK")
            source.close()


def _prepare(dest: Path) -> None:
    if dest.exists() and any(dest.iterdir()):
        raise BackupError(f"{dest} is not empty: back up into a new folder")
    dest.mkdir(parents=True, exist_ok=True)


async def backup(settings: Settings, dest: Path) -> BackupReport:
    """Back up the embedded stores into `dest` (a new or empty folder)."""
    started = time.monotonic()
    folder = _store_folder(settings)
    await asyncio.to_thread(_prepare, dest)
    created_at = dt.datetime.now(dt.UTC)
    groups, ends = await _kafka_positions(settings.kafka)
    stores = await asyncio.to_thread(_copy_snapshots, folder, dest)
    manifest = Manifest(
        format=FORMAT,
        app_version=app_version(),
        created_at=created_at,
        stores=stores,
        groups=groups,
        topic_ends=ends,
    )
    partial = dest / f"{MANIFEST}.partial"
    partial.write_bytes(orjson.dumps(manifest.model_dump(mode="json"), option=orjson.OPT_INDENT_2))
    os.replace(partial, dest / MANIFEST)
    seconds = round(time.monotonic() - started, 2)
    log.info("backup_done", stores=len(stores), seconds=seconds)
    return BackupReport(dest, manifest, seconds)


# ---------------------------------------------------------------- restore


@dataclass(frozen=True, slots=True)
class RestoreReport:
    backup_at: dt.datetime
    """The instant the stores hold: the backup's time, or the point in time restored to."""
    stores: list[str]
    """The store files put back (none for a point-in-time restore)."""
    replay: SafeReplay
    """What made the replay from that instant safe."""
    seconds: float


def read_manifest(src: Path) -> Manifest:
    try:
        manifest = Manifest.model_validate_json((src / MANIFEST).read_bytes())
    except FileNotFoundError:
        raise BackupError(f"{src} holds no {MANIFEST}: not a (complete) backup") from None
    except ValidationError as exc:
        raise BackupError(f"{src / MANIFEST} is not a backup manifest: {exc}") from None
    if manifest.format != FORMAT:
        raise BackupError(f"backup format {manifest.format} is not {FORMAT}")
    return manifest


async def _require_stopped(settings: Settings) -> None:
    deadline = time.monotonic() + 30.0
    for spec in SERVICES:
        members = await _members(settings, spec.group)
        while members and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            members = await _members(settings, spec.group)
        if members:
            raise BackupError(
                f"stop every service first: the consumer group {spec.group} has {members} member(s)"
            )


async def _plans(settings: KafkaSettings, manifest: Manifest) -> dict[str, ResetPlan]:
    reader = _consumer(settings)
    await reader.start()
    try:
        await reader._client.force_metadata_update()
        every = _partitions(reader, sorted({t for spec in SERVICES for t in spec.topics}))
        begin = await reader.beginning_offsets(every) if every else {}
        ends = await _ends(reader, every)
        plans: dict[str, ResetPlan] = {}
        for spec in SERVICES:
            mine = set(_partitions(reader, spec.topics))
            plans[spec.group] = reset_targets(
                manifest.group_offsets(spec.group),
                {tp: o for tp, o in begin.items() if tp in mine},
                {tp: o for tp, o in ends.items() if tp in mine},
            )
        return plans
    finally:
        await reader.stop()


def _put_back(src: Path, folder: Path, names: Sequence[str]) -> None:
    """Replace each store file by its backup, atomically per file, stale WAL files removed."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = folder / f"{name}{SUFFIX}"
        staged = folder / f"{name}{SUFFIX}.restoring"
        shutil.copyfile(src / f"{name}{SUFFIX}", staged)
        with staged.open("rb") as handle:
            os.fsync(handle.fileno())
        for stale in (f"{target}-wal", f"{target}-shm", f"{target}-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(stale)
        os.replace(staged, target)
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


async def _reapply_erasures(settings: Settings, erasures: ErasureLog) -> int:
    if not erasures.erased:
        return 0
    async with open_ingest(settings.store) as ingest:
        cards_of = {cid: await ingest.cards_of_customer(cid) for cid in erasures.erased}
    destroy = erasures.keys_to_destroy(cards_of)
    async with open_vault(settings.store) as vault:
        return await vault.erase(destroy)


async def _settle_notifier(
    settings: Settings,
    offers: OfferLog,
    outcomes: Mapping[str, DeliveryRecorded],
    erased: Iterable[str],
) -> tuple[int, list[Delivery]]:
    ids = set(offers.issued) | set(outcomes)
    async with open_notifier(settings.store) as notifier:
        stored = await notifier.get_deliveries(ids) if ids else {}
        settled = settle_deliveries(
            issued=offers.issued,
            outcomes=outcomes,
            stored=stored,
            erased=erased,
            now=dt.datetime.now(dt.UTC),
            revoked=offers.revoked,
        )
        if settled:
            await notifier.apply(StoreChanges(deliveries=settled))
    # Decided without an outcome: published, as the notifier would have.
    decided = [d for d in settled if d.offer_id not in outcomes]
    return len(settled) - len(decided), decided


async def _publish_outcomes(settings: KafkaSettings, deliveries: Sequence[Delivery]) -> None:
    if not deliveries:
        return
    producer = await open_producer(settings)
    try:
        for delivery in deliveries:
            payload = outcome_event(delivery).model_dump_json().encode()
            await producer.send(DELIVERIES, payload, key=delivery.customer_id.encode())
        await producer.flush()
    finally:
        await producer.stop()


def _refuse_gaps(plans: Mapping[str, ResetPlan], accept_gap: bool, since: str) -> None:
    gaps = uncovered(plans)
    if gaps and not accept_gap:
        raise BackupError(
            f"the topics no longer retain every record since {since} ("
            + ", ".join(gaps)
            + "): what happened in between cannot be replayed; restore a newer point, or "
            "accept the loss with --accept-gap"
        )


# ---------------------------------------------------------------- the replay made safe


@dataclass(frozen=True, slots=True)
class ReplayFrom:
    """Where the replay of a restored state begins: each group's offsets, and the first records
    of the erasure log (`crm.events`) and of the delivery outcomes (`crm.deliveries`) that the
    restored stores may not reflect (a partition absent: from its first retained record)."""

    plans: dict[str, ResetPlan]
    events: dict[TopicPartition, int]
    deliveries: dict[TopicPartition, int]


@dataclass(frozen=True, slots=True)
class SafeReplay:
    """What `make_replay_safe` did."""

    erasures: int
    keys_destroyed: int
    keys_recovered: int
    deliveries_restored: int
    assumed_sent: int
    partitions_reset: int


async def _erasures_since(
    settings: KafkaSettings, starts: Mapping[TopicPartition, int]
) -> ErasureLog:
    erasures = ErasureLog()
    for record in await _read_from(settings, EVENTS, starts):
        with contextlib.suppress(orjson.JSONDecodeError):
            document = orjson.loads(record.value)
            if isinstance(document, dict):
                erasures.add(document)
    return erasures


async def _outcomes_since(
    settings: KafkaSettings, starts: Mapping[TopicPartition, int]
) -> dict[str, DeliveryRecorded]:
    outcomes: dict[str, DeliveryRecorded] = {}
    for record in await _read_from(settings, DELIVERIES, starts):
        with contextlib.suppress(ValidationError):
            outcome = DeliveryRecorded.model_validate_json(record.value)
            outcomes[outcome.offer_id] = outcome  # a later outcome (a bounce) wins
    return outcomes


async def _offers_since(settings: KafkaSettings, plans: Mapping[str, ResetPlan]) -> OfferLog:
    """The offers on `crm.offers` from where the notifier's group resumes."""
    notifier_group = next(spec.group for spec in SERVICES if spec.name == "notifier")
    starts = {tp: o for tp, o in plans[notifier_group].targets.items() if tp.topic == OFFERS}
    offers = OfferLog()
    for record in await _read_from(settings, OFFERS, starts):
        with contextlib.suppress(ValidationError):
            offers.add(OFFER_EVENT.validate_json(record.value))
    return offers


async def make_replay_safe(
    settings: Settings, start: ReplayFrom, *, accept_unreadable_keys: bool = False
) -> SafeReplay:
    """Steps 3 to 6 of the module's procedure, for stores restored by any means (files put
    back, a MongoDB point-in-time restore): erasures re-applied to the key vault, data keys
    recovered, delivery records settled, every group moved to where its replay begins.
    Through the store ports only, so the same on SQLite and MongoDB. The services must be
    stopped."""
    erasures = await _erasures_since(settings.kafka, start.events)
    keys_destroyed = await _reapply_erasures(settings, erasures)
    log.info("restore_erasures_reapplied", erasures=len(erasures.erased), keys=keys_destroyed)

    # The data keys created after the restored instant come back from `crm.data-keys`; after
    # the erasures above, which the recovery reads from the vault so that it restores no
    # erased customer's key, and before any service starts.
    recovered = await recover_vault(settings, accept_unreadable=accept_unreadable_keys)

    outcomes = await _outcomes_since(settings.kafka, start.deliveries)
    offers = await _offers_since(settings.kafka, start.plans)
    restored, decided = await _settle_notifier(settings, offers, outcomes, erasures.erased)
    await _publish_outcomes(settings.kafka, decided)
    log.info("restore_deliveries_settled", restored=restored, decided=len(decided))

    # The groups are independent: each joins and commits at once (a join may wait for the
    # broker to give up on the members the stopped services left behind).
    await asyncio.gather(
        *(
            _commit(settings.kafka, spec.group, spec.topics, start.plans[spec.group].targets)
            for spec in SERVICES
        )
    )
    return SafeReplay(
        erasures=len(erasures.erased),
        keys_destroyed=keys_destroyed,
        keys_recovered=recovered.restored,
        deliveries_restored=restored,
        assumed_sent=sum(d.last_error == ASSUMED_SENT for d in decided),
        partitions_reset=sum(len(p.targets) for p in start.plans.values()),
    )


def _report(at: dt.datetime, stores: list[str], safe: SafeReplay, started: float) -> RestoreReport:
    report = RestoreReport(at, stores, safe, round(time.monotonic() - started, 2))
    log.info("restore_done", stores=len(stores), seconds=report.seconds, **dataclasses.asdict(safe))
    return report


# ---------------------------------------------------------------- the two restores


async def restore(
    settings: Settings,
    src: Path,
    *,
    force: bool = False,
    accept_gap: bool = False,
    accept_unreadable_keys: bool = False,
) -> RestoreReport:
    """Restore the embedded stores from the backup in `src` and make the replay safe (see the
    module's procedure). The services must be stopped; start them afterwards as usual."""
    started = time.monotonic()
    folder = _store_folder(settings)
    manifest = read_manifest(src)
    problems = verify_files(manifest, src)
    if problems:
        raise BackupError("the backup is damaged: " + "; ".join(problems))
    if manifest.app_version != app_version():
        log.warning("restore_other_version", backup=manifest.app_version, running=app_version())
    if not force:
        await _require_stopped(settings)
    plans = await _plans(settings.kafka, manifest)
    _refuse_gaps(plans, accept_gap, "the backup")
    names = [entry.name for entry in manifest.stores]
    await asyncio.to_thread(_put_back, src, folder, names)
    log.info("restore_files_back", stores=len(names))
    start = ReplayFrom(plans, manifest.ends_of(EVENTS), manifest.ends_of(DELIVERIES))
    safe = await make_replay_safe(settings, start, accept_unreadable_keys=accept_unreadable_keys)
    return _report(manifest.created_at, names, safe, started)


DEFAULT_MARGIN: Final = dt.timedelta(minutes=10)
"""How far before the restored instant the replay begins by default: more than any consumer's
lag and the producers' clock skew (a replay of ten minutes more costs seconds)."""


async def _time_plans(settings: KafkaSettings, cutoff: dt.datetime) -> ReplayFrom:
    """Where every group resumes, and where the erasure and delivery logs are read from, for
    stores that hold what was processed before `cutoff`."""
    reader = _consumer(settings)
    await reader.start()
    try:
        await reader._client.force_metadata_update()
        read = sorted({t for spec in SERVICES for t in spec.topics} | {EVENTS, DELIVERIES})
        found = await offsets_at(reader, _partitions(reader, read), cutoff)
    finally:
        await reader.stop()
    plans: dict[str, ResetPlan] = {}
    for spec in SERVICES:
        mine = sorted(
            (tp for tp in found.offsets if tp.topic in spec.topics),
            key=lambda tp: (tp.topic, tp.partition),
        )
        plans[spec.group] = ResetPlan(
            {tp: found.offsets[tp] for tp in mine}, [tp for tp in mine if tp in found.gaps]
        )
    return ReplayFrom(
        plans,
        {tp: o for tp, o in found.offsets.items() if tp.topic == EVENTS},
        {tp: o for tp, o in found.offsets.items() if tp.topic == DELIVERIES},
    )


async def restore_point_in_time(
    settings: Settings,
    at: dt.datetime,
    *,
    margin: dt.timedelta = DEFAULT_MARGIN,
    force: bool = False,
    accept_gap: bool = False,
    accept_unreadable_keys: bool = False,
) -> RestoreReport:
    """Make the replay safe for stores already restored to the instant `at` by other means
    (MongoDB's point-in-time restore, a snapshot): nothing is copied; every group resumes at
    the first record stamped at or after `at - margin`, and the erasures and delivery outcomes
    published since then are applied first. The services must be stopped."""
    if at.tzinfo is None:
        raise BackupError("the point in time needs a time zone (e.g. 2026-12-02T03:00:00Z)")
    if margin < dt.timedelta(0):
        raise BackupError("the margin cannot be negative")
    if at > dt.datetime.now(dt.UTC):
        raise BackupError(f"{at.isoformat()} is in the future")
    started = time.monotonic()
    StoreLocation.parse(settings.store.store_url)  # a store is configured
    if not force:
        await _require_stopped(settings)
    cutoff = at - margin
    start = await _time_plans(settings.kafka, cutoff)
    _refuse_gaps(start.plans, accept_gap, cutoff.isoformat())
    log.info(
        "restore_point_in_time_found",
        partitions=sum(len(p.targets) for p in start.plans.values()),
        margin_s=margin.total_seconds(),
    )
    safe = await make_replay_safe(settings, start, accept_unreadable_keys=accept_unreadable_keys)
    return _report(at, [], safe, started)


def parse_margin(text: str) -> dt.timedelta:
    """`90`, `90s`, `10m` or `1h` as a duration."""
    units = {"s": 1, "m": 60, "h": 3600}
    value = text.strip().lower()
    unit = units.get(value[-1:])
    number = value[:-1] if unit is not None else value
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        raise BackupError(f"{text!r} is not a duration (e.g. 90s, 10m, 1h)") from None
    if not 0 <= seconds <= 30 * 86_400:
        raise BackupError(f"the margin {text!r} is not between 0 and 30 days")
    return dt.timedelta(seconds=seconds)


def parse_point_in_time(text: str) -> dt.datetime:
    """An ISO-8601 instant; without an offset it is read as UTC (as restore consoles show it)."""
    try:
        at = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise BackupError(f"{text!r} is not an ISO-8601 time (e.g. 2026-12-02T03:00:00Z)") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)


def backup_main(settings: Settings, dest: Path) -> BackupReport:
    return asyncio.run(backup(settings, dest))


def restore_main(settings: Settings, src: Path, **options: Any) -> RestoreReport:
    """`restore` from synchronous code (the command), with its keyword options."""
    return asyncio.run(restore(settings, src, **options))


def restore_point_in_time_main(
    settings: Settings, at: dt.datetime, **options: Any
) -> RestoreReport:
    """`restore_point_in_time` from synchronous code (the command), with its keyword options."""
    return asyncio.run(restore_point_in_time(settings, at, **options))


__all__ = [
    "ASSUMED_SENT",
    "DEFAULT_MARGIN",
    "BackupError",
    "BackupReport",
    "ErasureLog",
    "Manifest",
    "OfferLog",
    "ReplayFrom",
    "ResetPlan",
    "RestoreReport",
    "SafeReplay",
    "backup",
    "backup_main",
    "first_offset_at",
    "make_replay_safe",
    "offsets_at",
    "parse_margin",
    "parse_point_in_time",
    "read_manifest",
    "reset_targets",
    "restore",
    "restore_main",
    "restore_point_in_time",
    "restore_point_in_time_main",
    "settle_deliveries",
    "verify_files",
]
