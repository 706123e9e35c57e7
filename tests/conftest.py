"""Fixtures shared by every tier: the Kafka-wire broker and settings for it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from crm.embedded import EmbeddedKafka
from shared.settings import KafkaSettings

OUTPUT = Path(__file__).resolve().parent.parent / "test-output"


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Real Kafka when CRM_TEST_KAFKA_BOOTSTRAP is set, else the embedded Tansu broker."""
    external = os.environ.get("CRM_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with EmbeddedKafka(log_file=log) as broker:
        yield broker.bootstrap


@pytest.fixture
def kafka_settings(kafka_bootstrap: str) -> KafkaSettings:
    return KafkaSettings(kafka_bootstrap=kafka_bootstrap, batch_timeout_ms=50)


@pytest.fixture
def unique() -> str:
    """A suffix that keeps tests on a shared broker apart (groups, ids)."""
    return uuid.uuid4().hex[:8]
