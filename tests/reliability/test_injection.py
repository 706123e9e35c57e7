"""Stores take input as data only: injection-looking ids through the real repositories, on
SQLite and on a real MongoDB-wire server. Nothing matches more than itself, nothing is dropped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.ingest.store import IngestRepository
from services.ingest.store import open_repository as open_ingest
from services.profiles.store import ProfilesRepository
from services.profiles.store import open_repository as open_profiles
from shared.settings import StoreSettings

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


@pytest.fixture(params=["sqlite", pytest.param("mongo", marks=pytest.mark.mongo)])
async def ingest_repo(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[IngestRepository]:
    if request.param == "sqlite":
        store = StoreSettings(store_url=f"sqlite:///{tmp_path}")
    else:
        store = request.getfixturevalue("mongo_store")
    async with open_ingest(store) as repo:
        yield repo


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
    mongo_store: StoreSettings,
) -> None:
    async with open_ingest(mongo_store) as ingest, open_profiles(mongo_store) as profiles:
        await _operators_are_data(ingest, profiles)


async def _operators_are_data(ingest: IngestRepository, profiles: ProfilesRepository) -> None:
    await ingest.record({"k1", "k2"}, {"card-1": "c-1"}, NOW)
    operator: Any = {"$gt": ""}  # what a JSON field could carry if a caller passed it through
    assert await ingest.seen([operator]) == set()
    assert await ingest.customers_of_cards([operator]) == {}
    assert await ingest.cards_of_customer(operator) == []

    with pytest.raises(TypeError):  # profiles refuse a non-string id outright
        await profiles.get_many([operator])
    with pytest.raises(TypeError):
        await profiles.find_by_card(operator)
    with pytest.raises(TypeError):
        await profiles.export(operator)


async def test_profile_lookups_with_injection_looking_ids_find_nothing_on_sqlite(
    tmp_path: Path,
) -> None:
    async with open_profiles(StoreSettings(store_url=f"sqlite:///{tmp_path}")) as profiles:
        for hostile in HOSTILE_IDS:
            assert await profiles.get_many([hostile]) == {}
            assert await profiles.find_by_card(hostile) is None
            assert (await profiles.export(hostile))["document"] is None
        assert await profiles.count() == 0
