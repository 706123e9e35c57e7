"""Scale-out: two instances of every consumer share each group's partitions; killing one hands
its partitions to the other, totals stay exact and each customer's events keep their order.
"""

from __future__ import annotations

import signal
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from crm.embedded import EmbeddedKafka
from crm.traffic import read_topic
from services.profiles.store import open_repository
from shared.settings import StoreSettings
from shared.topics import EVENTS
from tests.e2e.conftest import Mailbox
from tests.reliability.harness import (
    Cluster,
    kafka,
    run,
    send_signups_first,
    traffic,
    wait_drained,
    wait_mid_stream,
)
from tests.reliability.test_crash import SERVICES, check_exact, record_counts

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


async def event_order(bootstrap: str) -> dict[str, list[str]]:
    """Each customer's event ids in the order ingest published them (one partition each)."""
    order: dict[str, list[str]] = defaultdict(list)
    for r in await read_topic(kafka(bootstrap), EVENTS, within=30):
        doc = orjson.loads(r.value)
        if doc.get("customer_id") and doc["event_id"] not in order[doc["customer_id"]]:
            order[doc["customer_id"]].append(doc["event_id"])
    return order


async def applied_order(store_dir: Path, ids: list[str]) -> dict[str, list[str]]:
    async with open_repository(StoreSettings(store_url=f"sqlite:///{store_dir}")) as repo:
        found = await repo.get_many(ids)
    return {
        cid: list(p.recent_event_ids)
        for cid, p in found.items()
        if not p.merged_from and p.merged_into is None and not p.erased
    }


def test_two_instances_per_service_survive_losing_one_with_exact_totals_and_order(
    broker: EmbeddedKafka,
    smtp_server: tuple[Mailbox, int],
    cluster: Callable[..., Cluster],
    store_dir: Path,
    store: StoreSettings,
) -> None:
    mailbox, port = smtp_server
    pipeline = cluster(CRM_SMTP_HOST="127.0.0.1", CRM_SMTP_PORT=str(port))
    instances = [name for service in SERVICES for name in (service, f"{service}#2")]
    pipeline.start_many(instances)
    messages = traffic(200, seed=23)

    run(send_signups_first(broker.bootstrap, messages))
    wait_mid_stream(broker.bootstrap, "profiles")
    for service in SERVICES:  # one instance of every service dies; its twin takes over
        assert pipeline.kill(f"{service}#2") == -signal.SIGKILL
    run(wait_drained(broker.bootstrap, within=150))
    pipeline.stop_all()

    counts = check_exact(
        store, broker.bootstrap, mailbox, messages, allowed_resends=1, allow_republished=True
    )

    published = run(event_order(broker.bootstrap))
    applied = run(applied_order(store_dir, sorted(published)))
    assert applied
    for customer_id, ids in applied.items():
        # The profile's applied ids (its latest ones) are a run of the published order.
        sequence = published[customer_id]
        start = sequence.index(ids[0])
        assert sequence[start : start + len(ids)] == ids, customer_id
    print(f"scale-out, kill -9 one of two of each: checked {counts}, order of {len(applied)}")
    record_counts("scale-out: kill -9 one of two of each", len(messages), counts)
