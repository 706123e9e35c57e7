"""Back-pressure and poison messages: the one guard every consumer's handler runs in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from shared.errors import Conflict, Unavailable
from shared.events import DeadLetter
from shared.kafka import BatchGuard, is_transient
from shared.topics import DEADLETTER
from tests.reliability.harness import record


class FakeBroker:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes | None]] = []

    async def publish(self, value: bytes | None, topic: str, **_: Any) -> None:
        self.published.append((topic, value))


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def make_guard(**options: Any) -> tuple[BatchGuard, FakeBroker, Sleeps]:
    broker, sleeps = FakeBroker(), Sleeps()
    guard = BatchGuard(broker, service="test", sleep=sleeps, **options)  # type: ignore[arg-type]
    return guard, broker, sleeps


BATCH = [record("crm.events", b'{"n": %d}' % n, offset=n) for n in range(5)]


async def redeliver(guard: BatchGuard, batch: Sequence[Any], work: Any, times: int) -> int:
    """Feed the batch again after each failure, as NACK_ON_ERROR does; returns the failures."""
    failures = 0
    for _ in range(times):
        try:
            await guard.run(batch, work)
            return failures
        except Exception:
            failures += 1
    return failures


async def test_a_store_that_is_down_is_retried_with_growing_capped_backoff_and_nothing_dropped() -> (
    None
):
    guard, broker, sleeps = make_guard(backoff_base_s=0.5, backoff_max_s=4.0, max_attempts=3)
    down = {"calls": 0}
    done: list[int] = []

    async def work(records: Sequence[Any]) -> None:
        down["calls"] += 1
        if down["calls"] <= 8:
            raise Unavailable("store unreachable")
        done.extend(r.offset for r in records)

    failures = await redeliver(guard, BATCH, work, times=20)
    assert failures == 8  # far beyond max_attempts: a down store is never a poison message
    assert sleeps.delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    assert done == [0, 1, 2, 3, 4]
    assert broker.published == []


async def test_a_poison_message_is_dead_lettered_after_bounded_retries_and_the_rest_processed() -> (
    None
):
    guard, broker, sleeps = make_guard(max_attempts=3)
    done: list[int] = []

    async def work(records: Sequence[Any]) -> None:
        if any(r.offset == 2 for r in records):
            raise KeyError("a field the code did not expect")
        done.extend(r.offset for r in records)

    failures = await redeliver(guard, BATCH, work, times=10)
    assert failures == 2  # two re-reads with backoff, then the third attempt isolates
    assert len(sleeps.delays) == 2
    assert done == [0, 1, 3, 4]  # in order, around the poison record
    assert [topic for topic, _ in broker.published] == [DEADLETTER]
    letter = DeadLetter.model_validate_json(broker.published[0][1] or b"")
    assert letter.reason == "processing_failed"
    assert letter.offset == 2
    assert letter.detail.startswith("KeyError")
    assert "did not expect" not in letter.detail  # only the type: messages may hold data


async def test_the_poison_record_is_found_even_when_re_reads_start_elsewhere() -> None:
    guard, broker, _ = make_guard(max_attempts=3)

    async def work(records: Sequence[Any]) -> None:
        if any(r.offset == 2 for r in records):
            raise ValueError("poison")

    for batch in (BATCH, BATCH[1:]):  # each re-read shaped differently
        with pytest.raises(ValueError, match="poison"):
            await guard.run(batch, work)
    await guard.run(BATCH[2:], work)  # third time: isolated and dead-lettered
    assert len(broker.published) == 1


async def test_the_store_failing_during_isolation_stops_it_and_nothing_is_dead_lettered() -> None:
    guard, broker, _ = make_guard(max_attempts=1)
    calls = {"n": 0}

    async def work(records: Sequence[Any]) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise TypeError("looks like poison")
        raise Unavailable("database is locked")

    with pytest.raises(Unavailable):
        await guard.run(BATCH, work)
    assert broker.published == []


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (Unavailable("store away"), True),
        (Conflict("another version"), True),
        (ValueError("x"), False),
        (KeyError("x"), False),
    ],
)
def test_infrastructure_errors_are_transient_and_data_errors_are_not(
    error: BaseException, transient: bool
) -> None:
    assert is_transient(error) is transient
