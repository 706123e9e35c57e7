"""The data keys' durable copy on `crm.data-keys`, and the recovery of a vault from it.

The key vault is backed up with the stores, but a data key is random: one created after the
last backup dies with the stores, and the personal fields it sealed on `crm.events` would stay
unreadable after a restore. So ingest publishes every key it seals with on the compacted
`crm.data-keys` (keyed by customer id), in the batch that publishes the sealed events, before
their offsets are committed, and a tombstone when an erasure destroys the key.

- **Wrapped.** A record holds the key encrypted with AES-256-GCM under a key-encryption key
  derived (HKDF-SHA-256) from `CRM_KEY_WRAPPING_KEY`, the customer id and the key id as
  associated data: a wrapped key moved to another customer or relabelled does not open. The
  record names the wrapping key by a fingerprint (`wrapping_key_id`), never the key itself.
  Reading the topic without the wrapping key gives nothing; the wrapping key without the topic
  gives nothing either. It is one more key to escrow (docs/operate.md, key custody).
- **Crypto-shredding holds.** An erasure destroys the key in the vault and publishes the
  tombstone in the same batch; compaction drops the wrapped key within the topic's bound
  (`shared.topics.DATA_KEYS_CONFIGS`: about 25 h), the tombstone a day later.
- **Recovery** (`recover_keys`, after a restore put the stores back and re-applied the
  erasures since the backup, before any service starts): reads the whole topic, keeps each
  customer's latest record, and puts back into the vault every key it lacks, unless the
  record is a tombstone, the customer has a key already (never replaced), or the vault records
  an erasure at or after the key's creation. The record that does not unwrap (another wrapping
  key, altered bytes) is counted, never restored. `recover_vault` opens the store's vault and
  recovers it; `python -m shared.vault_recovery` does so from the environment (a MongoDB
  point-in-time restore, run with ingest's Secret).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr, ValidationError

from shared.edge import Outgoing
from shared.events import CONSUMER_EXTRA, DataKeyWrapped
from shared.kafka import client_options, require_bootstrap
from shared.keys import KEY_WRAPPING_KEY, WeakSecret, require_strong_secrets
from shared.logging import configure_logging, get_logger
from shared.settings import KafkaSettings, Settings
from shared.topics import DATA_KEYS
from shared.vault import KEY_BYTES, NONCE_BYTES, DataKey, KeyVault, Unreadable, open_vault

log = get_logger(__name__)

_KEK_INFO: Final = b"crm-stream data-key wrapping v1"
_FINGERPRINT_INFO: Final = b"crm-stream data-key wrapping fingerprint v1"
READ_TIMEOUT_S: Final = 120.0
"""How long reading the whole topic may take before the recovery gives up (raises)."""
CHUNK: Final = 5_000
"""Customers looked up in the vault per read."""


def _derive(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=SHA256(), length=KEY_BYTES, salt=None, info=info).derive(secret)


def _aad(customer_id: str, kid: str) -> bytes:
    return f"{customer_id}\x00{kid}".encode()


class KeyWrapper:
    """Wraps and unwraps data keys with the key-encryption key of one `CRM_KEY_WRAPPING_KEY`."""

    def __init__(self, secret: SecretStr | str | bytes) -> None:
        if isinstance(secret, SecretStr):
            secret = secret.get_secret_value()
        raw = secret.encode() if isinstance(secret, str) else secret
        if not raw:
            raise ValueError("the key wrapping key is empty")
        self._aead = AESGCM(_derive(raw, _KEK_INFO))
        self.key_id = _derive(raw, _FINGERPRINT_INFO)[:8].hex()

    def __repr__(self) -> str:  # never the key itself
        return f"KeyWrapper(key_id={self.key_id!r})"

    @classmethod
    def of(cls, settings: Settings) -> KeyWrapper:
        return cls(settings.privacy.key_wrapping_key)

    def wrap(self, key: DataKey) -> DataKeyWrapped:
        """The record of a data key (which must come from the vault: it has a creation time)."""
        if key.created_at is None:
            raise ValueError("a data key without its creation time is not from the vault")
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, key.key, _aad(key.customer_id, key.kid))
        return DataKeyWrapped(
            customer_id=key.customer_id,
            kid=key.kid,
            created_at=key.created_at.astimezone(dt.UTC),
            wrapping_key_id=self.key_id,
            wrapped=base64.b64encode(nonce + sealed).decode(),
        )

    def unwrap(self, record: DataKeyWrapped) -> DataKey:
        """The data key a record holds (`Unreadable` under another wrapping key, or altered)."""
        if record.wrapping_key_id != self.key_id:
            raise Unreadable("wrapped with another key wrapping key")
        try:
            raw = base64.b64decode(record.wrapped, validate=True)
            key = self._aead.decrypt(
                raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(record.customer_id, record.kid)
            )
        except (ValueError, InvalidTag) as exc:
            raise Unreadable("the wrapped key does not open") from exc
        if len(key) != KEY_BYTES:
            raise Unreadable("the wrapped key is not a data key")
        return DataKey(record.customer_id, record.kid, key, record.created_at)


def key_message(wrapper: KeyWrapper, key: DataKey) -> Outgoing:
    """The `crm.data-keys` message of a customer's current key."""
    return (DATA_KEYS, key.customer_id.encode(), wrapper.wrap(key).model_dump_json().encode())


