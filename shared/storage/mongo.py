"""The MongoDB base of every service's MongoDB adapter: the client, declared indexes, ping, close.

An adapter declares its collections' indexes in `INDEXES`; `open` connects with PyMongo's async
client, checks the connection and the credentials, and creates the indexes. The adapter owns
the client it opened (and closes it); one given a database (tests) owns nothing. Every public
coroutine of an adapter runs inside `translate_pymongo_errors`, so PyMongo's exceptions leave
the adapter as `shared.errors` and nothing above it knows pymongo.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Self

from pymongo import AsyncMongoClient, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    PyMongoError,
    WTimeoutError,
)

from shared.errors import Conflict, Unavailable
from shared.storage.location import StoreLocation

Document = dict[str, Any]
Indexes = Mapping[str, Sequence[IndexModel]]
"""Collection name -> its index models, as an adapter declares them."""
DUPLICATE_KEY = 11000
"""MongoDB's error code for a write that meets an existing unique key."""


def duplicate_keys_only(exc: BulkWriteError) -> bool:
    """Whether every error of a bulk write is a duplicate key."""
    errors = exc.details.get("writeErrors", [])
    return bool(errors) and all(e.get("code") == DUPLICATE_KEY for e in errors)


@contextlib.contextmanager
def translate_pymongo_errors() -> Iterator[None]:
    """PyMongo's exceptions as the domain's: a duplicate key is a `Conflict`; a lost connection,
    a timeout or a retryable error is `Unavailable`; anything else passes unchanged."""
    try:
        yield
    except (DuplicateKeyError, BulkWriteError) as exc:
        if isinstance(exc, BulkWriteError) and not duplicate_keys_only(exc):
            raise
        raise Conflict(str(exc)) from exc
    except (AutoReconnect, ConnectionFailure, ExecutionTimeout, WTimeoutError) as exc:
        raise Unavailable(str(exc)) from exc
    except PyMongoError as exc:
        if exc.has_error_label("RetryableWriteError") or exc.has_error_label(
            "TransientTransactionError"
        ):
            raise Unavailable(str(exc)) from exc
        raise


def _translated(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def call(*args: Any, **kwargs: Any) -> Any:
        with translate_pymongo_errors():
            return await method(*args, **kwargs)

    return call


class MongoStore:
    """Base of a service's MongoDB adapter: declare `SERVICE` (its collections are named
    `SERVICE` or `SERVICE_...`) and `INDEXES` (collection -> index models)."""

    SERVICE: ClassVar[str] = ""
    INDEXES: ClassVar[Indexes] = {}

    def __init__(
        self, database: AsyncDatabase[Document], *, client: AsyncMongoClient[Document] | None = None
    ) -> None:
        self.database = database
        self._client = client

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, member in list(vars(cls).items()):
            if not name.startswith("_") and inspect.iscoroutinefunction(member):
                setattr(cls, name, _translated(member))

    @classmethod
    async def open(cls, location: StoreLocation, default_database: str, **options: Any) -> Self:
        """Connect, check the connection and the credentials, create the declared indexes.
        `options` go to the adapter's constructor (settings its indexes depend on)."""
        client: AsyncMongoClient[Document] = AsyncMongoClient(location.url, tz_aware=True)
        store = cls(client[location.database or default_database], client=client, **options)
        try:
            with translate_pymongo_errors():
                await store.database.command("ping")
                await store.ensure_indexes()
        except BaseException:
            await client.close()
            raise
        return store

    def indexes(self) -> Indexes:
        """The indexes this adapter needs: the declared `INDEXES` (an adapter whose indexes
        depend on a setting overrides this)."""
        return self.INDEXES

    async def ensure_indexes(self) -> None:
        """Create the indexes (idempotent); `open` does it for an opened store."""
        for collection, indexes in self.indexes().items():
            if indexes:
                await self.database[collection].create_indexes(list(indexes))

    async def reset(self) -> None:
        """Drop this service's collections (`crm replay` rebuilds them from the topics); the
        indexes are created again."""
        if not self.SERVICE:
            raise NotImplementedError(f"{type(self).__name__} does not name its SERVICE")
        for name in await self.database.list_collection_names():
            if name == self.SERVICE or name.startswith(f"{self.SERVICE}_"):
                await self.database.drop_collection(name)
        await self.ensure_indexes()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
