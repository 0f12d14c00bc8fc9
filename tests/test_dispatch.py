"""Direct dispatch (servers.dispatch) answers exactly as Starlette's own layers do.

Each app is compared with its twin: the same routes, telemetry and exception handlers, without
the direct dispatch middleware, sharing the started app's SecureCache. Every request gets the
same status, headers and body from both; the requests our routes serve skip Starlette's
layers (counted at PathEndpoint, which only Starlette's router calls).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import httpx
import pytest
from opentelemetry import trace
from starlette.applications import Starlette

from securecache import Settings
from securecache.ops.dev import ServerInfo
from servers import internal_api, public_api
from servers.dispatch import DirectDispatch
from servers.routes import PathEndpoint
from servers.settings import ServerSettings

MakeSecurities = Callable[..., list[str]]
TOKEN = "dispatch-token-0123456789abcdef"
READ_TOKEN = "dispatch-reader-0123456789abcdef"
SERVER = ServerSettings(api_tokens=(f"writer:write:{TOKEN}", f"reader:read:{READ_TOKEN}"))


def twin(app: Starlette) -> Starlette:
    """``app`` without direct dispatch, on the same started cache."""
    other = Starlette(
        routes=app.routes,
        middleware=[m for m in app.user_middleware if m.cls is not cast(Any, DirectDispatch)],
        exception_handlers=app.exception_handlers,
    )
    other.router.redirect_slashes = app.router.redirect_slashes
    other.state.cache = app.state.cache
    other.state.openapi = app.state.openapi
    for name in ("tokens", "auth"):
        if hasattr(app.state, name):
            setattr(other.state, name, getattr(app.state, name))
    return other


def seen(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    return response.status_code, sorted(response.headers.multi_items()), response.content


@pytest.fixture
def endpoint_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Paths whose PathEndpoint Starlette's router called."""
    calls: list[str] = []
    original = PathEndpoint.__call__

    async def counted(self: PathEndpoint, scope: Any, receive: Any, send: Any) -> None:
        calls.append(self.path)
        await original(self, scope, receive, send)

    monkeypatch.setattr(PathEndpoint, "__call__", counted)
    return calls


async def clients(app: Starlette) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://api") as direct,
        httpx.AsyncClient(transport=httpx.ASGITransport(twin(app)), base_url="http://api") as plain,
    ):
        yield direct, plain


async def test_the_public_api_answers_alike_with_and_without_direct_dispatch(
    database: Any,
    servers: ServerInfo,
    key_prefix: str,
    make_securities: MakeSecurities,
    endpoint_calls: list[str],
) -> None:
    """Reads, conditional reads, absent and malformed ids, a method the path lacks, unknown
    paths, HEAD, the listing, the probes and the document: the same answers; the records'
    reads never reach Starlette's router."""
    sid, other = make_securities(2, with_scores=True)
    settings = Settings(
        database_url=database.reader_url, redis_url=servers.redis_url, key_prefix=key_prefix
    )
    app = public_api.create_app(settings, tracer_provider=trace.NoOpTracerProvider())
    requests: list[tuple[str, str, dict[str, str]]] = [
        ("GET", f"/securities/{sid}", {}),
        ("GET", f"/securities/{sid}", {"If-None-Match": '"1"'}),
        ("GET", f"/securities/{sid}", {"If-None-Match": "not a tag"}),
        ("GET", f"/securities/{other}/score", {}),
        ("GET", "/securities/NOSUCH000000", {}),
        ("GET", "/securities/NOSUCH000000/score", {}),
        ("GET", "/securities/bad%20id", {}),
        ("GET", "/securities/" + "A" * 65, {}),
        ("HEAD", f"/securities/{sid}", {}),
        ("DELETE", f"/securities/{sid}", {}),
        ("GET", "/securities/", {}),
        ("GET", "/no/such/path", {}),
        ("GET", "/securities?limit=2", {}),
        ("GET", "/securities?limit=0", {}),
        ("GET", "/healthz", {}),
        ("GET", "/openapi.json", {}),
    ]
    async for direct, plain in clients(app):
        for method, path, headers in requests:
            ours = await direct.request(method, path, headers=headers)
            calls_before = len(endpoint_calls)
            theirs = await plain.request(method, path, headers=headers)
            assert len(endpoint_calls) > calls_before or theirs.status_code in (404, 405)
            assert seen(ours) == seen(theirs), (method, path)
        endpoint_calls.clear()
        assert (await direct.get(f"/securities/{sid}")).status_code == 200
        assert (await direct.get("/securities/NOSUCH000000")).status_code == 404
        assert endpoint_calls == []  # served directly, errors included


async def test_the_internal_api_answers_alike_with_and_without_direct_dispatch(
    database: Any, servers: ServerInfo, key_prefix: str, make_securities: MakeSecurities
) -> None:
    """Authentication (none, unknown, a read token writing), bodies refused for their type,
    size or values, a write to an unknown security, and successful writes and reads: the
    same statuses and problem bodies; the writes of each app go to ids of their own."""
    ids = make_securities(4)
    settings = Settings(
        database_url=database.writer_url, redis_url=servers.redis_url, key_prefix=key_prefix
    )
    app = internal_api.create_app(
        settings, server=SERVER, tracer_provider=trace.NoOpTracerProvider()
    )
    write = {"Authorization": f"Bearer {TOKEN}"}
    read = {"Authorization": f"Bearer {READ_TOKEN}"}
    score = {"growth": 8.5, "value": 7.9, "quality": 9.1, "momentum": 6.8}
    same: list[tuple[str, str, dict[str, str], Any]] = [
        ("GET", f"/scores/{ids[0]}", {}, None),
        ("GET", f"/scores/{ids[0]}", {"Authorization": "Bearer nope"}, None),
        ("PUT", f"/scores/{ids[0]}", read, score),
        ("PUT", f"/scores/{ids[0]}", write, {**score, "growth": 11}),
        ("PUT", "/scores/NOSUCH000000", write, score),
        ("GET", f"/scores/{ids[0]}", read, None),
        ("GET", f"/scores?ids={ids[0]},{ids[1]}", read, None),
        ("POST", "/scores/batch", write, {"items": []}),
    ]
    async for direct, plain in clients(app):
        for method, path, headers, body in same:
            ours = await direct.request(method, path, headers=headers, json=body)
            theirs = await plain.request(method, path, headers=headers, json=body)
            assert seen(ours) == seen(theirs), (method, path)
        raw = {**write, "Content-Type": "text/plain"}
        ours = await direct.request("PUT", f"/scores/{ids[0]}", headers=raw, content=b"x")
        theirs = await plain.request("PUT", f"/scores/{ids[0]}", headers=raw, content=b"x")
        assert seen(ours) == seen(theirs)
        created = await direct.put(f"/scores/{ids[2]}", headers=write, json=score)
        also_created = await plain.put(f"/scores/{ids[3]}", headers=write, json=score)
        assert created.status_code == also_created.status_code == 201
        assert created.headers["etag"] == also_created.headers["etag"] == '"1"'
