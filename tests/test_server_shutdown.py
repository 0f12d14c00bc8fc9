"""The launcher (``python -m servers public|internal``): one API per process, each with its
own role, served over TCP, stopped gracefully, refusing to start when misconfigured."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest

from launched import ROOT, Launched, launch_environment, launched
from securecache.ops.dev import ServerInfo

MakeSecurities = Callable[..., list[str]]
TOKEN = "shutdown-token-0123456789abcdef"


@pytest.fixture
def public(database: Any, servers: ServerInfo, key_prefix: str) -> Iterator[Launched]:
    """``python -m servers public`` as the reader role."""
    env = launch_environment(
        SECURECACHE_DATABASE_URL=database.reader_url,
        SECURECACHE_REDIS_URL=servers.redis_url,
        SECURECACHE_KEY_PREFIX=key_prefix,
    )
    with launched("public", env) as running:
        yield running


@pytest.fixture
def internal(database: Any, servers: ServerInfo, key_prefix: str) -> Iterator[Launched]:
    """``python -m servers internal`` as the writer role, with a token."""
    env = launch_environment(
        SECURECACHE_DATABASE_URL=database.writer_url,
        SECURECACHE_REDIS_URL=servers.redis_url,
        SECURECACHE_KEY_PREFIX=key_prefix,
        SECURECACHE_API_TOKENS=f"shutdown:write:{TOKEN}",
    )
    with launched("internal", env) as running:
        yield running


async def test_both_apis_serve_with_their_own_roles(
    public: Launched, internal: Launched, make_securities: MakeSecurities
) -> None:
    """Over TCP, the internal API writes (writer role) and the public API reads it back."""
    (sid,) = make_securities(1)
    body = {"growth": 1, "value": 2, "quality": 3, "momentum": 4}
    async with httpx.AsyncClient(timeout=10) as http:
        put = await http.put(
            f"{internal.url}/scores/{sid}",
            json=body,
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert put.status_code == 201
        got = await http.get(f"{public.url}/securities/{sid}/score")
        assert got.json() == put.json()
        assert "server" not in got.headers
        assert (await http.get(f"{public.url}/metrics")).status_code == 404


async def test_sigterm_finishes_requests_in_flight_then_exits(
    internal: Launched, make_securities: MakeSecurities, admin_conn: psycopg.Connection[Any]
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
                f"{internal.url}/scores/{sid}",
                content=slow_body(),
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            )
        )
        await asyncio.wait_for(body_sent.wait(), 10)
        await asyncio.sleep(0.2)
        internal.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        with pytest.raises(httpx.TransportError):
            await http.get(f"{internal.url}/healthz")
        signalled.set()
        response = await upload
    assert response.status_code == 201
    assert response.headers["connection"] == "close"
    code = await asyncio.to_thread(internal.stop)
    print(internal.stderr)  # shown only if the test fails
    assert code == 0, internal.stderr
    assert "SIGTERM received" in internal.stderr
    assert "Traceback" not in internal.stderr
    row = admin_conn.execute(
        "SELECT version FROM securecache.score WHERE security_id = %s", (sid,)
    ).fetchone()
    assert row == (1,)


def run_launcher(*args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "servers", *args],
        cwd=ROOT,
        env=launch_environment(**variables),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_internal_api_without_tokens_exits_with_one_line(database: Any) -> None:
    """No token configured: exit status 1 and one ``error:`` line naming the variable."""
    result = run_launcher("internal", SECURECACHE_DATABASE_URL=database.writer_url)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    assert "SECURECACHE_API_TOKENS" in last
    assert "Traceback" not in result.stderr


def test_bad_metrics_port_exits_with_one_line(database: Any) -> None:
    """A malformed SECURECACHE_METRICS_PORT is named, before anything is served."""
    result = run_launcher(
        "public",
        SECURECACHE_DATABASE_URL=database.reader_url,
        SECURECACHE_METRICS_PORT="ninety",
    )
    assert result.returncode == 1
    assert "SECURECACHE_METRICS_PORT" in result.stderr.strip().splitlines()[-1]


def test_the_launcher_names_its_apis() -> None:
    """``python -m servers`` without an API says which there are (argparse's exit 2)."""
    result = run_launcher()
    assert result.returncode == 2
    assert "public" in result.stderr
    assert "internal" in result.stderr
