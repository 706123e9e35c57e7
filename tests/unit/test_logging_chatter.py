"""What a service logs at INFO is what an operator acts on: FastStream's routine lines on the
broker's logger (topics not auto-created, a consumer task's callback on every stop) go to DEBUG;
and a command whose console is for people keeps its log in a file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import logging
    import sys
    from pathlib import Path

    from shared.logging import configure_logging, get_logger

    configure_logging("test", log_file=Path(sys.argv[1]) if len(sys.argv) > 1 else None)
    broker = get_logger("crm.broker")
    # FastStream's own words, as its subscribers and task supervisor log them.
    broker.log(logging.WARNING, "Auto create topics is disabled. Make sure the topics exist.")
    broker.log(logging.INFO, "callback for Task-24 is being executed...")
    broker.log(logging.WARNING, "Consumer group rebalance failed")
    get_logger("crm.test").info("service_started")
    """
)


def logged(*args: str, level: str = "INFO") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update(CRM_LOG_FORMAT="json", CRM_LOG_LEVEL=level)
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def events(text: str) -> dict[str, str]:
    return {line["event"]: line["level"] for line in map(json.loads, text.splitlines()) if line}


def test_faststreams_routine_lines_are_not_logged_at_info() -> None:
    lines = events(logged().stderr)
    assert lines == {"Consumer group rebalance failed": "warning", "service_started": "info"}


def test_faststreams_routine_lines_show_at_debug() -> None:
    lines = events(logged(level="DEBUG").stderr)
    assert lines["Auto create topics is disabled. Make sure the topics exist."] == "debug"
    assert lines["callback for Task-24 is being executed..."] == "debug"
    assert lines["service_started"] == "info"


def test_a_log_file_takes_every_line_and_the_console_gets_none(tmp_path: Path) -> None:
    log = tmp_path / "demo.log"
    process = logged(str(log))
    assert process.stderr == ""
    assert process.stdout == ""
    assert events(log.read_text(encoding="utf-8")) == {
        "Consumer group rebalance failed": "warning",
        "service_started": "info",
    }
