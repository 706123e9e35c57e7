"""Crash safety: kill -9 a service mid-stream (or SIGTERM it), restart it, and check that the
result is the one of the input: exact profile totals, each offer once, each e-mail once.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from crm.embedded import EmbeddedKafka
from shared.settings import StoreSettings
from tests.e2e.conftest import Mailbox
from tests.keys import CARD_KEY
from tests.reliability.harness import (
    Cluster,
    outcome,
    reference_totals,
    run,
    send_signups_first,
    stored_offer_ids,
    stored_totals,
    traffic,
    wait_drained,
    wait_mid_stream,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SERVICES = ("ingest", "profiles", "offers", "notifier")
CUSTOMERS = 200


def check_exact(
    store: StoreSettings,
    bootstrap: str,
    mailbox: Mailbox,
    messages: list,
    *,
    allowed_resends: int = 0,
    allow_republished: bool = False,
) -> dict[str, int]:
    """The checks after every fault; returns the counts checked (for the report)."""
    expected = run(reference_totals(messages, CARD_KEY))
    totals, live = run(stored_totals(store, sorted(expected)))
    wrong = {
        cid: (totals.get(cid), want) for cid, want in expected.items() if totals.get(cid) != want
    }
    assert not wrong, (
        f"{len(wrong)} profiles differ from the reference, e.g. {list(wrong.items())[:3]}"
    )
    assert live == len(expected), "profiles in the store that the input does not explain"

    result = run(outcome(bootstrap, mailbox))
    stored = run(stored_offer_ids(store, sorted(expected)))
    assert stored, "the traffic should earn offers"
    assert set(result.issued) == stored, "offers on crm.offers and in the offers store differ"
    changed = {offer_id for offer_id, payloads in result.versions.items() if len(payloads) > 1}
    assert not changed, f"an offer was published with different content: {changed}"
    repeated = {offer_id: result.history[offer_id] for offer_id in result.republished}
    # Offers publishes, then stores: a kill between the two re-reads the batch and publishes
    # the identical event again (at-least-once on the topic; see the guarantees). An offer
    # revoked by a late event and issued again by a later one is a correction, not a repeat.
    assert allow_republished or not repeated, f"offer_issued published again: {repeated}"
    assert result.delivered >= stored, "an issued offer has no delivery outcome"

    assert result.sent, "the traffic should send e-mails"
    assert set(result.mailed) == result.sent, "SMTP received other e-mails than those recorded"
    resent = sum(n - 1 for n in result.mailed.values())
    assert resent <= allowed_resends, f"{resent} e-mails received more than once"
    return {
        "profiles": live,
        "offers": len(stored),
        "emails": len(result.sent),
        "resent": resent,
        "republished": sum(result.republished.values()),
        "reissued_after_revocation": sum(result.issued.values())
        - len(result.issued)
        - sum(result.republished.values()),
    }


def record_counts(fault: str, events: int, counts: dict[str, int]) -> None:
    """Keep what each fault test checked in test-output/, for the report of a run."""
    folder = Path(__file__).resolve().parents[2] / "test-output"
    folder.mkdir(exist_ok=True)
    line = json.dumps({"fault": fault, "raw_events": events, **counts})
    with (folder / "reliability-counts.jsonl").open("a", encoding="utf-8") as out:
        out.write(line + "\n")


@pytest.mark.parametrize(
    ("victim", "store"),
    [
        *((victim, "sqlite") for victim in SERVICES),
        # The PyMongo code path under the same fault, on the suite's MongoDB-wire server.
        pytest.param("profiles", "mongodb", marks=pytest.mark.mongo),
    ],
    indirect=["store"],
)
def test_killed_service_restarts_and_every_total_offer_and_email_is_exact(
    victim: str,
    broker: EmbeddedKafka,
    smtp_server: tuple[Mailbox, int],
    cluster: Callable[..., Cluster],
    store: StoreSettings,
) -> None:
    mailbox, port = smtp_server
    pipeline = cluster(CRM_SMTP_HOST="127.0.0.1", CRM_SMTP_PORT=str(port))
    pipeline.start_many(SERVICES)
    messages = traffic(CUSTOMERS)
    assert len(messages) > 2000

    run(send_signups_first(broker.bootstrap, messages))
    if victim == "notifier":
        wait_until(lambda: mailbox.count() >= 1, 90, "the first e-mails")
    else:
        wait_mid_stream(broker.bootstrap, victim)
    assert pipeline.kill(victim) == -signal.SIGKILL
    pipeline.start(victim)
    pipeline.wait_ready(victim)

    run(wait_drained(broker.bootstrap))
    pipeline.stop_all()
    # A kill -9 of the notifier between the SMTP server's "250 accepted" and the delivery
    # record re-sends that one e-mail (same Message-ID) after the restart: see the guarantees.
    counts = check_exact(
        store,
        broker.bootstrap,
        mailbox,
        messages,
        allowed_resends=1 if victim == "notifier" else 0,
        # Killed between publishing and saving, profiles re-applies its batch and republishes
        # the same profile changes; offers then republishes the identical offers it already
        # stored (the same happens when offers itself is killed after storing).
        allow_republished=victim in ("profiles", "offers"),
    )
    kind = "mongodb" if (store.store_url or "").startswith("mongodb") else "sqlite"
    print(f"kill -9 {victim} ({kind}): {len(messages)} raw events, checked {counts}")
    record_counts(f"kill -9 {victim} ({kind})", len(messages), counts)


def test_sigterm_during_load_finishes_the_batch_in_flight_and_loses_nothing(
    broker: EmbeddedKafka,
    smtp_server: tuple[Mailbox, int],
    cluster: Callable[..., Cluster],
    store: StoreSettings,
) -> None:
    mailbox, port = smtp_server
    pipeline = cluster(CRM_SMTP_HOST="127.0.0.1", CRM_SMTP_PORT=str(port))
    pipeline.start_many(SERVICES)
    messages = traffic(CUSTOMERS)

    run(send_signups_first(broker.bootstrap, messages))
    wait_mid_stream(broker.bootstrap, "profiles")
    for name in SERVICES:  # every service stops gracefully while work is in flight
        assert pipeline.stop(name) == 0, pipeline.logs(name)[-2000:]
    for name in SERVICES:
        pipeline.start(name)
    for name in SERVICES:
        pipeline.wait_ready(name)
    run(wait_drained(broker.bootstrap))
    pipeline.stop_all()
    counts = check_exact(store, broker.bootstrap, mailbox, messages)
    print(f"SIGTERM all: {len(messages)} raw events, checked {counts}")
    record_counts("SIGTERM all", len(messages), counts)