def key_tombstone(customer_id: str) -> Outgoing:
    """The `crm.data-keys` tombstone of a customer whose keys an erasure destroyed."""
    return (DATA_KEYS, customer_id.encode(), None)


class PublishedKeys:
    """The key ids this process has seen on Kafka (published and acknowledged), so that a key
    goes out once per process rather than with every batch that seals with it. Bounded: a key
    forgotten is published again, which compaction absorbs."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._kids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, kid: object) -> bool:
        return kid in self._kids

    def add(self, kids: Iterable[str]) -> None:
        for kid in kids:
            self._kids[kid] = None
            self._kids.move_to_end(kid)
        while len(self._kids) > self._capacity:
            self._kids.popitem(last=False)


# ---------------------------------------------------------------- recovery


class UnknownWrappingKey(RuntimeError):
    """Records on the topic were wrapped with a key the recovery was not given: run it with
    the right `CRM_KEY_WRAPPING_KEY` (and the previous ones after a rotation), or accept that
    their customers' sealed fields stay unreadable."""

    def __init__(self, counts: Mapping[str, int]) -> None:
        self.counts = dict(counts)
        listed = ", ".join(f"{kid} ({n} keys)" for kid, n in sorted(self.counts.items()))
        super().__init__(
            f"{DATA_KEYS} holds keys wrapped with a wrapping key not given: {listed}; set "
            "CRM_KEY_WRAPPING_KEY to the key they were written with (the escrowed copy), pass "
            "earlier ones in CRM_PREVIOUS_KEY_WRAPPING_KEYS, or accept the loss"
        )


@dataclass(slots=True)
class KeysRecovered:
    """What `recover_keys` did, in counts (no customer id: these go to logs and reports)."""

    customers: int = 0
    """Customers with a record on the topic (their latest)."""
    restored: int = 0
    """Keys put back into the vault."""
    present: int = 0
    """The vault had the customer's key already (the same or a newer one): left as it is."""
    tombstoned: int = 0
    """The latest record is an erasure's tombstone: nothing to put back."""
    erased: int = 0
    """The vault records an erasure at or after the key's creation: not put back."""
    unreadable: int = 0
    """The record does not unwrap (another wrapping key, altered) or is not a key record."""
    wrapping_keys: set[str] = field(default_factory=set)
    """Fingerprints of the wrapping keys of the records that did not unwrap."""

    def merge(self, other: KeysRecovered) -> None:
        self.customers += other.customers
        self.restored += other.restored
        self.present += other.present
        self.tombstoned += other.tombstoned
        self.erased += other.erased
        self.unreadable += other.unreadable
        self.wrapping_keys |= other.wrapping_keys


