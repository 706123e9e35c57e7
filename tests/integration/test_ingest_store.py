"""One contract for both ingest repositories: SQLite (file and memory) and MongoDB.

MongoDB is the SecantusDB server the suite starts (or `CRM_TEST_MONGO_URL`), opened through
`open_repository` like the service does.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest

from services.ingest.store import IngestRepository, customer_export, open_repository
from services.ingest.store_mongo import SEEN, MongoIngestRepository
from shared.settings import StoreSettings

# Recent times: MongoDB expires seen keys through a TTL index on `seen_at`.
T0 = dt.datetime.now(dt.UTC) - dt.timedelta(days=20)


@pytest.fixture
async def repo(every_store: StoreSettings) -> AsyncIterator[IngestRepository]:
    async with open_repository(every_store) as repository:
        yield repository


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


async def test_a_lead_is_kept_beside_the_cards_and_exported_apart(
    repo: IngestRepository,
) -> None:
    lead = "l-0123456789abcdef01234567"
    await repo.record(set(), {lead: lead}, T0)
    assert await repo.customers_of_cards([lead]) == {lead: lead}
    # A card customer takes the address over: the lead now feeds them, beside their card.
    await repo.record(set(), {lead: "c-a", "card-a": "c-a"}, T0)
    assert await repo.customers_of_cards([lead, "card-a"]) == {lead: "c-a", "card-a": "c-a"}
    assert await customer_export(repo, "c-a") == {
        "linked_card_ids": ["card-a"],
        "lead_ids": [lead],
    }
    assert await customer_export(repo, lead) == {"linked_card_ids": [], "lead_ids": []}


async def test_old_event_keys_are_forgotten(repo: IngestRepository) -> None:
    await repo.record({"old"}, {}, T0)
    await repo.record({"new"}, {}, T0 + dt.timedelta(days=19))
    assert await repo.forget_before(T0 + dt.timedelta(days=10)) == 1
    assert await repo.seen(["old", "new"]) == {"new"}
    assert await repo.forget_before(T0 + dt.timedelta(days=10)) == 0


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


@pytest.mark.mongo
async def test_mongodb_keeps_event_keys_for_the_configured_window(
    mongo_store: StoreSettings,
) -> None:
    async with open_repository(mongo_store, dedup_days=7) as repository:
        assert isinstance(repository, MongoIngestRepository)
        indexes = await repository.database[SEEN].index_information()
    assert indexes["seen_ttl"]["key"] == [("seen_at", 1)]
    assert indexes["seen_ttl"]["expireAfterSeconds"] == 7 * 86_400
    async with open_repository(mongo_store, dedup_days=7) as repository:  # idempotent
        await repository.record({"k"}, {}, T0)
        assert await repository.seen(["k"]) == {"k"}
