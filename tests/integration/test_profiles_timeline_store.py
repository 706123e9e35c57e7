"""The timeline table's contract, the same for SQLite (file and memory) and MongoDB (the
MongoDB-wire test server the suite starts): a set of entries per customer, read newest first a
page at a time, filtered by type, deleted with the customer."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest

from services.profiles.domain import CustomerProfile
from services.profiles.store import ProfilesRepository, open_repository
from services.profiles.timeline import TimelineEntry, position
from shared.settings import StoreSettings

T0 = dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)


@pytest.fixture
async def repo(every_store: StoreSettings) -> AsyncIterator[ProfilesRepository]:
    async with open_repository(every_store) as repository:
        yield repository


def entry(customer: str, n: int, kind: str = "purchase", *, micro: int = 0) -> TimelineEntry:
    return TimelineEntry.model_validate(
        {
            "customer_id": customer,
            "entry_id": f"{kind}/e{n:03d}",
            "at": T0 + dt.timedelta(minutes=n, microseconds=micro),
            "type": kind,
            "store_id": "S001" if kind == "purchase" else None,
            "details": {"n": n, "text": f"entry {n}"},
        }
    )


async def test_entries_come_back_newest_first_page_by_page(repo: ProfilesRepository) -> None:
    entries = [entry("c-1", n) for n in range(7)] + [entry("c-2", 3)]
    await repo.save_timeline(list(reversed(entries)))
    await repo.save_timeline(entries[:3])  # written again: still one entry each
    pages: list[list[TimelineEntry]] = []
    before = None
    while True:
        page = await repo.timeline(["c-1"], before=before, limit=3)
        if not page:
            break
        pages.append(page)
        before = position(page[-1])
    assert [[e.entry_id for e in p] for p in pages] == [
        ["purchase/e006", "purchase/e005", "purchase/e004"],
        ["purchase/e003", "purchase/e002", "purchase/e001"],
        ["purchase/e000"],
    ]
    assert pages[0][0] == entries[6]


async def test_entries_of_the_same_instant_page_by_entry_id(repo: ProfilesRepository) -> None:
    same = [
        entry("c-1", 1, "note").model_copy(update={"entry_id": f"note/{x}", "at": T0})
        for x in "abcd"
    ]
    await repo.save_timeline(same)
    first = await repo.timeline(["c-1"], before=None, limit=2)
    rest = await repo.timeline(["c-1"], before=position(first[-1]), limit=10)
    assert [e.entry_id for e in first + rest] == ["note/d", "note/c", "note/b", "note/a"]


async def test_microseconds_order_entries(repo: ProfilesRepository) -> None:
    await repo.save_timeline([entry("c-1", 1, micro=5), entry("c-1", 1, "note", micro=7)])
    found = await repo.timeline(["c-1"], before=None, limit=5)
    assert [e.type for e in found] == ["note", "purchase"]


async def test_a_filter_by_type_and_several_customers(repo: ProfilesRepository) -> None:
    await repo.save_timeline(
        [entry("c-1", 1), entry("c-1", 2, "note"), entry("c-alias", 3, "note"), entry("c-2", 4)]
    )
    found = await repo.timeline(["c-1", "c-alias"], before=None, limit=10, types=["note"])
    assert [(e.customer_id, e.entry_id) for e in found] == [
        ("c-alias", "note/e003"),
        ("c-1", "note/e002"),
    ]
    assert await repo.timeline(["c-1"], before=None, limit=10, types=[]) == []


async def test_erasure_deletes_the_customers_entries_and_keeps_none_after(
    repo: ProfilesRepository,
) -> None:
    await repo.save_timeline([entry("c-1", 1), entry("c-1", 2, "note"), entry("c-2", 1)])
    await repo.save_timeline([], erased=["c-1"])
    assert await repo.timeline(["c-1"], before=None, limit=10) == []
    assert len(await repo.timeline(["c-2"], before=None, limit=10)) == 1
    # Stored as erased: an entry announced afterwards (an offer revoked for the erasure) is
    # not kept.
    await repo.save_many([CustomerProfile(customer_id="c-1", erased=True, erased_at=T0, version=1)])
    await repo.save_timeline([entry("c-1", 9, "offer_revoked")])
    assert await repo.timeline(["c-1"], before=None, limit=10) == []
