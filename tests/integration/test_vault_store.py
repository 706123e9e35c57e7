"""One contract for both key vaults: SQLite (file and memory) and MongoDB (the MongoDB-wire
server the suite starts), opened through `open_vault` like the services do."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.settings import StoreSettings
from shared.vault import DataKey, KeyVault, open_value, open_vault, seal_value, vault_for

T0 = dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)


@pytest.fixture
async def vault(every_store: StoreSettings) -> AsyncIterator[KeyVault]:
    async with open_vault(every_store) as opened:
        yield opened


async def test_creating_a_key_twice_gives_the_same_key(vault: KeyVault) -> None:
    first = await vault.create(["c-1", "c-2"], T0)
    again = await vault.create(["c-1"], T0 + dt.timedelta(minutes=1))
    assert again["c-1"] == first["c-1"]
    assert first["c-1"].kid != first["c-2"].kid
    assert len(first["c-1"].key) == 32
    assert await vault.current(["c-1", "c-3"]) == {"c-1": first["c-1"]}
    assert await vault.keys([first["c-2"].kid]) == {first["c-2"].kid: first["c-2"]}


async def test_erasing_destroys_every_key_of_the_customer_and_remembers_the_latest_time(
    vault: KeyVault,
) -> None:
    keys = await vault.create(["c-1", "c-2"], T0)
    envelope = seal_value("ana@example.com", keys["c-1"], field="email")
    assert await vault.erase({"c-1": T0 + dt.timedelta(days=2)}) == 1
    assert await vault.erase({"c-1": T0 + dt.timedelta(days=1)}) == 0
    assert await vault.keys([keys["c-1"].kid]) == {}
    assert await vault.current(["c-1", "c-2"]) == {"c-2": keys["c-2"]}
    erased = await vault.erased_at(["c-1", "c-2"])
    assert list(erased) == ["c-1"]
    assert erased["c-1"].astimezone(dt.UTC) == T0 + dt.timedelta(days=2)
    renewed = await vault.create(["c-1"], T0 + dt.timedelta(days=3))
    assert renewed["c-1"].kid != keys["c-1"].kid
    # The old ciphertext was under the destroyed key: it is gone for good.
    assert envelope["kid"] not in await vault.keys([envelope["kid"], renewed["c-1"].kid])
    assert open_value(envelope, keys["c-1"], field="email") == "ana@example.com"


async def test_services_of_one_process_share_the_vault_of_a_store() -> None:
    store = StoreSettings(store_url="memory://")
    async with open_vault(store) as first, open_vault(store) as second:
        assert first is second
        assert vault_for(store) is first
        await first.create(["c-1"], T0)
        assert set(await second.current(["c-1"])) == {"c-1"}


async def test_the_sqlite_vault_keeps_no_destroyed_key_on_disk(tmp_path: Path) -> None:
    store = StoreSettings(store_url=f"sqlite://{tmp_path}")
    async with open_vault(store) as vault:
        key = (await vault.create(["c-1"], T0))["c-1"]
        await vault.erase({"c-1": T0})
        # Read while the vault is open: closing it would checkpoint the WAL anyway.
        files = await asyncio.to_thread(
            lambda: {p.name: p.read_bytes() for p in tmp_path.glob("*")}
        )
    assert "vault.sqlite3" in files
    for name, content in files.items():
        assert key.key not in content, name


async def test_a_vault_keeps_each_keys_creation_time(vault: KeyVault) -> None:
    key = (await vault.create(["c-1"], T0))["c-1"]

    assert key.created_at is not None
    assert key.created_at.astimezone(dt.UTC) == T0
    assert (await vault.keys([key.kid]))[key.kid].created_at == key.created_at


async def test_restoring_puts_back_lost_keys_and_never_replaces_a_customers_key(
    vault: KeyVault,
) -> None:
    have = (await vault.create(["c-1"], T0))["c-1"]
    lost = DataKey.new("c-2")
    lost = DataKey(lost.customer_id, lost.kid, lost.key, T0 + dt.timedelta(hours=1))
    rival = DataKey.new("c-1")

    assert await vault.restore([lost, rival]) == 1
    assert await vault.restore([lost]) == 0

    current = await vault.current(["c-1", "c-2"])
    assert current == {"c-1": have, "c-2": lost}
    assert current["c-2"].key == lost.key
    assert current["c-2"].created_at is not None
    assert current["c-2"].created_at.astimezone(dt.UTC) == T0 + dt.timedelta(hours=1)
