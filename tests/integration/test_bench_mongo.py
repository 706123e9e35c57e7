"""The tiny bench of tests/integration/test_bench.py on the PyMongo code path: a regression in
the MongoDB adapters fails its self-check (a file of its own, so that it runs on another test
worker than the SQLite one)."""

from __future__ import annotations

import pytest

from tests.integration.test_bench import check_tiny_bench

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow, pytest.mark.mongo]


def test_quick_bench_on_the_mongodb_wire_server_passes_its_self_check() -> None:
    check_tiny_bench("mongodb")
