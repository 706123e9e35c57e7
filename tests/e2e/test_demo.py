"""`crm demo` twice with the same seed prints the same summary: on SQLite, and on the MongoDB
code path (`--store mongodb`, an embedded MongoDB-wire server)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SMALL = [
    "--customers",
    "60",
    "--stores",
    "2",
    "--days",
    "8",
    "--history-days",
    "120",
    "--seed",
    "3",
]


def demo(folder: Path, *extra: str) -> list[str]:
    """The summary table's rows, as printed."""
    result = subprocess.run(
        [sys.executable, "-m", "crm.cli", "demo", *SMALL, "--data-dir", str(folder), *extra],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("CRM_")},
            "COLUMNS": "120",
        },
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if "crm demo summary" in line)
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("└"))
    return [line for line in lines[start : end + 1] if "│" in line]


@pytest.mark.parametrize("store", ["sqlite", pytest.param("mongodb", marks=pytest.mark.mongo)])
def test_the_same_seed_gives_the_same_summary(store: str, tmp_path: Path) -> None:
    first = demo(tmp_path / "first", "--store", store)
    second = demo(tmp_path / "second", "--store", store)
    assert first == second
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in first}
    assert int(rows["customer profiles"]) > 40
    assert int(rows["offers issued"]) > 0
