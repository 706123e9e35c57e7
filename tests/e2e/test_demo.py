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


def demo(folder: Path, *extra: str) -> tuple[list[str], str]:
    """The summary table's rows, as printed on an 80-column terminal, and the whole output."""
    result = subprocess.run(
        [sys.executable, "-m", "crm.cli", "demo", *SMALL, "--data-dir", str(folder), *extra],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("CRM_")},
            "COLUMNS": "80",
        },
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if "crm demo summary" in line)
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("└"))
    return [line for line in lines[start : end + 1] if "│" in line], result.stdout


@pytest.mark.parametrize("store", ["sqlite", pytest.param("mongodb", marks=pytest.mark.mongo)])
def test_the_same_seed_gives_the_same_summary_told_to_people(store: str, tmp_path: Path) -> None:
    first, output = demo(tmp_path / "first", "--store", store)
    second, _ = demo(tmp_path / "second", "--store", store)
    assert first == second
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in first}
    assert int(rows["customer profiles"]) > 40
    assert int(rows["offers issued"]) > 0
    # The redemption rate is over the coupons that were e-mailed, and says so.
    used, _, mailed, rate = rows["of the e-mailed ones"].split(" ", 3)
    assert int(mailed) == int(rows["e-mails written"])
    assert rate == f"({int(used) / int(mailed):.1%})"
    # People read the console: no log line, nothing wider than 80 columns, the rows whose
    # label is not enough explained; the logs go to files, without FastStream's chatter.
    lines = output.splitlines()
    assert [line for line in lines if len(line) > 80] == []
    assert [line for line in lines if line.lstrip().startswith("{")] == []
    assert "Chances passed over: a chance is one campaign's trigger" in output
    assert "E-mails not sent, offer_expired: the coupon's last day had passed" in output
    demo_log = (tmp_path / "first" / "demo.log").read_text()
    assert '"event": "topics_created"' in demo_log
    for log in (tmp_path / "first" / "logs").glob("*.log"):
        text = log.read_text()
        assert "Auto create topics is disabled" not in text, log.name
        assert "callback for Task-" not in text, log.name
