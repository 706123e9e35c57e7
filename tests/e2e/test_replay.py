"""`crm replay`: profiles and offers rebuilt from the retained topics mid-run re-derive exactly
the same offers (ids and codes), and the notifier sends nothing twice."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from crm.embedded import EmbeddedKafka
from crm.traffic import read_topic
from services.offers.store import open_repository as open_offers
from shared.settings import KafkaSettings, StoreSettings
from shared.topics import OFFERS
from tests.e2e.conftest import Mailbox
from tests.reliability.harness import (
    send,
    send_signups_first,
    traffic,
    wait_drained,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SERVICES = ("ingest", "profiles", "offers", "notifier")


def crm_replay(service: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        # --force: the embedded broker keeps a stopped consumer listed in its group for ever.
        [sys.executable, "-m", "crm.cli", "replay", service, "--force"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


async def published(bootstrap: str) -> tuple[dict[str, set[bytes]], Counter[str]]:
    """Each offer's distinct `offer_issued` payloads, and the offer events by type."""
    versions: dict[str, set[bytes]] = defaultdict(set)
    types: Counter[str] = Counter()
    for record in await read_topic(KafkaSettings(kafka_bootstrap=bootstrap), OFFERS, within=30):
        event = orjson.loads(record.value)
        types[event["type"]] += 1
        if event["type"] == "offer_issued":
            versions[event["offer_id"]].add(record.value)
    return versions, types


async def stored_offers(store: StoreSettings, customers: list[str]) -> dict[str, Any]:
    async with open_offers(store) as offers:
        found = await offers.offers_of_customers(customers)
    return {k: (o.coupon_code, o.state) for k, o in found.items()}


def test_profiles_and_offers_rebuilt_mid_run_re_derive_the_same_offers_and_mail_nothing_twice(
    broker: EmbeddedKafka,
    smtp_server: tuple[Mailbox, int],
    make_pipeline: Any,
    tmp_path: Path,
) -> None:
    mailbox, port = smtp_server
    # A replay reads the clock and the profile changes in another interleaving than the first
    # run: it may issue and at once revoke an offer on its way (a correction). The notifier's
    # grace is what keeps such an offer from being e-mailed, so it is on here.
    pipeline = make_pipeline(
        CRM_SMTP_HOST="127.0.0.1",
        CRM_SMTP_PORT=str(port),
        CRM_SEND_GRACE_S="5",
        CRM_DUE_POLL_INTERVAL_S="1",
    )
    store = StoreSettings(store_url=pipeline.env["CRM_STORE_URL"])
    messages = traffic(60, days=21, seed=7)
    cut = max(m.at for m in messages) - dt.timedelta(days=7)
    first = [m for m in messages if m.at < cut]
    second = [m for m in messages if m.at >= cut]
    for name in SERVICES:
        pipeline.start(name)
    for name in SERVICES:
        pipeline.wait_ready(name)
    asyncio.run(send_signups_first(broker.bootstrap, first))
    asyncio.run(wait_drained(broker.bootstrap))
    before, _ = asyncio.run(published(broker.bootstrap))
    assert before, "the first weeks should earn offers"
    first_store = asyncio.run(stored_offers(store, sorted(_customers(before))))
    wait_until(lambda: mailbox.count() > 0, 30, "the first e-mails")
    time.sleep(8)  # the last offers' grace
    mailed_before = mailbox.count()

    # Rebuild profiles, then offers, from the topics, while ingest and the notifier run on.
    for name in ("profiles", "offers"):
        assert pipeline.stop(name) == 0
    out = crm_replay("profiles", pipeline.env)
    assert "profiles rebuilt from" in out
    crm_replay("offers", pipeline.env)
    crm_replay("offers", pipeline.env)  # safe to run again
    for name in ("profiles", "offers"):
        pipeline.start(name)
        pipeline.wait_ready(name)
    asyncio.run(wait_drained(broker.bootstrap))
    rebuilt, _ = asyncio.run(published(broker.bootstrap))
    standing = asyncio.run(stored_offers(store, sorted(_customers(rebuilt))))
    live_before = {k for k, (_, state) in first_store.items() if state != "revoked"}
    live_after = {k for k, (_, state) in standing.items() if state != "revoked"}
    assert live_after == live_before, "the rebuilt offers store holds other offers"
    assert {k: v[0] for k, v in standing.items() if k in live_before} == {
        k: v[0] for k, v in first_store.items() if k in live_before
    }, "an offer's code changed"
    assert all(len(payloads) == 1 for payloads in rebuilt.values()), "an offer changed"
    time.sleep(8)  # past the grace: a correction's offer would have gone out by now
    assert mailbox.count() == mailed_before, "the replay e-mailed again"

    # The run goes on as if nothing happened.
    asyncio.run(send(broker.bootstrap, second))
    asyncio.run(wait_drained(broker.bootstrap))
    pipeline.stop_all()
    time.sleep(8)  # the last offers' grace
    after, _ = asyncio.run(published(broker.bootstrap))
    assert set(before) <= set(after)
    assert all(len(payloads) == 1 for payloads in after.values())
    received = Counter(str(m["Message-ID"]) for m in mailbox.messages)
    assert received, "the traffic should send e-mails"
    assert max(received.values()) == 1, "an e-mail was sent twice"
    stored = asyncio.run(stored_offers(store, sorted(_customers(after))))
    assert set(stored) == set(after), "the offers store and crm.offers differ"


def _customers(versions: dict[str, set[bytes]]) -> set[str]:
    return {orjson.loads(next(iter(p)))["customer_id"] for p in versions.values()}
