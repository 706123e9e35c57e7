"""Every repository contract suite runs on each store: SQLite in a folder, SQLite in memory,
and the MongoDB-wire server the suite starts (`mongo_store`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.settings import StoreSettings


@pytest.fixture(
    params=["sqlite-file", "sqlite-memory", pytest.param("mongo", marks=pytest.mark.mongo)]
)
def every_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSettings:
    """The store settings of one kind of store per run of the test."""
    if request.param == "sqlite-file":
        return StoreSettings(store_url=f"sqlite://{tmp_path}")
    if request.param == "sqlite-memory":
        return StoreSettings(store_url="memory://")
    store: StoreSettings = request.getfixturevalue("mongo_store")
    return store
