"""`crm restore --point-in-time`: where each partition's replay begins, checked against the
records whatever the broker's time index answers, and the command's refusals."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from typer.testing import CliRunner

from crm.backup import (
    WINDOW,
    BackupError,
    TimedRecord,
    first_offset_at,
    parse_margin,
    parse_point_in_time,
)
from crm.cli import cli


class Partition:
    """A partition's records as (offset, timestamp ms); counts the reads."""

    def __init__(self, records: list[TimedRecord], begin: int = 0) -> None:
        self.records = records
        self.begin = begin
        self.end = records[-1][0] + 1 if records else begin
        self.reads = 0

    async def read(self, start: int, stop: int) -> list[TimedRecord]:
        self.reads += 1
        return [(o, ts) for o, ts in self.records if start <= o < stop]

    def next_offset(self, offset: int) -> int:
        """Where a consumer that seeks to `offset` reads first."""
        return next((o for o, _ in self.records if o >= offset), self.end)

    def first_at(self, cutoff: int) -> int:
        return next((o for o, ts in self.records if ts >= cutoff), self.end)

    async def found(self, cutoff: int, hint: int | None) -> int:
        return await first_offset_at(
            cutoff_ms=cutoff, hint=hint, begin=self.begin, end=self.end, read=self.read
        )


def stamped(*stamps: int, begin: int = 0) -> Partition:
    return Partition([(begin + i, ts) for i, ts in enumerate(stamps)], begin)


# Offsets 0..7, one second apart, except 4..7: one batch stamped at once.
STAMPS = (0, 1000, 2000, 3000, 4000, 4000, 4000, 4000, 5000, 6000)


async def test_a_correct_answer_from_the_broker_is_kept() -> None:
    partition = stamped(*STAMPS)
    assert await partition.found(2500, hint=3) == 3


async def test_an_earlier_answer_moves_forward_to_the_first_record_at_the_cutoff() -> None:
    """The embedded broker answers a batch's base offset, or by its later append time."""
    partition = stamped(*STAMPS)
    assert await partition.found(4500, hint=4) == 8
    assert await partition.found(4500, hint=2) == 8


async def test_a_later_answer_moves_back_until_the_record_before_is_older() -> None:
    partition = stamped(*STAMPS)
    assert await partition.found(2500, hint=8) == 3
    assert await partition.found(3500, hint=9) == 4


async def test_no_answer_while_newer_records_exist_moves_back_from_the_end() -> None:
    partition = stamped(*STAMPS)
    assert await partition.found(5500, hint=None) == 9


async def test_a_zero_answer_for_none_ends_at_the_end_in_few_reads() -> None:
    """Asked past its last record, the embedded broker answers offset 0: the end is found by
    a binary search, not by reading the whole partition."""
    partition = stamped(*range(0, 100_000, 10))
    assert await partition.found(2_000_000, hint=0) == partition.end
    assert partition.reads < 30


async def test_a_cutoff_before_every_record_begins_at_the_first_retained_one() -> None:
    partition = stamped(5000, 6000, 7000, begin=40)
    assert await partition.found(1000, hint=None) == 40
    assert await partition.found(1000, hint=42) == 40


async def test_an_empty_partition_begins_at_its_end() -> None:
    partition = Partition([], begin=7)
    assert await partition.found(1000, hint=None) == 7
    assert await partition.found(1000, hint=0) == 7


async def test_a_compacted_partition_with_holes_begins_at_its_first_record_at_the_cutoff() -> None:
    partition = Partition([(0, 0), (5, 500), (6, 600), (200, 2000), (201, 2100), (400, 4000)])
    for hint in (0, 6, 200, 401, None):
        assert partition.next_offset(await partition.found(1000, hint)) == 200
    # Where a hole hides the records, the earlier offset is kept: one more replayed, none lost.
    assert partition.next_offset(await partition.found(2050, hint=6)) == 200
    assert partition.next_offset(await partition.found(2050, hint=201)) == 201


async def test_a_record_stamped_ahead_just_before_the_answer_is_replayed() -> None:
    """Timestamps out of order (a producer's clock ahead): the record before the answer must
    be older than the cutoff, so the replay does not skip the one stamped after it."""
    partition = stamped(0, 1000, 2000, 9000, 3000, 4000)
    assert await partition.found(2500, hint=4) == 3
    assert await partition.found(2500, hint=5) == 3


@pytest.mark.parametrize("seed", range(20))
async def test_on_ordered_timestamps_the_answer_is_exact_whatever_the_hint(seed: int) -> None:
    rng = random.Random(seed)
    stamps, at = [], 0
    for _ in range(rng.randrange(1, 3 * WINDOW)):
        at += rng.choice((0, 0, 1, 7, 100))
        stamps.append(at)
    partition = stamped(*stamps, begin=rng.randrange(0, 50))
    for _ in range(20):
        cutoff = rng.randrange(-5, at + 10)
        hint = rng.choice((None, rng.randrange(0, partition.end + 5)))
        assert await partition.found(cutoff, hint) == partition.first_at(cutoff)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("10m", 600), ("1h", 3600), ("0", 0)]
)
def test_a_margin_reads_seconds_minutes_or_hours(text: str, seconds: int) -> None:
    assert parse_margin(text) == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["-5s", "ten", "nan", "inf", "40d", ""])
def test_a_margin_that_is_no_sensible_duration_is_refused(text: str) -> None:
    with pytest.raises(BackupError):
        parse_margin(text)


def test_a_point_in_time_without_an_offset_is_utc() -> None:
    assert parse_point_in_time("2026-12-02T03:00:00") == dt.datetime(2026, 12, 2, 3, tzinfo=dt.UTC)
    assert parse_point_in_time("2026-12-02T04:00:00+01:00") == dt.datetime(
        2026, 12, 2, 3, tzinfo=dt.UTC
    )


def invoke(*args: str) -> tuple[int, str]:
    # Nothing listens there: each refusal below comes before any Kafka call.
    env = {
        "CRM_KAFKA_BOOTSTRAP": "127.0.0.1:9",
        "CRM_STORE_URL": "mongodb://127.0.0.1:9/crm",
        "CRM_LOG_LEVEL": "ERROR",
    }
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.output


def test_restore_wants_either_a_backup_folder_or_a_point_in_time() -> None:
    code, out = invoke("restore")
    assert code != 0
    assert "either a backup folder or --point-in-time" in out
    code, out = invoke("restore", "somewhere", "--point-in-time", "2026-12-02T03:00:00Z")
    assert code != 0
    assert "either a backup folder or --point-in-time" in out


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--point-in-time", "yesterday"], "not an ISO-8601 time"),
        (["--point-in-time", "2999-01-01T00:00:00Z"], "in the future"),
        (["--point-in-time", "2026-12-02T03:00:00Z", "--margin", "soon"], "not a duration"),
    ],
)
def test_restore_to_a_point_in_time_refuses_what_it_cannot_place(
    args: list[str], reason: str
) -> None:
    code, out = invoke("restore", *args)
    assert code != 0
    assert reason in out
