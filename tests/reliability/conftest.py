"""Reliability fixtures: the end-to-end broker and SMTP fixtures, plus a cluster of instances."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from crm.embedded import EmbeddedKafka
from shared.settings import StoreSettings
from tests.e2e.conftest import broker, smtp_server
from tests.keys import SERVICE_KEYS
from tests.reliability.harness import Cluster

__all__ = ["broker", "cluster", "smtp_server", "store", "store_dir"]


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(request: pytest.FixtureRequest, store_dir: Path) -> StoreSettings:
    """The durable store of the cluster: SQLite in `store_dir`, or (parametrized indirectly
    with "mongodb") the suite's MongoDB-wire server."""
    if getattr(request, "param", "sqlite") == "mongodb":
        mongo: StoreSettings = request.getfixturevalue("mongo_store")
        return mongo
    return StoreSettings(store_url=f"sqlite:///{store_dir}")


@pytest.fixture
def cluster(
    broker: EmbeddedKafka, store: StoreSettings, tmp_path: Path
) -> Iterator[Callable[..., Cluster]]:
    """Make a cluster on the fresh broker and the durable store; all stopped at the end."""
    made: list[Cluster] = []

    def make(**extra: str) -> Cluster:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
        env.update(
            {
                "CRM_KAFKA_BOOTSTRAP": broker.bootstrap,
                "CRM_STORE_URL": store.store_url or "",
                "CRM_MONGO_DATABASE": store.mongo_database,
                "CRM_OUTBOX_DIR": str(tmp_path / "outbox"),
                "CRM_QUIET_HOURS": "off",
                # E-mails go at once: these tests count each e-mail; the grace has its own tests.
                "CRM_SEND_GRACE_S": "0",
                "CRM_LOG_FORMAT": "json",
                "CRM_LOG_LEVEL": "INFO",
                **SERVICE_KEYS,
                "CRM_BATCH_TIMEOUT_MS": "50",
                # Small batches: the stream lasts long enough to be interrupted mid-way.
                "CRM_BATCH_MAX_RECORDS": "100",
            }
        )
        env.update(extra)
        log_dir = tmp_path / f"logs-{len(made)}"
        log_dir.mkdir()
        made.append(Cluster(env, log_dir))
        return made[-1]

    yield make
    for each in made:
        for instance, process in each.processes.items():
            if process.poll() is None:
                process.kill()
                process.wait()
            del instance
