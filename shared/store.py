"""Where services keep their state, chosen by `CRM_STORE_URL`.

- `mongodb://…` / `mongodb+srv://…`: MongoDB through PyMongo's async API (production).
- `sqlite:///DIR`: one SQLite file per service in DIR, WAL mode (embedded default; survives kill -9).
- `memory://`: SQLite in memory, gone on exit (tests).

Each service defines its own small repository with a SQLite and a MongoDB implementation;
this module only opens the connections.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

StoreKind = Literal["mongodb", "sqlite", "memory"]


class StoreConfigError(ValueError):
    """`CRM_STORE_URL` is missing or not one of the supported forms."""


@dataclass(frozen=True, slots=True)
class StoreLocation:
    """A parsed `CRM_STORE_URL`."""

    kind: StoreKind
    url: str
    directory: Path | None = None

    @classmethod
    def parse(cls, url: str | None) -> StoreLocation:
        if not url:
            raise StoreConfigError(
                "CRM_STORE_URL is not set: use mongodb://…, sqlite:///DIR or memory://"
            )
        scheme = urlsplit(url).scheme
        if scheme in {"mongodb", "mongodb+srv"}:
            return cls("mongodb", url)
        if scheme == "memory":
            return cls("memory", url)
        if scheme == "sqlite":
            path = url.removeprefix("sqlite://")
            if not path or path == "/":
                raise StoreConfigError("sqlite URL needs a folder: sqlite:///path/to/dir")
            # sqlite:///abs/dir -> /abs/dir ; sqlite:///./rel -> ./rel
            directory = Path(path[1:]) if path.startswith("/./") else Path(path)
            return cls("sqlite", url, directory)
        raise StoreConfigError(f"unsupported CRM_STORE_URL scheme {scheme!r}")


def open_sqlite(location: StoreLocation, service: str) -> sqlite3.Connection:
    """Open the service's SQLite database (a file in the folder, or in memory).

    WAL with synchronous=NORMAL: a committed transaction survives the process being killed;
    `check_same_thread=False` because batches may run in a worker thread, one at a time.
    """
    if location.kind == "memory":
        target = ":memory:"
    elif location.kind == "sqlite" and location.directory is not None:
        location.directory.mkdir(parents=True, exist_ok=True)
        target = str(location.directory / f"{service}.sqlite3")
    else:
        raise StoreConfigError(f"{location.kind} is not a SQLite location")
    conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=10000")
    # Erased personal data is overwritten on disk, not left in free pages of the file.
    conn.execute("PRAGMA secure_delete=ON")
    return conn


def open_mongo(
    location: StoreLocation, default_database: str = "crm", **client_options: Any
) -> tuple[AsyncMongoClient[dict[str, Any]], AsyncDatabase[dict[str, Any]]]:
    """A PyMongo async client and the database named in the URL (or the default).

    Nothing connects until the first operation; `ping_mongo` checks the connection at start-up.
    """
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        location.url, tz_aware=True, **client_options
    )
    name = urlsplit(location.url).path.lstrip("/") or default_database
    return client, client[name]


async def ping_mongo(database: AsyncDatabase[dict[str, Any]]) -> None:
    """Fail fast with a clear error when MongoDB is unreachable or the credentials are wrong."""
    await database.command("ping")
