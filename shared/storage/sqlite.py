"""The SQLite base of every service's SQLite adapter: connection, lock, worker thread, transactions.

One connection per service file (`sqlite:///DIR/<service>.sqlite3`, or memory). Every call runs
in a worker thread, one at a time under the store's lock, so the event loop keeps serving
Kafka; writes run in one `BEGIN IMMEDIATE` transaction. sqlite3's exceptions are translated
into `shared.errors` here, so nothing above the adapter knows sqlite3.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import ClassVar, Self, TypeVar

import orjson

from shared.errors import Conflict, Unavailable
from shared.storage.location import StoreConfigError, StoreLocation

T = TypeVar("T")

IN_LIST = "(SELECT value FROM json_each(?))"
"""A list parameter travels as one JSON array: `WHERE id IN {IN_LIST}` with `in_list(ids)`, so
no statement is built from values and no list meets SQLite's variable limit."""

# Primary result codes of a store that is busy or away, not of a wrong statement.
_UNAVAILABLE_CODES = frozenset(
    {
        5,  # SQLITE_BUSY
        6,  # SQLITE_LOCKED
        10,  # SQLITE_IOERR
        13,  # SQLITE_FULL
        14,  # SQLITE_CANTOPEN
        15,  # SQLITE_PROTOCOL
    }
)


def in_list(values: Iterable[str]) -> str:
    """The JSON array parameter of an `IN {IN_LIST}` clause."""
    return orjson.dumps([str(v) for v in values]).decode()


@contextlib.contextmanager
def translate_sqlite_errors() -> Iterator[None]:
    """sqlite3's exceptions as the domain's: a constraint is a `Conflict`; a busy, locked, full
    or failing database is `Unavailable`; anything else (a bug) passes unchanged."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise Conflict(str(exc)) from exc
    except sqlite3.OperationalError as exc:
        code = getattr(exc, "sqlite_errorcode", None)
        if code is None or code & 0xFF in _UNAVAILABLE_CODES:
            raise Unavailable(str(exc)) from exc
        raise


def connect(location: StoreLocation, service: str) -> sqlite3.Connection:
    """Open a service's SQLite database (a file in the folder, or in memory).

    WAL with synchronous=FULL: a committed transaction is on disk (the WAL is synced at every
    commit), so it survives the machine losing power, not only the process being killed (what
    NORMAL promises). `check_same_thread=False` because work runs in a worker thread, one
    call at a time.
    """
    if location.kind == "memory":
        target = ":memory:"
    elif location.kind == "sqlite" and location.directory is not None:
        location.directory.mkdir(parents=True, exist_ok=True)
        target = str(location.directory / f"{service}.sqlite3")
    else:
        raise StoreConfigError(f"{location.kind} is not a SQLite location")
    with translate_sqlite_errors():
        conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=10000")
        # Erased personal data is overwritten on disk, not left in free pages of the file.
        conn.execute("PRAGMA secure_delete=ON")
    return conn


class SqliteStore:
    """Base of a service's SQLite adapter: declare `SERVICE` (the file's name) and `SCHEMA`."""

    SERVICE: ClassVar[str]
    SCHEMA: ClassVar[str]
    ADDED_COLUMNS: ClassVar[Mapping[str, Mapping[str, str]]] = {}
    """Columns added to a table after its first release (table -> column -> type): a file
    written by an older version gets them at open, empty."""
    LATE_SCHEMA: ClassVar[str] = ""
    """Statements that need the added columns (their indexes), run after they are there."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection
        self._lock = asyncio.Lock()
        with translate_sqlite_errors():
            connection.executescript(self.SCHEMA)
            for table, columns in self.ADDED_COLUMNS.items():
                have = {row[1] for row in connection.execute(f'PRAGMA table_info("{table}")')}
                for column, kind in columns.items():
                    if column not in have:
                        connection.execute(f'ALTER TABLE "{table}" ADD COLUMN "{column}" {kind}')
            if self.LATE_SCHEMA:
                connection.executescript(self.LATE_SCHEMA)

    @classmethod
    async def open(cls, location: StoreLocation) -> Self:
        return cls(connect(location, cls.SERVICE))

    async def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in the worker thread, alone on the connection."""
        async with self._lock:
            with translate_sqlite_errors():
                return await asyncio.to_thread(work, self._db)

    async def write(self, work: Callable[[sqlite3.Connection], T], *, erasure: bool = False) -> T:
        """Run `work` in one transaction: all of it is committed, or none. `erasure`: the
        transaction erased personal data, so the WAL is checkpointed and truncated after it."""

        def transaction(db: sqlite3.Connection) -> T:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

        result = await self.read(transaction)
        if erasure:
            await self.checkpoint()
        return result

    async def checkpoint(self) -> None:
        """Copy the WAL into the database file and truncate it to nothing.

        After an erasure: the WAL still holds the pages as they were before (the erased values
        with them) until a checkpoint, and `secure_delete` has overwritten them in the file's
        pages. A checkpoint blocked by a reader leaves the WAL as it is (the next one ends it).
        """

        def work(db: sqlite3.Connection) -> None:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

        await self.read(work)

    async def reset(self) -> None:
        """Empty every table of this service's file (`crm replay` rebuilds it from the topics)."""

        def work(db: sqlite3.Connection) -> None:
            names = db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            ).fetchall()
            for (name,) in names:
                db.execute(f'DELETE FROM "{name}"')  # noqa: S608 - names from the schema itself

        await self.write(work)

    async def close(self) -> None:
        async with self._lock:
            self._db.close()
