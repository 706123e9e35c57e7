"""Wrapping data keys for `crm.data-keys`, and recovering a vault from the topic's latest records:
what is put back, and what an erasure or a tombstone keeps out."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import AsyncIterator

import pytest

from shared.events import DataKeyWrapped
from shared.settings import PrivacySettings, Settings
from shared.storage import StoreLocation
from shared.topics import DATA_KEYS
from shared.vault import DataKey, Unreadable, open_value, seal_value
from shared.vault_recovery import (
    KeyWrapper,
    UnknownWrappingKey,
    key_message,
    key_tombstone,
    recover_keys,
)
from shared.vault_sqlite import SqliteVault

T0 = dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)
WRAPPING = "a-wrapping-key-of-at-least-32-bytes-for-tests"


def settings(wrapping: str = WRAPPING) -> Settings:
    return Settings(privacy=PrivacySettings(key_wrapping_key=wrapping))


def key_of(customer_id: str, at: dt.datetime = T0) -> DataKey:
    fresh = DataKey.new(customer_id)
    return DataKey(fresh.customer_id, fresh.kid, fresh.key, at)


def record(wrapper: KeyWrapper, key: DataKey) -> bytes:
    topic, message_key, value = key_message(wrapper, key)
    assert (topic, message_key) == (DATA_KEYS, key.customer_id.encode())
    assert value is not None
    return value


@pytest.fixture
async def vault() -> AsyncIterator[SqliteVault]:
    opened = await SqliteVault.open(StoreLocation.parse("memory://"))
    yield opened
    await opened.close()


def test_a_wrapped_key_unwraps_to_the_same_key_and_never_holds_it_in_clear() -> None:
    wrapper = KeyWrapper(WRAPPING)
    key = key_of("c-1")

    value = record(wrapper, key)

    assert key.key not in value
    assert base64.b64encode(key.key) not in value
    assert key.key.hex().encode() not in value
    unwrapped = wrapper.unwrap(DataKeyWrapped.model_validate_json(value))
    assert (unwrapped.kid, unwrapped.key, unwrapped.created_at) == (key.kid, key.key, T0)
    assert unwrapped.customer_id == "c-1"


def test_a_wrapped_key_moved_to_another_customer_or_key_id_does_not_unwrap() -> None:
    wrapper = KeyWrapper(WRAPPING)
    wrapped = wrapper.wrap(key_of("c-1"))

    for moved in (
        wrapped.model_copy(update={"customer_id": "c-2"}),
        wrapped.model_copy(update={"kid": "another-key-id"}),
    ):
        with pytest.raises(Unreadable):
            wrapper.unwrap(moved)


def test_another_wrapping_key_does_not_unwrap_and_has_another_fingerprint() -> None:
    wrapped = KeyWrapper(WRAPPING).wrap(key_of("c-1"))
    other = KeyWrapper("another-wrapping-key-of-at-least-32-bytes")

    assert other.key_id != wrapped.wrapping_key_id
    with pytest.raises(Unreadable):
        other.unwrap(wrapped)
    with pytest.raises(Unreadable):  # even when it claims the other's fingerprint
        other.unwrap(wrapped.model_copy(update={"wrapping_key_id": other.key_id}))


def test_the_tombstone_of_an_erased_customer_has_no_value() -> None:
    assert key_tombstone("c-1") == (DATA_KEYS, b"c-1", None)


async def test_a_key_on_the_topic_is_restored_into_an_empty_vault_and_opens_its_fields(
    vault: SqliteVault,
) -> None:
    key = key_of("c-1")
    envelope = seal_value("ana@example.com", key, field="email")

    report = await recover_keys(
        settings(), vault, latest={"c-1": record(KeyWrapper(WRAPPING), key)}
    )

    assert (report.restored, report.customers) == (1, 1)
    restored = (await vault.keys([key.kid]))[key.kid]
    assert open_value(envelope, restored, field="email") == "ana@example.com"
    assert restored.created_at == T0


async def test_recovery_twice_restores_nothing_the_second_time(vault: SqliteVault) -> None:
    latest = {"c-1": record(KeyWrapper(WRAPPING), key_of("c-1"))}

    await recover_keys(settings(), vault, latest=latest)
    again = await recover_keys(settings(), vault, latest=latest)

    assert (again.restored, again.present) == (0, 1)


async def test_the_key_of_a_customer_the_vault_records_as_erased_is_not_restored(
    vault: SqliteVault,
) -> None:
    await vault.erase({"c-1": T0 + dt.timedelta(hours=1)})
    latest = {"c-1": record(KeyWrapper(WRAPPING), key_of("c-1", T0))}

    report = await recover_keys(settings(), vault, latest=latest)

    assert (report.restored, report.erased) == (0, 1)
    assert await vault.current(["c-1"]) == {}


async def test_a_key_created_after_the_customers_erasure_is_restored(
    vault: SqliteVault,
) -> None:
    """Erased, then signed up again: the new key is theirs, the erasure was of the old one."""
    await vault.erase({"c-1": T0})
    renewed = key_of("c-1", T0 + dt.timedelta(days=1))

    report = await recover_keys(
        settings(), vault, latest={"c-1": record(KeyWrapper(WRAPPING), renewed)}
    )

    assert report.restored == 1
    assert (await vault.current(["c-1"]))["c-1"].kid == renewed.kid


async def test_a_tombstoned_key_is_not_restored(vault: SqliteVault) -> None:
    report = await recover_keys(settings(), vault, latest={"c-1": None})

    assert (report.restored, report.tombstoned) == (0, 1)
    assert await vault.current(["c-1"]) == {}


async def test_the_vaults_own_key_of_a_customer_is_never_replaced(vault: SqliteVault) -> None:
    have = (await vault.create(["c-1"], T0))["c-1"]

    report = await recover_keys(
        settings(), vault, latest={"c-1": record(KeyWrapper(WRAPPING), key_of("c-1"))}
    )

    assert (report.restored, report.present) == (0, 1)
    assert await vault.current(["c-1"]) == {"c-1": have}


async def test_keys_wrapped_with_a_key_not_given_stop_the_recovery_before_any_write(
    vault: SqliteVault,
) -> None:
    old = "the-wrapping-key-before-the-rotation-32-bytes"
    latest = {
        "c-1": record(KeyWrapper(old), key_of("c-1")),
        "c-2": record(KeyWrapper(WRAPPING), key_of("c-2")),
    }

    with pytest.raises(UnknownWrappingKey) as refused:
        await recover_keys(settings(), vault, latest=latest)

    assert refused.value.counts == {KeyWrapper(old).key_id: 1}
    assert old not in str(refused.value)
    assert await vault.current(["c-1", "c-2"]) == {}


async def test_a_previous_wrapping_key_unwraps_the_records_written_before_a_rotation(
    vault: SqliteVault,
) -> None:
    old = "the-wrapping-key-before-the-rotation-32-bytes"
    latest = {
        "c-1": record(KeyWrapper(old), key_of("c-1")),
        "c-2": record(KeyWrapper(WRAPPING), key_of("c-2")),
    }

    report = await recover_keys(settings(), vault, latest=latest, previous_wrapping_keys=[old])

    assert (report.restored, report.unreadable) == (2, 0)


async def test_the_previous_wrapping_keys_setting_unwraps_what_was_written_before_rotations(
    vault: SqliteVault,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = (f"the-wrapping-key-of-rotation-{n}-at-least-32-bytes" for n in (1, 2))
    monkeypatch.setenv("CRM_KEY_WRAPPING_KEY", WRAPPING)
    monkeypatch.setenv("CRM_PREVIOUS_KEY_WRAPPING_KEYS", f"{first}, {second}")
    latest = {
        "c-1": record(KeyWrapper(first), key_of("c-1")),
        "c-2": record(KeyWrapper(second), key_of("c-2")),
        "c-3": record(KeyWrapper(WRAPPING), key_of("c-3")),
    }

    report = await recover_keys(Settings(), vault, latest=latest)

    assert (report.restored, report.unreadable) == (3, 0)


async def test_accepting_the_loss_restores_what_unwraps_and_counts_the_rest(
    vault: SqliteVault,
) -> None:
    latest = {
        "c-1": record(KeyWrapper("the-wrapping-key-before-the-rotation-32-bytes"), key_of("c-1")),
        "c-2": record(KeyWrapper(WRAPPING), key_of("c-2")),
        "c-3": b'{"not": "a key record"}',
    }

    report = await recover_keys(settings(), vault, latest=latest, accept_unreadable=True)

    assert (report.restored, report.unreadable) == (1, 2)
    assert set(await vault.current(["c-1", "c-2", "c-3"])) == {"c-2"}
