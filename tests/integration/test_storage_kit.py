"""The storage kit: drivers' errors leave the adapters as the domain's, on real servers."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pymongo import IndexModel

from shared.errors import Conflict, Unavailable
from shared.settings import StoreSettings
from shared.storage import MongoStore, SqliteStore, StoreLocation, open_store
from shared.storage.sqlite import connect


class _Things(SqliteStore):
    SERVICE = "things"
    SCHEMA = "CREATE TABLE IF NOT EXISTS things (id TEXT PRIMARY KEY, n INTEGER NOT NULL)"

    async def add(self, thing: str) -> None:
        await self.write(lambda db: db.execute("INSERT INTO things VALUES (?, 1)", (thing,)))

    async def broken(self) -> None:
        await self.read(lambda db: db.execute("SELECT nothing FROM nowhere"))


class _MongoThings(MongoStore):
    INDEXES = {"things": (IndexModel("code", unique=True, name="code"),)}  # noqa: RUF012

    async def add(self, thing: str, code: str) -> None:
        await self.database["things"].insert_one({"_id": thing, "code": code})


async def test_a_duplicate_key_is_a_conflict_on_sqlite(tmp_path: Path) -> None:
    store = await _Things.open(StoreLocation.parse(f"sqlite:///{tmp_path}"))
    try:
        await store.add("a")
        with pytest.raises(Conflict):
            await store.add("a")
    finally:
        await store.close()


async def test_a_locked_database_is_unavailable_and_a_wrong_statement_is_a_bug(
    tmp_path: Path,
) -> None:
    location = StoreLocation.parse(f"sqlite:///{tmp_path}")
    store = await _Things.open(location)
    other = connect(location, "things")
    other.execute("PRAGMA busy_timeout=0")
    store._db.execute("PRAGMA busy_timeout=0")  # fail at once instead of waiting 10 s
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        with pytest.raises(Unavailable):
            await store.add("b")
    finally:
        other.execute("ROLLBACK")
        other.close()
    with pytest.raises(sqlite3.OperationalError):  # not retried for ever: a poison, not an outage
        await store.broken()
    await store.close()


@pytest.mark.mongo
async def test_a_duplicate_key_is_a_conflict_on_mongodb(mongo_store: StoreSettings) -> None:
    async with open_store(mongo_store, sqlite=_Things.open, mongo=_MongoThings.open) as store:
        assert isinstance(store, _MongoThings)
        await store.add("a", "X")
        with pytest.raises(Conflict):
            await store.add("b", "X")


@pytest.mark.mongo
async def test_an_unreachable_mongodb_is_unavailable() -> None:
    from crm.embedded import free_port

    url = f"mongodb://127.0.0.1:{free_port()}/?directConnection=true&serverSelectionTimeoutMS=300"
    with pytest.raises(Unavailable):
        await _MongoThings.open(StoreLocation.parse(url), "crm_nowhere")
