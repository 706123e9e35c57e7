"""The key vault in SQLite: `vault.sqlite3` in the store folder, or in memory."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Collection, Mapping

from shared.storage import IN_LIST, SqliteStore, in_list
from shared.vault import DataKey

_COLUMNS = "kid, customer_id, key, created_at"


def _row(kid: str, customer_id: str, key: bytes, created_at: str) -> DataKey:
    return DataKey(customer_id, kid, bytes(key), dt.datetime.fromisoformat(created_at))


class SqliteVault(SqliteStore):
    """Tables `data_keys` (one row per live key, one per customer) and `erasures`. Destroyed
    keys are overwritten on disk (`secure_delete`) and the WAL is checkpointed at once."""

    SERVICE = "vault"
    SCHEMA = """
    CREATE TABLE IF NOT EXISTS data_keys (
        kid TEXT PRIMARY KEY, customer_id TEXT NOT NULL UNIQUE, key BLOB NOT NULL,
        created_at TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS erasures (
        customer_id TEXT PRIMARY KEY, erased_at TEXT NOT NULL) WITHOUT ROWID;
    """

    async def keys(self, kids: Collection[str]) -> dict[str, DataKey]:
        values = in_list(kids)

        def work(db: sqlite3.Connection) -> dict[str, DataKey]:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM data_keys WHERE kid IN {IN_LIST}",  # noqa: S608
                (values,),
            )
            return {row[0]: _row(*row) for row in rows}

        return await self.read(work) if kids else {}

    @staticmethod
    def _current(db: sqlite3.Connection, values: str) -> dict[str, DataKey]:
        rows = db.execute(
            f"SELECT {_COLUMNS} FROM data_keys WHERE customer_id IN {IN_LIST}",  # noqa: S608
            (values,),
        )
        return {row[1]: _row(*row) for row in rows}

    async def current(self, customer_ids: Collection[str]) -> dict[str, DataKey]:
        values = in_list(customer_ids)
        return await self.read(lambda db: self._current(db, values)) if customer_ids else {}

    async def create(self, customer_ids: Collection[str], at: dt.datetime) -> dict[str, DataKey]:
        fresh = [DataKey.new(str(cid)) for cid in set(customer_ids)]
        rows = [(k.kid, k.customer_id, k.key, at.isoformat()) for k in fresh]
        values = in_list(customer_ids)

        def work(db: sqlite3.Connection) -> dict[str, DataKey]:
            db.executemany(
                "INSERT OR IGNORE INTO data_keys (kid, customer_id, key, created_at) "
                "VALUES (?, ?, ?, ?)",
                rows,
            )
            return self._current(db, values)

        return await self.write(work) if customer_ids else {}

    async def erase(self, erasures: Mapping[str, dt.datetime]) -> int:
        values = in_list(erasures)
        marks = [(str(cid), at.isoformat()) for cid, at in erasures.items()]

        def work(db: sqlite3.Connection) -> int:
            gone = db.execute(
                f"DELETE FROM data_keys WHERE customer_id IN {IN_LIST}",  # noqa: S608
                (values,),
            ).rowcount
            db.executemany(
                "INSERT INTO erasures (customer_id, erased_at) VALUES (?, ?) "
                "ON CONFLICT (customer_id) DO UPDATE SET erased_at = "
                "max(erased_at, excluded.erased_at)",
                marks,
            )
            return gone

        if not erasures:
            return 0
        gone = await self.write(work)
        # The destroyed keys must not linger in the write-ahead log either.
        await self.read(lambda db: db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall())
        return gone

    async def erased_at(self, customer_ids: Collection[str]) -> dict[str, dt.datetime]:
        values = in_list(customer_ids)

        def work(db: sqlite3.Connection) -> dict[str, dt.datetime]:
            rows = db.execute(
                f"SELECT customer_id, erased_at FROM erasures WHERE customer_id IN {IN_LIST}",  # noqa: S608
                (values,),
            )
            return {cid: dt.datetime.fromisoformat(at) for cid, at in rows}

        return await self.read(work) if customer_ids else {}

    async def restore(self, keys: Collection[DataKey]) -> int:
        rows = [
            (k.kid, k.customer_id, k.key, (k.created_at or dt.datetime.now(dt.UTC)).isoformat())
            for k in keys
        ]

        def work(db: sqlite3.Connection) -> int:
            # Neither the key id nor the customer may be there already (one live key each).
            added = 0
            for row in rows:
                added += db.execute(
                    "INSERT OR IGNORE INTO data_keys (kid, customer_id, key, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    row,
                ).rowcount
            return added

        return await self.write(work) if rows else 0
