"""The public API over real PostgreSQL (as the reader role) and Redis: every route and error."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import psycopg
import pytest
from opentelemetry import trace
from starlette.applications import Starlette

from securecache import Settings
from securecache.client import encode_cursor
from securecache.ops.dev import ServerInfo
from servers import public_api

MakeSecurities = Callable[..., list[str]]
PROBLEM_FIELDS = {"type", "title", "status", "detail", "instance"}


def public_settings(database: Any, servers: ServerInfo, key_prefix: str) -> Settings:
    return Settings(
        database_url=database.reader_url, redis_url=servers.redis_url, key_prefix=key_prefix
    )


@pytest.fixture
async def app(database: Any, servers: ServerInfo, key_prefix: str) -> AsyncIterator[Starlette]:
    """The public app as the reader role, started (its lifespan running)."""
    app = public_api.create_app(
        public_settings(database, servers, key_prefix), tracer_provider=trace.NoOpTracerProvider()
    )
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process HTTP client of the started public app."""
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://public") as http:
        yield http


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert set(body) >= PROBLEM_FIELDS
    assert body["status"] == status
    assert body["instance"] == response.request.url.raw_path.decode().partition("?")[0]
    assert "Traceback" not in response.text
    return body


async def test_security_is_served_with_etag_and_cache_control(
    client: httpx.AsyncClient, make_securities: MakeSecurities
) -> None:
    """GET /securities/{id} returns the record, its version as ETag and a public max-age."""
    (sid,) = make_securities(1)
    response = await client.get(f"/securities/{sid}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"id", "name", "symbol", "exchange", "version", "updated_at"}
    assert body["id"] == sid
    assert body["updated_at"].endswith("Z")
    assert response.headers["etag"] == f'"{body["version"]}"'
    assert response.headers["cache-control"] == f"public, max-age={public_api.MAX_AGE_SECONDS}"


@pytest.mark.parametrize("if_none_match", ['"1"', 'W/"1"', '"7", "1"', "*"])
async def test_matching_if_none_match_is_304(
    client: httpx.AsyncClient, make_securities: MakeSecurities, if_none_match: str
) -> None:
    """A client holding the current version gets 304, no body, the same tags."""
    (sid,) = make_securities(1)
    response = await client.get(f"/securities/{sid}", headers={"If-None-Match": if_none_match})
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == '"1"'
    assert response.headers["cache-control"].startswith("public, max-age=")


async def test_stale_if_none_match_gets_the_new_version(
    app: Starlette,
    client: httpx.AsyncClient,
    make_securities: MakeSecurities,
    admin_conn: psycopg.Connection[Any],
) -> None:
    """After a change made in PostgreSQL (and an invalidation), the old tag no longer matches."""
    (sid,) = make_securities(1, with_scores=True)
    first = await client.get(f"/securities/{sid}/score")
    assert first.headers["etag"] == '"1"'
    admin_conn.execute("UPDATE securecache.score SET growth = 1.5 WHERE security_id = %s", (sid,))
    await app.state.cache.invalidate(sid)
    second = await client.get(f"/securities/{sid}/score", headers={"If-None-Match": '"1"'})
    assert second.status_code == 200
    assert second.headers["etag"] == '"2"'
    assert second.json()["growth"] == 1.5


async def test_score_is_served(client: httpx.AsyncClient, make_securities: MakeSecurities) -> None:
    """GET /securities/{id}/score returns the Score JSON with its version as ETag."""
    (sid,) = make_securities(1, with_scores=True)
    response = await client.get(f"/securities/{sid}/score")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "security_id",
        "growth",
        "value",
        "quality",
        "momentum",
        "version",
        "updated_at",
    }
    assert body["security_id"] == sid
    assert response.headers["etag"] == f'"{body["version"]}"'
    again = await client.get(f"/securities/{sid}/score", headers={"If-None-Match": '"1"'})
    assert again.status_code == 304


async def test_absent_records_are_404(
    client: httpx.AsyncClient, make_securities: MakeSecurities
) -> None:
    """An unknown security, and a security without a score, are 404 problems (twice: the
    second answer comes from the negative cache)."""
    (bare,) = make_securities(1)
    for _ in range(2):
        body = assert_problem(await client.get("/securities/NOPE-404"), 404)
        assert body["type"] == "urn:securecache:problem:not-found"
        assert_problem(await client.get(f"/securities/{bare}/score"), 404)
        assert_problem(await client.get("/securities/NOPE-404/score"), 404)


@pytest.mark.parametrize("bad_id", ["-leading-dash", "a" * 65, "sp ace", "semi;colon", "ü"])
async def test_malformed_id_is_422(client: httpx.AsyncClient, bad_id: str) -> None:
    """Ids outside the data model's rules are 422 naming the parameter, for both routes."""
    for path in (f"/securities/{bad_id}", f"/securities/{bad_id}/score"):
        body = assert_problem(await client.get(path), 422)
        assert body["type"] == "urn:securecache:problem:invalid-request"
        assert [p["name"] for p in body["invalid_params"]] == ["id"]


