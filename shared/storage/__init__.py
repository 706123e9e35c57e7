"""The storage kit: where a service keeps its state, and the bases its two adapters stand on.

Each service's store is a port (a `Protocol` in `services/<name>/store.py`) with two thin
adapters in their own modules, one on `SqliteStore` (the embedded default) and one on
`MongoStore` (production). `open_store` opens the one `CRM_STORE_URL` names, as an async
context manager that closes it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, TypeVar

from shared.settings import StoreSettings
from shared.storage.location import StoreConfigError, StoreKind, StoreLocation
from shared.storage.mongo import Indexes, MongoStore, translate_pymongo_errors
from shared.storage.sqlite import IN_LIST, SqliteStore, in_list, translate_sqlite_errors

__all__ = [
    "IN_LIST",
    "Indexes",
    "MongoStore",
    "SqliteStore",
    "StoreConfigError",
    "StoreKind",
    "StoreLocation",
    "in_list",
    "open_store",
    "translate_pymongo_errors",
    "translate_sqlite_errors",
]


class Closable(Protocol):
    async def close(self) -> None: ...


R = TypeVar("R", bound=Closable)


@contextlib.asynccontextmanager
async def open_store(
    store: StoreSettings,
    *,
    sqlite: Callable[[StoreLocation], Awaitable[R]],
    mongo: Callable[[StoreLocation, str], Awaitable[R]],
) -> AsyncIterator[R]:
    """Open the adapter `CRM_STORE_URL` names (MongoDB, or SQLite in a folder or in memory)."""
    location = StoreLocation.parse(store.store_url)
    if location.kind == "mongodb":
        repository = await mongo(location, store.mongo_database)
    else:
        repository = await sqlite(location)
    try:
        yield repository
    finally:
        await repository.close()
