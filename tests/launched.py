"""``python -m servers public|internal`` as a real process, for the tests that need one.

Not a fixture module: tests build the environment (each API its own role, a test's key
prefix) and use :func:`launched` as a context manager.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

import attrs
import httpx

from securecache.ops.dev import free_port

ROOT = Path(__file__).resolve().parent.parent
STARTUP_SECONDS = 30.0


@attrs.define
class Launched:
    """A running API process, its URL, and (once stopped) its exit status and output."""

    process: subprocess.Popen[str]
    url: str
    log: IO[str]
    """Its stderr, in a file: a pipe nobody reads would stall a process that logs a lot."""
    returncode: int | None = None
    stderr: str = ""

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 45) -> int:
        """Send ``sig`` and wait for the process to exit; its status and output are kept."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.seek(0)
        self.stderr = self.log.read()
        self.returncode = self.process.returncode
        return self.returncode


def launch_environment(**variables: str) -> dict[str, str]:
    """This process's environment without SECURECACHE_* and OTEL_*, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SECURECACHE_", "OTEL_"))}
    return env | {"SECURECACHE_METRICS_PORT": "0"} | variables


@contextlib.contextmanager
def launched(api: str, env: Mapping[str, str], *args: str) -> Iterator[Launched]:
    """``python -m servers <api> --port <free>`` until ``/readyz`` answers; stopped (SIGTERM)
    when the block ends, if the test has not stopped it already."""
    port = free_port()
    log = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "servers", api, "--port", str(port), *args],
        cwd=ROOT,
        env=dict(env),
        stdout=subprocess.DEVNULL,
        stderr=log,
        text=True,
    )
    running = Launched(process, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                running.stop()
                raise AssertionError(f"{api} exited at start:\n{running.stderr}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{running.url}/readyz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"{api} did not come up in {STARTUP_SECONDS} s")
            time.sleep(0.1)
        yield running
    finally:
        if running.returncode is None:
            running.stop()
        log.close()
