"""Crypto-shredding: the personal fields that travel on topics, sealed with a per-customer key.

Kafka topics cannot be edited, and `crm.events` is kept for ever (replays start from it). So
the personal fields of what travels on them (e-mail address, first name and birth date on
`crm.events` and `crm.contacts`, an interaction's free-text `details`) are encrypted with a
data key of the customer's own, and erasing the customer destroys that key: a replay, a
restore of the topics or a copy of a retained segment then finds only unreadable bytes.

- **Keys.** One current data key per customer: 256 random bits with an id (`kid`), kept in
  the key vault, a small store of its own reached like the others through the storage kit
  (SQLite: `vault.sqlite3` in the store folder; MongoDB: the `vault_keys` and
  `vault_erasures` collections; `memory://`: in process). Ingest creates a customer's key on
  their first personal data and destroys it when it processes their erasure (and the keys of
  every customer merged into them); profiles and the notifier only read keys. A customer who
  signs up again after an erasure gets a new key with a new id, so the old ciphertexts stay
  unreadable. The port is `KeyVault`; its adapters are `shared.vault_sqlite` and
  `shared.vault_mongo`.
- **Durable copy.** The vault is backed up with the stores, but a key created after the last
  backup would die with them. So ingest also publishes each key it seals with, wrapped with a
  key-encryption key (`CRM_KEY_WRAPPING_KEY`), on the compacted `crm.data-keys`, in the same
  batch as the events it seals (before their offsets are committed), and a tombstone when it
  destroys it; compaction removes a destroyed key from Kafka within a stated bound. A restore
  puts the keys it lacks back with `shared.vault_recovery.recover_keys`.
- **On the wire** a sealed field holds an envelope instead of its value:
  `{"enc": "aes256gcm", "kid": "<key id>", "ct": "<base64 of nonce, ciphertext and tag>"}`,
  the plaintext being the value's JSON. AES-256-GCM (the `cryptography` package) with the
  customer id and the field name as associated data: a ciphertext moved to another customer
  or another field does not open.
- **Reading.** A decoder sets the envelopes aside (`Pending`); the service opens them at the
  edge of its handler, one vault read per batch (`Opener`). A field whose key is gone (the
  customer was erased) is treated as absent and counted (`undecryptable`), never an error and
  never a dead letter. A record written before the vault (plain values) reads as it is.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import os
import secrets
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, TypeAdapter, ValidationError

from shared.edge import Source, describe, failing_field
from shared.errors import Rejected
from shared.events import CONSUMER_EXTRA, ENVELOPE_ALGORITHM, SEALED_FIELDS
from shared.logging import get_logger
from shared.settings import StoreSettings
from shared.storage import StoreLocation
from shared.storage.sqlite import connect

log = get_logger(__name__)

ALGORITHM: Final = ENVELOPE_ALGORITHM
NONCE_BYTES: Final = 12
KEY_BYTES: Final = 32

EV = TypeVar("EV", bound=BaseModel)


class Unreadable(Exception):
    """A sealed value that does not open: its key is gone, or it was moved or altered."""


@dataclass(frozen=True, slots=True)
class DataKey:
    """A customer's data key."""

    customer_id: str
    kid: str
    key: bytes = b""
    created_at: dt.datetime | None = dataclasses.field(default=None, compare=False)
    """When the vault created it (None for a key not read from a vault)."""

    def __repr__(self) -> str:  # never the key itself
        return f"DataKey(customer_id={self.customer_id!r}, kid={self.kid!r})"

    @classmethod
    def new(cls, customer_id: str) -> DataKey:
        return cls(customer_id, secrets.token_hex(16), AESGCM.generate_key(bit_length=256))


def _aad(customer_id: str, field: str) -> bytes:
    return f"{customer_id}\x00{field}".encode()


def seal_value(value: Any, key: DataKey, *, field: str) -> dict[str, str]:
    """The envelope of one field's value."""
    nonce = os.urandom(NONCE_BYTES)
    plain = orjson.dumps(value)
    sealed = AESGCM(key.key).encrypt(nonce, plain, _aad(key.customer_id, field))
    return {"enc": ALGORITHM, "kid": key.kid, "ct": base64.b64encode(nonce + sealed).decode()}


def open_value(envelope: Mapping[str, Any], key: DataKey, *, field: str) -> Any:
    """The value an envelope holds (`Unreadable` when it does not open with this key)."""
    try:
        raw = base64.b64decode(str(envelope["ct"]), validate=True)
        plain = AESGCM(key.key).decrypt(
            raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(key.customer_id, field)
        )
        return orjson.loads(plain)
    except (KeyError, ValueError, InvalidTag, orjson.JSONDecodeError) as exc:
        raise Unreadable(field) from exc


