"""The restore drill: run, `crm backup`, run more (e-mails, an erasure), lose the stores,
`crm restore`, replay; then the profiles and live offers are those before the loss, no e-mail
went out twice and the erased customer stays erased. Prints the RPO and RTO it measured."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from crm.embedded import EmbeddedKafka
from shared.settings import StoreSettings
from tests.e2e.conftest import Mailbox
from tests.e2e.restore_helpers import (
    GONE,
    check_restore_said,
    check_same_state,
    crm,
    drill_traffic,
    keys_of,
    snapshot,
    traces_of,
    wait_mail_settled,
)
from tests.reliability.harness import send_signups_first, wait_drained

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_restore_after_losing_the_stores_replays_to_the_same_state_without_mailing_twice(
    broker: EmbeddedKafka,
    smtp_server: tuple[Mailbox, int],
    make_pipeline: Any,
    tmp_path: Path,
) -> None:
    mailbox, port = smtp_server
    pipeline = make_pipeline(CRM_SMTP_HOST="127.0.0.1", CRM_SMTP_PORT=str(port))
    env = pipeline.env
    store = StoreSettings(store_url=env["CRM_STORE_URL"])
    folder = Path(env["CRM_STORE_URL"].removeprefix("sqlite:///"))
    drill = drill_traffic()
    customers, erased = drill.customers, drill.erased

    pipeline.start_all()
    asyncio.run(send_signups_first(broker.bootstrap, drill.first))
    asyncio.run(wait_drained(broker.bootstrap))
    wait_mail_settled(mailbox)
    mailed_at_backup = mailbox.count()

    backup_dir = tmp_path / "backup"
    out = crm("backup", str(backup_dir), env=env)
    assert "backed up" in out
    manifest = json.loads((backup_dir / "manifest.json").read_text())
    backup_at = dt.datetime.fromisoformat(manifest["created_at"])
    assert {s["name"] for s in manifest["stores"]} >= {
        "ingest",
        "profiles",
        "offers",
        "notifier",
        "vault",
    }

    asyncio.run(send_signups_first(broker.bootstrap, [*drill.second, drill.erasure()]))
    asyncio.run(wait_drained(broker.bootstrap))
    wait_mail_settled(mailbox)
    assert mailbox.count() > mailed_at_backup, "the traffic after the backup should send e-mails"
    profiles_before, offers_before = asyncio.run(snapshot(store, customers))
    assert profiles_before
    assert offers_before
    assert asyncio.run(traces_of(store, erased)) == GONE

    # The disaster: the services stop and every store file is gone.
    pipeline.stop_all()
    lost_at = dt.datetime.now(dt.UTC)
    mailed_before_loss = mailbox.count()
    shutil.rmtree(folder)

    started = time.monotonic()
    # --force: the embedded broker keeps a stopped consumer listed in its group for ever.
    out = crm("restore", str(backup_dir), "--force", env=env)
    check_restore_said(out)
    restored_in = time.monotonic() - started
    # Before any service runs: the erasure since the backup is re-applied from crm.events, so
    # nothing sealed for the erased customer opens with the restored vault.
    assert asyncio.run(keys_of(store, erased)) == {}
    pipeline.start_all()
    asyncio.run(wait_drained(broker.bootstrap, within=300))
    wait_mail_settled(mailbox)
    rto = time.monotonic() - started

    after = asyncio.run(snapshot(store, customers))
    check_same_state((profiles_before, offers_before), after, drill.late_customers)
    profiles_after, offers_after = after
    received = mailbox.message_ids()
    assert max(received.values()) == 1, [k for k, n in received.items() if n > 1]
    assert mailbox.count() == mailed_before_loss, "the replay e-mailed again"
    assert asyncio.run(traces_of(store, erased)) == GONE, "the erased customer is back"

    print(
        f"\nrestore drill: RPO {(lost_at - backup_at).total_seconds():.1f} s (the time since "
        f"the last backup: the policy's backup interval); RTO {rto:.1f} s (crm restore "
        f"{restored_in:.1f} s + replay until drained); e-mails re-sent: "
        f"{sum(n - 1 for n in received.values())}; profiles {len(profiles_after)}, live "
        f"offers {len(offers_after)}, e-mails {mailbox.count()}"
    )
