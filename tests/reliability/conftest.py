"""Reliability fixtures: the end-to-end broker and SMTP fixtures, plus a cluster of instances."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from crm.embedded import EmbeddedKafka
from tests.e2e.conftest import broker, smtp_server
from tests.reliability.harness import CARD_KEY, Cluster

__all__ = ["broker", "cluster", "smtp_server", "store_dir"]


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def cluster(
    broker: EmbeddedKafka, store_dir: Path, tmp_path: Path
) -> Iterator[Callable[..., Cluster]]:
    """Make a cluster on the fresh broker and the durable SQLite store; all stopped at the end."""
    made: list[Cluster] = []

    def make(**extra: str) -> Cluster:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
        env.update(
            {
                "CRM_KAFKA_BOOTSTRAP": broker.bootstrap,
                "CRM_STORE_URL": f"sqlite:///{store_dir}",
                "CRM_OUTBOX_DIR": str(tmp_path / "outbox"),
                "CRM_QUIET_HOURS": "off",
                "CRM_LOG_FORMAT": "json",
                "CRM_LOG_LEVEL": "INFO",
                "CRM_CARD_KEY": CARD_KEY,
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
