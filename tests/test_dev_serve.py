"""`securecache dev --serve`, the command behind `make run`, as a newcomer runs it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from securecache.dev import free_port

ROOT = Path(__file__).resolve().parents[1]
STARTUP_SECONDS = 60.0


def _wait_for(process: subprocess.Popen[str], marker: str, lines: list[str]) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"dev exited early ({process.poll()}):\n{''.join(lines)}")
        lines.append(line)
        if marker in line:
            return
    raise AssertionError(f"no {marker!r} within {STARTUP_SECONDS} s:\n{''.join(lines)}")


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A state folder under the project's ignored ``.securecache/`` (as ``make run`` uses).

    Not pytest's tmp_path: that lives in a root-only folder, which the unprivileged account
    running the embedded servers could not enter.
    """
    path = ROOT / ".securecache" / f"dev-serve-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.xfail(
    strict=False,
    reason=(
        "issue 7, in two halves: servers/ no longer reads bearer tokens from the library's"
        " Settings; `securecache dev --serve` passes through when it starts `python -m servers"
        " public|internal` as child processes with SECURECACHE_API_TOKENS in the internal one's"
        " environment (the library half)"
    ),
)
def test_dev_serve_runs_both_apis_on_embedded_servers_and_stops_cleanly(state_dir: Path) -> None:
    """With no URLs set, both APIs serve seeded data, a PUT shows through the public API at
    once, and Ctrl-C stops the APIs and both servers, leaving no process behind."""
    tmp_path = state_dir
    public_port, internal_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURECACHE_")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "securecache",
            "dev",
            "--serve",
            "--seed-count",
            "50",
            "--public-port",
            str(public_port),
            "--internal-port",
            str(internal_port),
            "--state-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        _wait_for(process, "Ctrl-C stops everything", lines)
        children = psutil.Process(process.pid).children(recursive=True)
        assert {c.name() for c in children} >= {"postgres", "redis-server"}
        token = (tmp_path / "dev-api-token").read_text().strip()
        public = f"http://127.0.0.1:{public_port}"
        internal = f"http://127.0.0.1:{internal_port}"
        with httpx.Client(timeout=10) as http:
            page = http.get(f"{public}/securities", params={"limit": 5}).json()
            assert len(page["items"]) == 5
            first = page["items"][0]["id"]
            before = http.get(f"{public}/securities/{first}/score").json()

            put = http.put(
                f"{internal}/scores/{first}",
                headers={"Authorization": f"Bearer {token}"},
                json={"growth": 0.5, "value": 1.5, "quality": 2.5, "momentum": 3.5},
            )
            assert put.status_code == 200, put.text
            assert put.json()["version"] == before["version"] + 1

            after = http.get(f"{public}/securities/{first}/score").json()
            assert after == put.json()
            assert http.get(f"{internal}/scores/{first}").status_code == 401
            assert http.get(f"{public}/readyz").json()["redis"] == "ok"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            rest, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            rest, _ = process.communicate()
        lines.append(rest)
    assert process.returncode == 0, "".join(lines)
    assert "stopped." in lines[-1]
    gone = psutil.wait_procs(children, timeout=10)[1]
    assert gone == [], f"left running: {gone}"
