"""Attacks on the HTTP edge (issue 8, findings 3, 8 and 9), against real server processes.

Each test sends what a hostile client would: an oversize header, headers a byte at a time, a
malformed request, a WebSocket upgrade, a read token on a write. The servers bound and refuse
each themselves (no proxy in front), and answer problem+json wherever anything is answered.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import time
from collections.abc import Iterator
from typing import Any, Final

import httpx
import orjson
import pytest

from fix_servers import MakeSecurities
from launched import Launched, launch_environment, launched
from securecache import ConfigurationError
from securecache.ops.dev import ServerInfo
from servers.settings import ApiToken, ServerSettings

READER: Final = "reader-" + secrets.token_urlsafe(16)
WRITER: Final = "writer-" + secrets.token_urlsafe(16)
HEADER_TIMEOUT: Final = 1.0
BODY: Final = {"growth": 1.0, "value": 2.0, "quality": 3.0, "momentum": 4.0}


@pytest.fixture(scope="module")
def internal(servers: ServerInfo, database: Any) -> Iterator[Launched]:
    """``python -m servers internal`` with a read token and a write token, and a short
    header timeout so the slow-client test is quick."""
    env = launch_environment(
        SECURECACHE_DATABASE_URL=database.writer_url,
        SECURECACHE_REDIS_URL=servers.redis_url,
        SECURECACHE_KEY_PREFIX="t" + secrets.token_hex(4),
        SECURECACHE_API_TOKENS=f"dashboards:read:{READER}\npipeline:write:{WRITER}",
        SECURECACHE_HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT),
    )
    with launched("internal", env) as running:
        yield running


def _address(server: Launched) -> tuple[str, int]:
    host, _, port = server.url.removeprefix("http://").partition(":")
    return host, int(port)


def _exchange(server: Launched, request: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes; everything the server answers until it closes (or ``timeout``)."""
    with socket.create_connection(_address(server), timeout=timeout) as conn:
        conn.sendall(request)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
        return received


def _problem(response: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/problem+json" in head.lower(), head
    return status, orjson.loads(body)


def test_an_oversize_header_is_refused_with_431(internal: Launched) -> None:
    """A 1 MiB header is refused with a 431 problem (or a reset, if the client is still
    sending) once its first 16 KiB are in; the server never buffers the rest."""
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
    with socket.create_connection(_address(internal), timeout=10) as conn:
        # The server may close before the whole megabyte is sent: that is the point.
        with contextlib.suppress(OSError):
            conn.sendall(request)
        response = b""
        # A reset (the server closed with our bytes unread) is a refusal too.
        with contextlib.suppress(OSError):
            response = conn.recv(65536)
    if response:
        status, problem = _problem(response)
        assert status == 431
        assert problem["status"] == 431
    with httpx.Client(base_url=internal.url, timeout=10) as http:
        assert http.get("/healthz").status_code == 200  # and the server is still fine


def test_many_headers_of_normal_size_add_up_to_the_same_limit(internal: Launched) -> None:
    """The limit is on the whole head: 400 headers of 100 bytes are refused too."""
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(400))
    response = _exchange(internal, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert _problem(response)[0] == 431


def test_a_head_under_the_limit_is_served_however_it_is_split(internal: Launched) -> None:
    """12 KiB of headers sent in twenty writes is under the 16 KiB limit: served, not 431
    (the bytes of an unfinished head are counted once, not again when parsed)."""
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 12_000 + b"\r\n"
    head += b"Connection: close\r\n\r\n"
    with socket.create_connection(_address(internal), timeout=10) as conn:
        step = len(head) // 20 + 1
        for start in range(0, len(head), step):
            conn.sendall(head[start : start + step])
            time.sleep(0.01)
        response = b""
        while chunk := conn.recv(65536):
            response += chunk
    assert response.startswith(b"HTTP/1.1 200"), response[:200]


def test_a_client_that_sends_its_headers_slowly_is_dropped(internal: Launched) -> None:
    """Slowloris: a byte every 0.2 s keeps the socket busy but never completes the headers;
    the server closes it once the header timeout has passed."""
    with socket.create_connection(_address(internal), timeout=10) as conn:
        started = time.monotonic()
        closed_after = None
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"z" * 100:
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                closed_after = time.monotonic() - started
                break
            conn.settimeout(0.2)
            try:
                if conn.recv(1) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
    print(f"slow client dropped after {closed_after} s (header timeout {HEADER_TIMEOUT} s)")
    assert closed_after is not None, "the server kept waiting for the headers"
    assert closed_after < HEADER_TIMEOUT + 3


def test_a_malformed_request_gets_a_problem_not_text(internal: Launched) -> None:
    """What uvicorn answers by itself (a request it cannot parse) is problem+json too."""
    status, problem = _problem(_exchange(internal, b"GARBAGE\x00 / HTTP/1.1\r\n\r\n"))
    assert status == 400
    assert problem["title"] == "Bad Request"


def test_a_websocket_upgrade_gets_a_problem_not_an_empty_403(internal: Launched) -> None:
    """The servers offer no WebSocket: an upgrade request is answered like any request to a
    path that does not exist, with a problem."""
    request = (
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Connection: close\r\n\r\n"
    )
    status, problem = _problem(_exchange(internal, request))
    assert status == 404
    assert problem["status"] == 404


def test_a_read_token_cannot_write_and_a_write_names_its_token(
    internal: Launched, make_securities: MakeSecurities
) -> None:
    """The read token reads and is refused a PUT with 403 insufficient_scope; the write token
    writes, and the log line of that write names the token, never its secret."""
    [sid] = make_securities(1, with_scores=True)
    with httpx.Client(base_url=internal.url, timeout=10) as http:
        read = {"Authorization": f"Bearer {READER}"}
        write = {"Authorization": f"Bearer {WRITER}"}
        assert http.get(f"/scores/{sid}", headers=read).status_code == 200
        refused = http.put(f"/scores/{sid}", headers=read, json=BODY)
        assert refused.status_code == 403
        assert refused.headers["content-type"] == "application/problem+json"
        assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]
        written = http.put(f"/scores/{sid}", headers=write, json=BODY)
        assert written.status_code == 200, written.text
    internal.stop()
    assert f"PUT /scores/{sid} by token 'pipeline'" in internal.stderr
    assert WRITER not in internal.stderr
    assert READER not in internal.stderr


@pytest.mark.parametrize(
    "entry",
    ["x", "name:write:short", "name:admin:" + "s" * 32, ":write:" + "s" * 32, "s" * 40],
    ids=["one character", "short secret", "unknown scope", "no name", "no name or scope"],
)
def test_weak_or_anonymous_tokens_are_refused_at_start_up(entry: str) -> None:
    """A one-character token, a secret under 128 bits, a scope that does not exist, a token
    without a name: each stops the server from starting, and the error never shows it."""
    with pytest.raises(ConfigurationError) as refused:
        ServerSettings(api_tokens=(entry,))
    assert entry.rpartition(":")[2] not in str(refused.value) or len(entry) == 1


def test_token_names_and_secrets_are_unique() -> None:
    """Two tokens of one name, or two names for one secret, are a configuration error."""
    secret = secrets.token_urlsafe(16)
    with pytest.raises(ConfigurationError, match="unique"):
        ServerSettings(api_tokens=(f"a:read:{secret}", f"a:write:{secrets.token_urlsafe(16)}"))
    with pytest.raises(ConfigurationError, match="share a secret"):
        ServerSettings(api_tokens=(f"a:read:{secret}", f"b:write:{secret}"))
    token = ApiToken.parse(f"ci:read:{secret}")
    assert secret not in repr(token)
