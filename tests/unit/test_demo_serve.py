"""`crm demo --serve` keeps the page up for this machine only: it binds where it says it does."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from crm import demo
from shared.settings import HttpSettings


class _Exited:
    returncode = 0

    def poll(self) -> int:
        return 0


class _Recorder:
    """Stands in for the `crm run all` child process: records the environment it was given."""

    envs: list[dict[str, str]] = []  # noqa: RUF012 - one list per test (reset below)

    def __init__(self, env: dict[str, str], log_dir: Path, names: tuple[str, ...]) -> None:
        self.envs.append(env)
        self.processes = {"all": _Exited()}

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def check_alive(self) -> None: ...


def test_demo_serve_binds_the_loopback_address_it_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _Recorder.envs = []
    monkeypatch.setattr(demo, "ServiceProcesses", _Recorder)
    out = io.StringIO()
    inherited: dict[str, Any] = {"CRM_HTTP_HOST": "0.0.0.0"}  # what it must not keep
    demo._serve(inherited, tmp_path, 8099, Console(file=out, width=200))
    [env] = _Recorder.envs
    printed = re.search(r"http://([^:/]+):(\d+)/ui/", out.getvalue())
    assert printed is not None
    monkeypatch.setenv("CRM_HTTP_HOST", env["CRM_HTTP_HOST"])
    monkeypatch.setenv("CRM_HTTP_PORT", env["CRM_HTTP_PORT"])
    bound = HttpSettings()  # what `crm run all` reads from that environment
    assert bound.http_host == "127.0.0.1"
    assert (bound.http_host, str(bound.http_port)) == printed.groups()
