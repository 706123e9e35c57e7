"""Where services keep their state, chosen by `CRM_STORE_URL`.

- `mongodb://…` / `mongodb+srv://…`: MongoDB through PyMongo's async API (production).
- `sqlite:///DIR`: one SQLite file per service in DIR, WAL mode (embedded default; survives kill -9).
- `memory://`: SQLite in memory, gone on exit (tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

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

    @property
    def database(self) -> str | None:
        """The database a MongoDB URL names in its path, if any."""
        return urlsplit(self.url).path.lstrip("/") or None
