"""The few errors services and the retry policy know of; adapters translate driver errors into them.

Services and `shared.kafka`'s retry policy never import a driver (pymongo, sqlite3): each
store adapter turns the driver's exceptions into these, as hexkit's `translate_pymongo_errors`
does, so whether a failure is worth retrying is decided on our own types.
"""

from __future__ import annotations


class StoreError(Exception):
    """A store operation failed for a reason of the store, not of the data."""


class Unavailable(StoreError):
    """The store cannot be reached or is busy right now (connection lost, timeout, locked):
    the same operation is expected to succeed later."""


class Conflict(StoreError):
    """A write met a concurrent change (another version, a duplicate key): re-read and retry."""


class Rejected(Exception):
    """An input that cannot be processed: `reason` is a stable code, `detail` explains it.

    Raised by a decoder at the edge or returned by a service for one event; the edge
    dead-letters the record with this reason (and counts `dead_lettered_<reason>`). `field` is
    the path of the failing field (`birth_date`, `lines.0.quantity`), never its value.
    """

    def __init__(self, reason: str, detail: str, *, field: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.field = field
