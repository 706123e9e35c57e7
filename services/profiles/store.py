"""Where profiles are kept: the port the service and the look-up use, and how it opens.

One document per customer (a profile, an alias left by a card link, or an erasure tombstone),
the customer's coupons as announced on `crm.offers`, one row per (segment, customer) with the
time the customer entered it (indexed by segment, so a segment's count is one query), the
segment definitions read from `crm.segment-definitions`, the latest clock day evaluated, and
the customers' timeline entries (`services.profiles.timeline`), deleted with the customer.
Two adapters hold one contract (tests/integration/test_profiles_store.py): `store_sqlite.py`
and `store_mongo.py`.

Every profile write is guarded by the document's `version`: a document saved with version `n`
must be stored with version `n - 1` (or be new when `n == 1`). Another consumer that changed
the document meanwhile (a merge from a profile on another partition) makes the save raise
`shared.errors.Conflict`, and the batch is retried on fresh documents.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Protocol

import orjson

from services.profiles.domain import Coupon, CustomerProfile
from services.profiles.timeline import Position, TimelineEntry
from shared.campaigns import SegmentDefined
from shared.settings import StoreSettings
from shared.storage import open_store

Kind = Literal["profile", "alias", "erased"]

MembershipWrites = Mapping[tuple[str, str], dt.datetime | None]
"""(segment, customer id) -> the time the customer entered the segment (a row to write), or
None (the customer left it: the row to delete)."""


class ProfilesRepository(Protocol):
    """The profiles' store, batch-oriented."""

    async def get_many(self, customer_ids: Collection[str]) -> dict[str, CustomerProfile]:
        """The stored documents of these customers (profiles, aliases, tombstones)."""
        ...

    async def get_coupons(self, offer_ids: Collection[str]) -> dict[str, Coupon]:
        """The stored coupons with these offer ids."""
        ...

    async def save_many(
        self,
        profiles: Sequence[CustomerProfile],
        coupons: Sequence[Coupon] = (),
        *,
        memberships: MembershipWrites | None = None,
        clock_day: dt.date | None = None,
    ) -> None:
        """Write a batch's documents (each `version` one above the stored one), coupons,
        segment memberships and the latest clock day evaluated (kept if later than this one).
        The segment rows of a document saved erased or as an alias are deleted. SQLite writes
        all of it in one transaction; MongoDB writes the memberships before the documents, so
        a batch re-read after a crash in between finds its events not applied yet."""
        ...

    async def get(self, customer_id: str) -> CustomerProfile | None:
        """One stored document, as is (an alias is not followed)."""
        ...

    async def find_by_card(self, card_id: str) -> CustomerProfile | None:
        """The live profile a card feeds."""
        ...

    async def coupons_of(self, customer_id: str) -> list[Coupon]:
        """The customer's coupons, by first valid day then offer id."""
        ...

    async def count(self) -> int:
        """Live profiles (neither aliases nor erased)."""
        ...

    async def export(self, customer_id: str) -> dict[str, Any]:
        """Everything stored of a customer, JSON-able (empty `document` when unknown)."""
        ...

    async def live_profiles(self, *, after: str | None, limit: int) -> list[CustomerProfile]:
        """A page of live profiles (neither aliases nor erased) by customer id, after `after`."""
        ...

    async def memberships_of(
        self, customer_ids: Collection[str]
    ) -> dict[str, dict[str, dt.datetime]]:
        """Per customer (those in a segment only), segment name -> time entered."""
        ...

    async def segment_counts(self, names: Collection[str]) -> dict[str, int]:
        """Members per segment (0 for a segment without any)."""
        ...

    async def segment_members(self, segment: str, *, after: str | None, limit: int) -> list[str]:
        """A page of a segment's members (customer ids, in order), after `after`."""
        ...

    async def save_definitions(self, records: Sequence[SegmentDefined]) -> None:
        """Keep these segment definitions (each replaces the stored one of its name)."""
        ...

    async def definitions(self) -> list[SegmentDefined]:
        """The segment definitions kept, by name."""
        ...

    async def last_clock_day(self) -> dt.date | None:
        """The latest clock day whose evaluation was saved."""
        ...

    async def save_timeline(
        self, entries: Sequence[TimelineEntry], *, erased: Collection[str] = ()
    ) -> None:
        """Delete every timeline entry of the `erased` customers, then write `entries` (each
        replaces the stored one of its customer and entry id); entries of a customer stored
        as erased are not kept."""
        ...

    async def timeline(
        self,
        customer_ids: Collection[str],
        *,
        before: Position | None,
        limit: int,
        types: Collection[str] | None = None,
    ) -> list[TimelineEntry]:
        """A page of these customers' entries, newest first by (time, entry id), older than
        `before`; only of `types` when given."""
        ...

    async def close(self) -> None: ...


def open_repository(store: StoreSettings) -> AbstractAsyncContextManager[ProfilesRepository]:
    """The repository `CRM_STORE_URL` names, closed when the context ends."""
    from services.profiles.store_mongo import MongoProfilesRepository
    from services.profiles.store_sqlite import SqliteProfilesRepository

    return open_store(
        store, sqlite=SqliteProfilesRepository.open, mongo=MongoProfilesRepository.open
    )


def kind_of(profile: CustomerProfile) -> Kind:
    if profile.merged_into is not None:
        return "alias"
    if profile.erased:
        return "erased"
    return "profile"


def text(value: object, what: str) -> str:
    """Look-up values must be plain strings: a dict such as `{"$gt": ""}` is refused."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string")
    return value


def sorted_coupons(coupons: Collection[Coupon]) -> list[Coupon]:
    return sorted(coupons, key=lambda c: (c.valid_from, c.offer_id))


def export_of(
    customer_id: str,
    profile: CustomerProfile | None,
    aliases: list[str],
    coupons: list[Coupon],
    segments: Mapping[str, dt.datetime] | None = None,
) -> dict[str, Any]:
    document = profile.model_dump(mode="json") if profile is not None else None
    export: dict[str, Any] = {
        "customer_id": customer_id,
        "document": document,
        "aliases": aliases,
        "coupons": [c.model_dump(mode="json") for c in coupons],
        "segments": {name: at.isoformat() for name, at in sorted((segments or {}).items())},
    }
    # Round-trip through JSON so the caller gets plain JSON types only.
    result: dict[str, Any] = orjson.loads(orjson.dumps(export))
    return result


EXPORT_TIMELINE = 100_000
"""Timeline entries a right-of-access export gives at most (newest first)."""


async def customer_export(repository: ProfilesRepository, customer_id: str) -> dict[str, Any]:
    """What profiles keeps of one customer (right of access): the profile (or its tombstone),
    its aliases, coupons and segments, and its journey, newest first (the agents' notes
    included, the merged customers' entries too)."""
    export = await repository.export(customer_id)
    journey = await repository.timeline(
        [customer_id, *export.get("aliases", [])], before=None, limit=EXPORT_TIMELINE
    )
    return {**export, "timeline": [e.model_dump(mode="json") for e in journey]}
