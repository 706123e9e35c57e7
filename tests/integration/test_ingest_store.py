"""Ingest's repository contract: SQLite and MongoDB (emulator, and real when available) agree."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mongomock_motor import AsyncMongoMockClient

from services.ingest.store import IngestRepository, MongoIngestRepository, SqliteIngestRepository
from shared.store import StoreLocation, open_mongo

# Recent times: MongoDB (and the emulator) expire seen keys through a TTL index on `seen_at`.
T0 = dt.datetime.now(dt.UTC) - dt.timedelta(days=20)


@pytest.fixture(
    params=[
        "sqlite-file",
        "sqlite-memory",
        pytest.param("mongo-emulator", marks=pytest.mark.mongo),
        pytest.param("mongo-real", marks=pytest.mark.mongo),
    ]
)
async def repo(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[IngestRepository]:
    if request.param == "sqlite-file":
        repository: IngestRepository = SqliteIngestRepository.open(
            StoreLocation.parse(f"sqlite://{tmp_path}")
        )
    elif request.param == "sqlite-memory":
        repository = SqliteIngestRepository.open(StoreLocation.parse("memory://"))
    elif request.param == "mongo-emulator":
        request.getfixturevalue("emulator_bulk_compat")
        mongo = MongoIngestRepository(AsyncMongoMockClient()["crm_test"])
        await mongo.ensure_indexes()
        repository = mongo
    else:
        url = request.getfixturevalue("real_mongo_url")
        client, _ = open_mongo(StoreLocation.parse(url), "crm_test")
        name = f"crm_test_ingest_{os.getpid()}_{abs(hash(str(tmp_path)))}"
        real = MongoIngestRepository(client[name])
        await real.ensure_indexes()
        yield real
        await client.drop_database(name)
        await client.close()
        return
    yield repository
    await repository.close()


async def test_recorded_event_keys_are_seen_and_others_are_not(repo: IngestRepository) -> None:
    await repo.record({"crm.checkouts.raw:e1", "crm.checkouts.raw:e2"}, {}, T0)
    seen = await repo.seen(["crm.checkouts.raw:e1", "crm.checkouts.raw:e3", "crm.customers.raw:e1"])
    assert seen == {"crm.checkouts.raw:e1"}


async def test_recording_the_same_keys_twice_is_harmless(repo: IngestRepository) -> None:
    await repo.record({"k1"}, {"card-a": "c-a"}, T0)
    await repo.record({"k1"}, {"card-a": "c-a"}, T0 + dt.timedelta(minutes=1))
    assert await repo.seen(["k1"]) == {"k1"}
    assert await repo.customers_of_cards(["card-a"]) == {"card-a": "c-a"}


async def test_card_links_are_found_both_ways_and_can_move(repo: IngestRepository) -> None:
    await repo.record(set(), {"card-a": "c-a", "card-b": "c-a", "card-c": "c-c"}, T0)
    assert await repo.customers_of_cards(["card-a", "card-c", "card-x"]) == {
        "card-a": "c-a",
        "card-c": "c-c",
    }
    assert sorted(await repo.cards_of_customer("c-a")) == ["card-a", "card-b"]
    await repo.record(set(), {"card-c": "c-a"}, T0)
    assert sorted(await repo.cards_of_customer("c-a")) == ["card-a", "card-b", "card-c"]
    assert await repo.cards_of_customer("c-c") == []


async def test_old_event_keys_are_forgotten(repo: IngestRepository) -> None:
    await repo.record({"old"}, {}, T0)
    await repo.record({"new"}, {}, T0 + dt.timedelta(days=19))
    await repo.forget_before(T0 + dt.timedelta(days=10))
    assert await repo.seen(["old", "new"]) == {"new"}


async def test_many_keys_are_looked_up_in_one_call(repo: IngestRepository) -> None:
    keys = {f"crm.checkouts.raw:e{n}" for n in range(1500)}
    await repo.record(keys, {}, T0)
    assert await repo.seen([*keys, "missing"]) == keys


async def test_operator_looking_input_is_data_not_a_query(repo: IngestRepository) -> None:
    await repo.record({"real"}, {"card-a": "c-a"}, T0)
    hostile = ['{"$gt": ""}', "$gt", "' OR '1'='1", "real' --"]
    assert await repo.seen(hostile) == set()
    assert await repo.customers_of_cards(hostile) == {}
    assert await repo.cards_of_customer('{"$ne": null}') == []
