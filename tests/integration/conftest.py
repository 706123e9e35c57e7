"""Fixtures of the repository contract suites: the MongoDB emulator and a real MongoDB.

Every store suite runs on SQLite always, on the emulator (mongomock-motor, small sizes) so the
PyMongo repositories' real queries and updates run here, and on a real MongoDB when
`CRM_TEST_MONGO_URL` is set or Docker is usable (testcontainers); only the last one skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest


def docker_usable() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def real_mongo_url() -> Iterator[str]:
    """`CRM_TEST_MONGO_URL`, else a MongoDB container when Docker works, else skip."""
    url = os.environ.get("CRM_TEST_MONGO_URL")
    if url:
        yield url
        return
    if not docker_usable():
        pytest.skip("real MongoDB: set CRM_TEST_MONGO_URL or make docker usable")
    from testcontainers.mongodb import MongoDbContainer

    with MongoDbContainer("mongo:8.0") as container:
        yield container.get_connection_url()


@pytest.fixture
def emulator_bulk_compat(monkeypatch: pytest.MonkeyPatch) -> None:
    """mongomock's bulk builder predates PyMongo 4.11's `sort` argument to ReplaceOne/UpdateOne."""
    from mongomock.collection import BulkOperationBuilder

    def without_sort(method: Any) -> Any:
        def call(self: Any, *args: Any, sort: Any = None, **kwargs: Any) -> Any:
            return method(self, *args, **kwargs)

        return call

    monkeypatch.setattr(
        BulkOperationBuilder, "add_replace", without_sort(BulkOperationBuilder.add_replace)
    )
    monkeypatch.setattr(
        BulkOperationBuilder, "add_update", without_sort(BulkOperationBuilder.add_update)
    )