def is_envelope(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and value.get("enc") == ALGORITHM
        and isinstance(value.get("kid"), str)
        and isinstance(value.get("ct"), str)
    )


def _empty(field: str) -> Any:
    return {} if field == "details" else None


def has_personal_data(event: BaseModel) -> bool:
    """Whether an event carries a value in one of its sealed fields."""
    fields = SEALED_FIELDS.get(str(getattr(event, "type", "")), ())
    return any(getattr(event, f) not in (None, {}) for f in fields)


def without_personal_data(event: EV) -> EV:
    """The event with its sealed fields emptied (what ingest publishes of an event its
    customer's erasure overtakes)."""
    fields = SEALED_FIELDS.get(str(getattr(event, "type", "")), ())
    return event.model_copy(update={f: _empty(f) for f in fields})


def seal(event: BaseModel, key: DataKey | None) -> bytes:
    """An event's JSON with its personal fields sealed with `key`; an event without personal
    data as it is. `key` must be the key of the event's customer."""
    fields = SEALED_FIELDS.get(str(getattr(event, "type", "")), ())
    if not fields or not has_personal_data(event):
        return event.model_dump_json().encode()
    if key is None:
        raise Unreadable("no data key to seal personal fields with")
    document = event.model_dump(mode="json")
    for field in fields:
        if document.get(field) not in (None, {}):
            document[field] = seal_value(document[field], key, field=field)
    return orjson.dumps(document)


# ---------------------------------------------------------------- decoding


M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class Pending(Generic[M]):
    """An event whose personal fields are still sealed: `event` without them, `sealed` the
    envelopes by field. `Opener.open` makes it the whole event."""

    event: M
    sealed: Mapping[str, Mapping[str, Any]]


def _set_aside(document: dict[str, Any]) -> dict[str, Mapping[str, Any]]:
    fields = SEALED_FIELDS.get(str(document.get("type")), ())
    return {f: document.pop(f) for f in fields if is_envelope(document.get(f))}


def sealed_decoder(
    model: type[M] | TypeAdapter[M], *, invalid: str = "invalid_event", blind: bool = False
) -> Callable[[Source], M | Pending[M]]:
    """A decoder of records that may carry sealed fields: the event, or a `Pending` event when
    it has envelopes. `blind` drops the envelopes instead (a reader that needs no personal
    data, and gets no key: reports)."""
    adapter: TypeAdapter[M] = model if isinstance(model, TypeAdapter) else TypeAdapter(model)

    def decode(source: Source) -> M | Pending[M]:
        value = source.value
        if not value:
            raise Rejected("empty_message", "the message has no value")
        if b'"enc"' not in value:  # nothing sealed (most events: purchases)
            try:
                return adapter.validate_json(value, extra=CONSUMER_EXTRA)
            except ValidationError as exc:
                errors = exc.errors(include_url=False, include_input=False)
                if errors and errors[0]["type"] == "json_invalid":
                    raise Rejected("invalid_json", describe(exc)) from None
                raise Rejected(invalid, describe(exc), field=failing_field(exc)) from None
        try:
            document = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise Rejected("invalid_json", "the message is not JSON") from None
        sealed = _set_aside(document) if isinstance(document, dict) else {}
        try:
            event = adapter.validate_python(document, extra=CONSUMER_EXTRA)
        except ValidationError as exc:
            raise Rejected(invalid, describe(exc), field=failing_field(exc)) from None
        if not sealed or blind:
            return event
        return Pending(event, sealed)

    return decode


class KeyReader(Protocol):
    """What a reader of sealed fields needs of the vault (profiles and the notifier)."""

    async def keys(self, kids: Collection[str]) -> dict[str, DataKey]: ...

    async def current(self, customer_ids: Collection[str]) -> dict[str, DataKey]: ...


class Opener:
    """Opens the sealed fields of a batch's pending events with one vault read."""

    def __init__(self, vault: KeyReader, stats: Counter[str]) -> None:
        self.vault = vault
        self.stats = stats

    async def open(self, items: Sequence[Pending[M]]) -> list[M]:
        """The events whole, in order; a field that does not open is left absent."""
        if not items:
            return []
        kids = {envelope["kid"] for item in items for envelope in item.sealed.values()}
        keys = await self.vault.keys(kids)
        opened: list[M] = []
        for item in items:
            event: Any = item.event
            values: dict[str, Any] = {}
            for field, envelope in item.sealed.items():
                key = keys.get(str(envelope["kid"]))
                try:
                    if key is None or key.customer_id != event.customer_id:
                        raise Unreadable(field)
                    values[field] = open_value(envelope, key, field=field)
                except Unreadable:
                    self.stats["undecryptable"] += 1
            if values:
                try:
                    event = type(event).model_validate({**event.model_dump(), **values})
                except ValidationError:
                    self.stats["undecryptable"] += 1
            opened.append(event)
        return opened