async def test_listing_walks_every_page_in_id_order(
    client: httpx.AsyncClient, make_securities: MakeSecurities
) -> None:
    """Keyset pagination: pages in id order, each next_cursor continuing where it stopped,
    null on the last page."""
    ids = make_securities(5)
    start = encode_cursor(ids[0])  # just after our first id
    response = await client.get("/securities", params={"limit": 2, "cursor": start})
    assert response.status_code == 200
    page = response.json()
    assert [s["id"] for s in page["items"]] == ids[1:3]
    assert page["next_cursor"]
    response = await client.get("/securities", params={"limit": 2, "cursor": page["next_cursor"]})
    assert [s["id"] for s in response.json()["items"]] == ids[3:5]

    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 500} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/securities", params=params)).json()
        seen += [s["id"] for s in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen)
    assert set(ids) <= set(seen)


async def test_listing_default_limit_etag_and_304(
    client: httpx.AsyncClient, make_securities: MakeSecurities
) -> None:
    """Without a limit a page holds up to 50; its ETag is a digest of the body, and 304s."""
    make_securities(3)
    response = await client.get("/securities")
    assert response.status_code == 200
    assert 3 <= len(response.json()["items"]) <= public_api.DEFAULT_LIMIT
    etag = response.headers["etag"]
    assert etag.startswith('"')
    assert len(etag) > 10
    assert response.headers["cache-control"].startswith("public, max-age=")
    again = await client.get("/securities", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.headers["etag"] == etag


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": ""}, "limit"),
        ({"limit": "9" * 5000}, "limit"),
        ({"cursor": "!!!"}, "cursor"),
        ({"cursor": ""}, "cursor"),
        ({"cursor": "_w"}, "cursor"),
    ],
)
async def test_bad_listing_parameters_are_422(
    client: httpx.AsyncClient, params: dict[str, str], name: str
) -> None:
    """A limit outside 1..500 or a cursor this API never issued is a 422 naming it."""
    body = assert_problem(await client.get("/securities", params=params), 422)
    assert [p["name"] for p in body["invalid_params"]] == [name]


async def test_unknown_route_and_wrong_method(client: httpx.AsyncClient) -> None:
    """Unknown paths are 404 and unsupported methods 405 with Allow, both as problems."""
    assert_problem(await client.get("/nope"), 404)
    assert_problem(await client.get("/securities/"), 404)
    assert_problem(await client.get("/securities/a/b/c"), 404)
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        response = await client.request(method, "/securities/X1")
        assert_problem(response, 405)
        assert "GET" in response.headers["allow"]
    assert_problem(await client.post("/securities", json={}), 405)


async def test_probes_and_schema(client: httpx.AsyncClient) -> None:
    """/healthz is alive, /readyz sees PostgreSQL and Redis, /openapi.json lists every route."""
    health = await client.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "database": "ok", "redis": "ok"}
    spec = (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")
    assert set(spec["paths"]) == {
        "/securities",
        "/securities/{id}",
        "/securities/{id}/score",
        "/healthz",
        "/readyz",
        "/openapi.json",
    }


async def test_postgresql_down_is_503_with_retry_after(key_prefix: str) -> None:
    """With PostgreSQL unreachable a miss is 503 with Retry-After, and readiness fails."""
    settings = Settings(
        database_url="postgresql://nobody@127.0.0.1:9/none",
        key_prefix=key_prefix,
        db_timeout_seconds=0.3,
    )
    app = public_api.create_app(settings, tracer_provider=trace.NoOpTracerProvider())
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://p") as http,
    ):
        response = await http.get("/securities/SEC1")
        body = assert_problem(response, 503)
        assert body["type"] == "urn:securecache:problem:unavailable"
        assert int(response.headers["retry-after"]) >= 1
        assert_problem(await http.get("/securities"), 503)
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == {
            "status": "unavailable",
            "database": "unavailable",
            "redis": "disabled",
        }
        assert (await http.get("/healthz")).status_code == 200


async def test_requests_outside_the_lifespan_are_503(
    database: Any, servers: ServerInfo, key_prefix: str
) -> None:
    """A request before startup (or after shutdown) is told to retry, not given a 500."""
    app = public_api.create_app(
        public_settings(database, servers, key_prefix), tracer_provider=trace.NoOpTracerProvider()
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://p") as http:
        assert_problem(await http.get("/securities/SEC1"), 503)
        assert (await http.get("/readyz")).status_code == 503


async def test_unexpected_errors_are_a_bare_500(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug becomes a 500 problem that says nothing about the code (the log has the rest)."""

    async def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(app.state.cache.securities, "get", broken)
    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://public") as http:
        response = await http.get("/securities/SEC1")
    body = assert_problem(response, 500)
    assert body["type"] == "about:blank"
    assert "secret" not in response.text
    assert "RuntimeError" not in response.text


async def test_long_input_is_not_echoed_whole(client: httpx.AsyncClient) -> None:
    """Error messages quoting the request are clipped."""
    response = await client.get("/securities", params={"cursor": "x" * 5000})
    body = assert_problem(response, 422)
    assert len(body["detail"]) <= 500
    assert len(response.content) < 2000


def test_module_imports_without_environment() -> None:
    """``servers.public_api.app`` exists without any SECURECACHE_* variable set."""
    assert public_api.app is not None
