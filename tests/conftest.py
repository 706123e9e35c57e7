"""Fixtures shared by every tier: the Kafka-wire broker, the MongoDB-wire server, settings."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from crm.embedded import EmbeddedKafka, EmbeddedMongo
from shared.settings import KafkaSettings, StoreSettings

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


@pytest.fixture(scope="session")
def mongo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A MongoDB for the PyMongo code path: CRM_TEST_MONGO_URL (any MongoDB, a real mongod in CI
    elsewhere), else a SecantusDB server this session starts, on a free loopback port with its
    data in a temporary folder, stopped at the end."""
    external = os.environ.get("CRM_TEST_MONGO_URL")
    if external:
        yield external
        return
    folder = tmp_path_factory.mktemp("mongo")
    with EmbeddedMongo(folder / "data", log_file=folder / "server.log") as server:
        yield server.url


@pytest.fixture
def mongo_store(mongo_url: str) -> StoreSettings:
    """Store settings on the test MongoDB, in a database of this test's own."""
    return StoreSettings(store_url=mongo_url, mongo_database=f"crm_test_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def kafka_settings(kafka_bootstrap: str) -> KafkaSettings:
    return KafkaSettings(kafka_bootstrap=kafka_bootstrap, batch_timeout_ms=50)


@pytest.fixture
def unique() -> str:
    """A suffix that keeps tests on a shared broker apart (groups, ids)."""
    return uuid.uuid4().hex[:8]
