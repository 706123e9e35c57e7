"""Stores take input as data only: injection-looking ids through the real repositories, on
SQLite and on the MongoDB emulator. Nothing matches more than itself, nothing is dropped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.ingest.store import IngestRepository, MongoIngestRepository, SqliteIngestRepository
from services.profiles.store import MongoProfilesRepository, SqliteProfilesRepository
from shared.store import StoreLocation

HOSTILE_IDS = [
    '{"$gt": ""}',
    '{"$ne": null}',
    "' OR '1'='1",
    "x'); DROP TABLE seen_events; --",
    "a%",
    "_",
    "*",
    "$where",
]
NOW = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def _patch_mongomock_bulk(monkeypatch: pytest.MonkeyPatch) -> None:
    """mongomock predates PyMongo's `sort` argument of bulk updates (see the store tests)."""
    from mongomock.collection import BulkOperationBuilder

    for name in ("add_update", "add_replace"):
        original = getattr(BulkOperationBuilder, name)

        def patched(self: Any, *args: Any, _original: Any = original, **kw: Any) -> Any:
            kw.pop("sort", None)
            return _original(self, *args, **kw)

        monkeypatch.setattr(BulkOperationBuilder, name, patched)


@pytest.fixture(params=["sqlite", pytest.param("mongo-emulator", marks=pytest.mark.mongo)])
async def ingest_repo(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[IngestRepository]:
    repo: IngestRepository
    if request.param == "sqlite":
        repo = SqliteIngestRepository.open(StoreLocation.parse(f"sqlite:///{tmp_path}"))
    else:
        _patch_mongomock_bulk(monkeypatch)
        from mongomock_motor import AsyncMongoMockClient

        repo = MongoIngestRepository(AsyncMongoMockClient()["crm_injection"])
    yield repo
    await repo.close()


async def test_injection_looking_event_ids_and_cards_are_only_ever_themselves(
    ingest_repo: IngestRepository,
) -> None:
    await ingest_repo.record({"plain-key"}, {"plain-card": "c-plain"}, NOW)
    for hostile in HOSTILE_IDS:
        assert await ingest_repo.seen([hostile]) == set()
        assert await ingest_repo.customers_of_cards([hostile]) == {}
        assert await ingest_repo.cards_of_customer(hostile) == []
    await ingest_repo.record(
        set(HOSTILE_IDS), {h: f"c-{n}" for n, h in enumerate(HOSTILE_IDS)}, NOW
    )
    assert await ingest_repo.seen([*HOSTILE_IDS, "plain-key", "other"]) == {
        *HOSTILE_IDS,
        "plain-key",
    }
    links = await ingest_repo.customers_of_cards([*HOSTILE_IDS, "plain-card"])
    assert links == {**{h: f"c-{n}" for n, h in enumerate(HOSTILE_IDS)}, "plain-card": "c-plain"}
    assert await ingest_repo.cards_of_customer("c-0") == [HOSTILE_IDS[0]]


@pytest.mark.mongo
async def test_a_query_operator_in_place_of_an_id_is_data_on_mongodb(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _patch_mongomock_bulk(monkeypatch)
    from mongomock_motor import AsyncMongoMockClient

    database = AsyncMongoMockClient()["crm_operator"]
    ingest = MongoIngestRepository(database)
    await ingest.record({"k1", "k2"}, {"card-1": "c-1"}, NOW)
    operator: Any = {"$gt": ""}  # what a JSON field could carry if a caller passed it through
    assert await ingest.seen([operator]) == set()
    assert await ingest.customers_of_cards([operator]) == {}
    assert await ingest.cards_of_customer(operator) == []

    profiles = MongoProfilesRepository(database)
    with pytest.raises(TypeError):  # profiles refuse a non-string id outright
        await profiles.get_many([operator])
    with pytest.raises(TypeError):
        await profiles.find_by_card(operator)
    with pytest.raises(TypeError):
        await profiles.export(operator)


async def test_profile_lookups_with_injection_looking_ids_find_nothing_on_sqlite(
    tmp_path: Path,
) -> None:
    profiles = SqliteProfilesRepository.open(StoreLocation.parse(f"sqlite:///{tmp_path}"))
    try:
        for hostile in HOSTILE_IDS:
            assert await profiles.get_many([hostile]) == {}
            assert await profiles.find_by_card(hostile) is None
            assert (await profiles.export(hostile))["document"] is None
        assert await profiles.count() == 0
    finally:
        await profiles.close()
