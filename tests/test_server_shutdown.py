"""Both APIs in one process (``python -m servers.run``): served over TCP, stopped gracefully."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from securecache.ops.dev import ServerInfo, free_port

MakeSecurities = Callable[..., list[str]]
ROOT = Path(__file__).resolve().parent.parent
TOKEN = "shutdown-token"


class Running:
    def __init__(self, process: subprocess.Popen[str], public: str, internal: str) -> None:
        self.process = process
        self.public = public
        self.internal = internal


def wait_until_up(process: subprocess.Popen[str], *urls: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    for url in urls:
        while True:
            assert process.poll() is None, process.communicate()[1]
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{url} did not come up"
            time.sleep(0.1)


@pytest.fixture
def running(database: Any, servers: ServerInfo, key_prefix: str) -> Iterator[Running]:
    """``python -m servers.run`` with each API on its own role, in its own process."""
    public_port, internal_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SECURECACHE_", "OTEL_"))}
    env |= {
        "SECURECACHE_REDIS_URL": servers.redis_url,
        "SECURECACHE_KEY_PREFIX": key_prefix,
        "SECURECACHE_API_TOKENS": TOKEN,
        "SECURECACHE_DATABASE_URL": database.reader_url,
        "PYTHONPATH": str(ROOT),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "servers.run",
            "--public-port",
            str(public_port),
            "--internal-port",
            str(internal_port),
            "--internal-database-url",
            database.writer_url,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        public, internal = f"http://127.0.0.1:{public_port}", f"http://127.0.0.1:{internal_port}"
        wait_until_up(process, public, internal)
        yield Running(process, public, internal)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


async def test_both_apis_serve_with_their_own_roles(
    running: Running, make_securities: MakeSecurities
) -> None:
    """Over TCP, the internal API writes (writer role) and the public API reads it back."""
    (sid,) = make_securities(1)
    body = {"growth": 1, "value": 2, "quality": 3, "momentum": 4}
    async with httpx.AsyncClient(timeout=10) as http:
        put = await http.put(
            f"{running.internal}/scores/{sid}",
            json=body,
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert put.status_code == 201
        got = await http.get(f"{running.public}/securities/{sid}/score")
        assert got.json() == put.json()
        assert "server" not in got.headers


async def test_sigterm_finishes_requests_in_flight_then_exits(
    running: Running, make_securities: MakeSecurities, admin_conn: psycopg.Connection[Any]
) -> None:
    """SIGTERM during an upload: that request still completes and commits; new connections
    are refused; the process closes its pools and exits 0."""
    (sid,) = make_securities(1)
    body_sent = asyncio.Event()
    signalled = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b'{"growth": 1, "value": 2,'
        body_sent.set()
        await signalled.wait()
        await asyncio.sleep(0.5)  # the server is shutting down by now
        yield b' "quality": 3, "momentum": 4}'

    async with httpx.AsyncClient(timeout=30) as http:
        upload = asyncio.create_task(
            http.put(
                f"{running.internal}/scores/{sid}",
                content=slow_body(),
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            )
        )
        await asyncio.wait_for(body_sent.wait(), 10)
        await asyncio.sleep(0.2)
        running.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        with pytest.raises(httpx.TransportError):
            await http.get(f"{running.public}/healthz")
        signalled.set()
        response = await upload
    assert response.status_code == 201
    assert response.headers["connection"] == "close"
    try:
        code = await asyncio.to_thread(running.process.wait, 45)
    finally:
        if running.process.poll() is None:
            running.process.kill()
        _, stderr = running.process.communicate()
        print(stderr)  # shown only if the test fails
    assert code == 0, stderr
    assert "SIGTERM received" in stderr
    assert "Traceback" not in stderr
    row = admin_conn.execute(
        "SELECT version FROM securecache.score WHERE security_id = %s", (sid,)
    ).fetchone()
    assert row == (1,)