def decode_record(value: bytes | None) -> DataKeyWrapped | None:
    """A `crm.data-keys` value: the record, None for a tombstone (`ValidationError` when it is
    not a record)."""
    if value is None:
        return None
    return DataKeyWrapped.model_validate_json(value, extra=CONSUMER_EXTRA)


def foreign_wrapping_keys(
    latest: Mapping[str, bytes | None], wrappers: Sequence[KeyWrapper]
) -> dict[str, int]:
    """Fingerprint -> records of the latest ones wrapped with none of `wrappers`."""
    known = {wrapper.key_id for wrapper in wrappers}
    foreign: dict[str, int] = {}
    for value in latest.values():
        try:
            record = decode_record(value)
        except ValidationError:
            continue
        if record is not None and record.wrapping_key_id not in known:
            foreign[record.wrapping_key_id] = foreign.get(record.wrapping_key_id, 0) + 1
    return foreign


def plan_recovery(
    latest: Mapping[str, bytes | None],
    wrappers: Sequence[KeyWrapper],
    *,
    current: Mapping[str, DataKey],
    erased: Mapping[str, dt.datetime],
) -> tuple[list[DataKey], KeysRecovered]:
    """The keys to put back, from each customer's latest value on the topic (`latest`), the
    vault's current keys and its erasures; pure, so each rule is tested on its own."""
    report = KeysRecovered(customers=len(latest))
    by_id = {wrapper.key_id: wrapper for wrapper in wrappers}
    keys: list[DataKey] = []
    for customer_id, value in latest.items():
        try:
            record = decode_record(value)
        except ValidationError:
            report.unreadable += 1
            continue
        if record is None:
            report.tombstoned += 1
            continue
        if customer_id in current:
            report.present += 1
            continue
        at = erased.get(customer_id)
        if at is not None and at >= record.created_at:
            report.erased += 1
            continue
        wrapper = by_id.get(record.wrapping_key_id)
        try:
            if wrapper is None or record.customer_id != customer_id:
                raise Unreadable("no wrapping key for this record")
            keys.append(wrapper.unwrap(record))
        except Unreadable:
            report.unreadable += 1
            report.wrapping_keys.add(record.wrapping_key_id)
    return keys, report


