"""Personal data: card-key rotation keeps profiles, `crm export-customer` shows every store's
data, and an erasure removes it everywhere and survives a replay of the old events.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from crm.cli import cli
from crm.embedded import EmbeddedKafka
from crm.simulation import RawMessage
from crm.traffic import read_topic
from services import ingest, profiles
from services.ingest.store import open_repository as open_ingest
from services.profiles.store import open_repository as open_profiles
from shared.privacy import card_id, customer_id_for_card
from shared.settings import PrivacySettings, Settings, StoreSettings
from shared.skeleton import ServiceApp
from shared.topics import CHECKOUTS_RAW, CONTACTS, CUSTOMERS_RAW, EVENTS
from tests.e2e.conftest import Mailbox
from tests.keys import CARD_KEY
from tests.reliability.harness import (
    TODAY,
    Cluster,
    kafka,
    record,
    run,
    send,
    wait_drained,
    wait_until,
)

OLD_KEY, NEW_KEY = "old-card-key", "new-card-key"
ANA = "6035 1111 2222 3333"


def signup(event_id: str, card: str, days_ago: int = 20) -> tuple[str, bytes]:
    day = TODAY.fromordinal(TODAY.toordinal() - days_ago)
    return CUSTOMERS_RAW, orjson.dumps(
        {
            "event_id": event_id,
            "type": "signup",
            "occurred_at": f"{day.isoformat()}T09:00:00Z",
            "card_number": card,
            "email": "ana.secret@example.com",
            "first_name": "Anastasia",
            "marketing_consent": True,
        }
    )


def checkout(event_id: str, card: str, days_ago: int, sku: str = "MILK-1L") -> tuple[str, bytes]:
    day = TODAY.fromordinal(TODAY.toordinal() - days_ago)
    return CHECKOUTS_RAW, orjson.dumps(
        {
            "event_id": event_id,
            "store_id": "S001",
            "occurred_at": f"{day.isoformat()}T10:00:00Z",
            "card_number": card,
            "lines": [{"sku": sku, "quantity": 1, "unit_price": "2.50"}],
        }
    )


async def ingest_and_fold(store: StoreSettings, key: str, items: list[tuple[str, bytes]]) -> None:
    """One batch through ingest and profiles, in-process, on the durable store."""
    settings = Settings(privacy=PrivacySettings(card_key=key))  # type: ignore[arg-type]
    async with open_ingest(store) as ingest_repo, open_profiles(store) as profiles_repo:
        ingest_app = ServiceApp(ingest.SPEC, settings, repository=ingest_repo)
        outgoing, handled = await ingest_app.prepare(
            [record(t, v, i) for i, (t, v) in enumerate(items)]
        )
        await handled.save()
        events = [record(t, v, i, k) for i, (t, k, v) in enumerate(outgoing) if t == EVENTS]
        profiles_app = ServiceApp(profiles.SPEC, settings, repository=profiles_repo)
        _, folded = await profiles_app.prepare(events)
        await folded.save()


def crm(args: list[str], env: dict[str, str]) -> Any:
    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_rotating_the_card_key_keeps_every_card_on_its_customer(tmp_path: Path) -> None:
    store = StoreSettings(store_url=f"sqlite:///{tmp_path / 'store'}")
    ben = "6035 4444 5555 6666"
    asyncio.run(
        ingest_and_fold(
            store,
            OLD_KEY,
            [signup("s1", ANA), checkout("a1", ANA, 5), checkout("b1", ben, 5, "COFFEE")],
        )
    )
    ana_customer = customer_id_for_card(card_id(ANA, OLD_KEY.encode()))
    cards = tmp_path / "cards.txt"
    cards.write_text(f"{ANA.replace(' ', '-')}\n{ben}\nnot a card\n\n")
    env = {
        "CRM_STORE_URL": store.store_url or "",
        "CRM_CARD_KEY": OLD_KEY,
        "CRM_NEW_CARD_KEY": NEW_KEY,
        "CRM_LOG_FORMAT": "json",
    }
    output = crm(["rotate-card-key", "--cards-file", str(cards)], env).output
    assert "2 cards re-keyed, 1 invalid" in output
    assert NEW_KEY not in output
    assert OLD_KEY not in output
    crm(["rotate-card-key", "--cards-file", str(cards)], env)  # a second run changes nothing

    # Ingest now runs with the new key: the same cards feed the same profiles.
    asyncio.run(
        ingest_and_fold(store, NEW_KEY, [checkout("a2", ANA, 1), checkout("b2", ben, 1, "COFFEE")])
    )

    async def stored() -> tuple[dict[str, Any], int]:
        async with open_profiles(store) as repo:
            return await repo.get_many([ana_customer]), await repo.count()

    found, count = asyncio.run(stored())
    assert found[ana_customer].visits == 2
    assert found[ana_customer].email == "ana.secret@example.com"
    assert count == 2, "a re-keyed card started a new profile"

    # Right of access, by card number (read from a file, never from the command line).
    card_file = tmp_path / "card.txt"
    card_file.write_text(ANA)
    exported = json.loads(
        crm(
            ["export-customer", "--card-file", str(card_file)], {**env, "CRM_CARD_KEY": NEW_KEY}
        ).stdout
    )
    assert exported["customer_id"] == ana_customer
    assert exported["profiles"]["document"]["visits"] == 2
    assert card_id(ANA, NEW_KEY.encode()) in exported["ingest"]["linked_card_ids"]
    parts = {"customer_id", "ingest", "profiles", "offers", "notifier", "reports", "audit"}
    assert set(exported) == parts


def test_without_rotation_a_new_key_would_orphan_the_profiles(tmp_path: Path) -> None:
    """The failure the rotation procedure prevents: the same card becomes a stranger."""
    old = customer_id_for_card(card_id(ANA, OLD_KEY.encode()))
    new = customer_id_for_card(card_id(ANA, NEW_KEY.encode()))
    assert old != new


@pytest.mark.e2e
@pytest.mark.slow
def test_erased_customer_leaves_no_personal_data_and_a_replay_does_not_resurrect_them(
    broker: EmbeddedKafka,
    smtp_server: tuple[Mailbox, int],
    cluster: Callable[..., Cluster],
    store_dir: Path,
    tmp_path: Path,
) -> None:
    mailbox, port = smtp_server
    rules = tmp_path / "rules.yaml"
    rules.write_text("holdout:\n  percent: 0\n")  # Ana must not land in this week's control
    pipeline = cluster(
        CRM_SMTP_HOST="127.0.0.1", CRM_SMTP_PORT=str(port), CRM_RULES_FILE=str(rules)
    )
    pipeline.start_many(("ingest", "profiles", "offers", "notifier"))
    history = [signup("su", ANA)] + [checkout(f"c{n}", ANA, ago) for n, ago in enumerate((9, 5, 2))]
    messages = [RawMessage(t, b"S001", v, dt_now()) for t, v in history]
    run(send(broker.bootstrap, messages))
    wait_until(lambda: mailbox.count() >= 1, 90, "the coupon e-mail")
    run(wait_drained(broker.bootstrap))

    erase = orjson.dumps(
        {
            "event_id": "erase-1",
            "type": "erase",
            "occurred_at": f"{TODAY.isoformat()}T00:00:01Z",
            "card_number": ANA,
        }
    )
    run(send(broker.bootstrap, [RawMessage(CUSTOMERS_RAW, b"S001", erase, dt_now())]))
    run(wait_drained(broker.bootstrap))
    # A replay: the same old events again, and a till resending them under new ids.
    resent = [
        RawMessage(t, b"S001", v.replace(b'"c', b'"again-c'), dt_now())
        for t, v in history
        if t == CHECKOUTS_RAW
    ]
    run(send(broker.bootstrap, messages + resent))
    run(wait_drained(broker.bootstrap))
    pipeline.stop_all()

    customer = customer_id_for_card(card_id(ANA, CARD_KEY.encode()))
    contacts = [r for r in run(read_topic(kafka(broker.bootstrap), CONTACTS)) if r.key]
    assert contacts[-1].key == customer.encode()
    assert contacts[-1].value is None, "no tombstone on crm.contacts"

    env = {"CRM_STORE_URL": f"sqlite:///{store_dir}", "CRM_LOG_FORMAT": "json"}
    exported = crm(["export-customer", "--customer-id", customer], env).stdout
    for personal in ("ana.secret@example.com", "Anastasia"):
        assert personal not in exported
        for path in store_dir.glob("*.sqlite3*"):
            assert personal.encode() not in path.read_bytes(), path.name
    document = json.loads(exported)
    profile = document["profiles"]["document"]
    assert profile["erased"] is True
    assert profile["visits"] == 0, "the replay rebuilt the profile"
    assert document["notifier"]["contact"] is None
    # Offers and the notifier kept the e-mail's offer for their counts, unlinked from the card.
    assert document["offers"]["offers"] == []
    assert document["notifier"]["deliveries"] == []
    for path in [*store_dir.glob("offers.sqlite3*"), *store_dir.glob("notifier.sqlite3*")]:
        assert customer.encode() not in path.read_bytes(), path.name
    assert mailbox.count() == 1, "the replay e-mailed the erased customer"


def dt_now() -> Any:
    import datetime as dt

    return dt.datetime.now(dt.UTC)