# ---------------------------------------------------------------- the vault


class NoKeys:
    """A reader without a vault: nothing sealed opens, nothing personal is sealed."""

    async def keys(self, kids: Collection[str]) -> dict[str, DataKey]:
        return {}

    async def current(self, customer_ids: Collection[str]) -> dict[str, DataKey]:
        return {}


class KeyVault(KeyReader, Protocol):
    """The customers' data keys. Ingest writes; the others only read (`keys`)."""

    async def keys(self, kids: Collection[str]) -> dict[str, DataKey]:
        """The keys with these ids that still exist (key id -> key)."""
        ...

    async def current(self, customer_ids: Collection[str]) -> dict[str, DataKey]:
        """Each customer's current key, when they have one (customer id -> key)."""
        ...

    async def create(self, customer_ids: Collection[str], at: dt.datetime) -> dict[str, DataKey]:
        """Each customer's current key, created when they have none: the same key again under
        redelivery or from another instance, until the customer is erased."""
        ...

    async def erase(self, erasures: Mapping[str, dt.datetime]) -> int:
        """Destroy every key of these customers and remember when each was erased (the latest
        time wins); returns the keys destroyed."""
        ...

    async def erased_at(self, customer_ids: Collection[str]) -> dict[str, dt.datetime]:
        """When these customers were last erased, for those who were."""
        ...

    async def restore(self, keys: Collection[DataKey]) -> int:
        """Put back keys the vault lost (a restore, `shared.vault_recovery`): each is added,
        with its id and creation time, only when its customer has no current key; returns
        the keys added. Whether the customer was erased since is the caller's to decide."""
        ...

    async def close(self) -> None: ...


# ---------------------------------------------------------------- opening


@dataclass(slots=True)
class _Shared:
    vault: KeyVault
    users: int = 0


_OPEN: dict[tuple[str, str], _Shared] = {}
"""The vaults open in this process, by store: the services of one process (`crm run all`,
the demo) share one, so that `memory://` is one vault too; the last to let go closes it."""


def _where(store: StoreSettings) -> tuple[str, str]:
    return (store.store_url or "", store.mongo_database)


async def _connect(store: StoreSettings) -> KeyVault:
    from shared.vault_mongo import MongoVault
    from shared.vault_sqlite import SqliteVault

    location = StoreLocation.parse(store.store_url)
    if location.kind == "mongodb":
        return await MongoVault.open(location, store.mongo_database)
    return await SqliteVault.open(location)


@contextlib.asynccontextmanager
async def open_vault(store: StoreSettings) -> AsyncIterator[KeyVault]:
    """The key vault of `CRM_STORE_URL`, shared by the services of this process while any of
    them has it open, closed with the last."""
    where = _where(store)
    shared = _OPEN.get(where)
    if shared is None:
        vault = await _connect(store)
        shared = _OPEN.get(where)
        if shared is None:
            shared = _OPEN[where] = _Shared(vault)
        else:  # another service opened it meanwhile
            await vault.close()
    shared.users += 1
    try:
        yield shared.vault
    finally:
        shared.users -= 1
        if shared.users == 0:
            if _OPEN.get(where) is shared:
                del _OPEN[where]
            await shared.vault.close()


_PRIVATE: dict[int, tuple[weakref.ref[StoreSettings], KeyVault]] = {}
"""Vaults made for a store setting no service opened (see `vault_for`), by that object."""


def vault_for(store: StoreSettings) -> KeyVault:
    """The vault this process has open for `store`. Without one (tests and tools that pass
    their own repository), the vault of this very settings object, made at first use: one
    in memory for `memory://` or no store at all, `vault.sqlite3` in the folder for
    `sqlite://` (MongoDB needs `open_vault`). Services built on one settings object share it."""
    shared = _OPEN.get(_where(store))
    if shared is not None:
        return shared.vault
    made = _PRIVATE.get(id(store))
    if made is not None and made[0]() is store:
        return made[1]
    from shared.vault_sqlite import SqliteVault

    location = StoreLocation.parse(store.store_url or "memory://")
    if location.kind == "mongodb":
        raise RuntimeError("open the MongoDB key vault with open_vault first")
    vault = SqliteVault(connect(location, SqliteVault.SERVICE))
    key = id(store)
    _PRIVATE[key] = (weakref.ref(store, lambda _: _PRIVATE.pop(key, None)), vault)
    return vault


R = TypeVar("R")


def with_vault(
    opener: Callable[[Any], contextlib.AbstractAsyncContextManager[R]],
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[R]]:
    """A service's store opener that also opens the key vault (for `vault_for` in `build`)."""

    @contextlib.asynccontextmanager
    async def open_both(settings: Any) -> AsyncIterator[R]:
        async with open_vault(settings.store), opener(settings) as repository:
            yield repository

    return open_both