async def read_latest(
    settings: KafkaSettings, *, topic: str = DATA_KEYS, within: float = READ_TIMEOUT_S
) -> dict[str, bytes | None]:
    """Each key's latest value on a compacted topic (None: a tombstone), read from its
    beginning to the end it had when the read began, outside any consumer group."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=require_bootstrap(settings),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **client_options(settings),
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        found = consumer.partitions_for_topic(topic)
        if not found:
            log.warning("data_keys_topic_missing", topic=topic)
            return {}
        partitions = [TopicPartition(topic, p) for p in sorted(found)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        latest: dict[str, bytes | None] = {}
        deadline = time.monotonic() + within

        async def behind() -> list[TopicPartition]:
            return [tp for tp in partitions if await consumer.position(tp) < ends[tp]]

        pending = await behind()
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic} was not read to its end within {within:.0f} s")
            batch = await consumer.getmany(*pending, timeout_ms=500)
            for tp in pending:  # per partition in offset order: the last value wins
                for record in batch.get(tp, ()):
                    if record.key is not None:
                        latest[record.key.decode()] = record.value
            pending = await behind()
        return latest
    finally:
        await consumer.stop()


async def recover_keys(
    settings: Settings,
    vault: KeyVault,
    *,
    previous_wrapping_keys: Sequence[SecretStr | str] = (),
    accept_unreadable: bool = False,
    latest: Mapping[str, bytes | None] | None = None,
) -> KeysRecovered:
    """Put back into `vault` the data keys it lacks from `crm.data-keys` (see the module).

    Run it once the restored stores are in place and the erasures since the backup have been
    re-applied to the vault, before any service starts. `previous_wrapping_keys` (and
    `CRM_PREVIOUS_KEY_WRAPPING_KEYS`) unwrap records written before a rotation of
    `CRM_KEY_WRAPPING_KEY`. A record wrapped with none
    of them raises `UnknownWrappingKey` before anything is written (a wrong or missing key
    would otherwise lose those customers' personal data quietly), unless `accept_unreadable`.
    `latest` (tests, tools that have read the topic) replaces reading it. Idempotent: a
    second run restores nothing."""
    started = time.monotonic()
    previous = [*settings.privacy.previous_wrapping_keys, *previous_wrapping_keys]
    wrappers = [KeyWrapper.of(settings), *(KeyWrapper(k) for k in previous)]
    if latest is None:
        latest = await read_latest(settings.kafka)
    foreign = foreign_wrapping_keys(latest, wrappers)
    if foreign and not accept_unreadable:
        raise UnknownWrappingKey(foreign)
    report = KeysRecovered()
    ids = list(latest)
    for start in range(0, len(ids), CHUNK):  # bounded vault reads, whatever the customers
        chunk = {cid: latest[cid] for cid in ids[start : start + CHUNK]}
        live = [cid for cid, value in chunk.items() if value is not None]
        current = await vault.current(live) if live else {}
        erased = await vault.erased_at(live) if live else {}
        keys, part = plan_recovery(chunk, wrappers, current=current, erased=erased)
        part.restored = await vault.restore(keys) if keys else 0
        part.present += len(keys) - part.restored  # put back meanwhile by someone else
        report.merge(part)
    log.info(
        "data_keys_recovered",
        customers=report.customers,
        restored=report.restored,
        present=report.present,
        tombstoned=report.tombstoned,
        erased=report.erased,
        unreadable=report.unreadable,
        seconds=round(time.monotonic() - started, 2),
    )
    if report.unreadable:
        log.warning(
            "data_keys_unreadable",
            records=report.unreadable,
            wrapping_keys=sorted(report.wrapping_keys),
            hint="pass the wrapping key they were written with as a previous wrapping key",
        )
    return report


async def recover_vault(
    settings: Settings,
    *,
    previous_wrapping_keys: Sequence[SecretStr | str] = (),
    accept_unreadable: bool = False,
) -> KeysRecovered:
    """`recover_keys` on the key vault of `CRM_STORE_URL` (opened and closed here): what a
    restore calls once the stores are back and the erasures since the backup re-applied."""
    async with open_vault(settings.store) as vault:
        return await recover_keys(
            settings,
            vault,
            previous_wrapping_keys=previous_wrapping_keys,
            accept_unreadable=accept_unreadable,
        )


def main(argv: Sequence[str]) -> int:
    """`python -m shared.vault_recovery [--accept-unreadable]`: recover the key vault of the
    environment's store (MongoDB after a point-in-time restore), with ingest's settings."""
    settings = Settings()
    configure_logging("vault-recovery", settings.log)
    try:
        require_strong_secrets([KEY_WRAPPING_KEY], settings)
        report = asyncio.run(
            recover_vault(settings, accept_unreadable="--accept-unreadable" in argv[1:])
        )
    except (WeakSecret, UnknownWrappingKey) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"data keys: {report.restored} restored, {report.present} already there, "
        f"{report.tombstoned} erased (tombstone), {report.erased} erased (vault), "
        f"{report.unreadable} unreadable, of {report.customers} customers on {DATA_KEYS}"
    )
    return 0


__all__ = [
    "KeyWrapper",
    "KeysRecovered",
    "PublishedKeys",
    "UnknownWrappingKey",
    "decode_record",
    "foreign_wrapping_keys",
    "key_message",
    "key_tombstone",
    "plan_recovery",
    "read_latest",
    "recover_keys",
    "recover_vault",
]

if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
