"""The internal API over real PostgreSQL (as the writer role) and Redis: every route and error,
and proof that a rejected request writes nothing."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import psycopg
import pytest
from opentelemetry import trace
from starlette.applications import Starlette

from securecache import ConfigurationError, Settings
from securecache.ops.dev import ServerInfo
from servers import internal_api, public_api
from servers.settings import ServerSettings

MakeSecurities = Callable[..., list[str]]
TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SCORE = {"growth": 8.5, "value": 7.9, "quality": 9.1, "momentum": 6.8}


SERVER = ServerSettings(
    api_tokens=("other:write:another-token-0123456789abcdef", f"tests:write:{TOKEN}")
)


def internal_settings(database: Any, servers: ServerInfo, key_prefix: str) -> Settings:
    return Settings(
        database_url=database.writer_url, redis_url=servers.redis_url, key_prefix=key_prefix
    )


@pytest.fixture
async def app(database: Any, servers: ServerInfo, key_prefix: str) -> AsyncIterator[Starlette]:
    """The internal app as the writer role, started."""
    app = internal_api.create_app(
        internal_settings(database, servers, key_prefix),
        server=SERVER,
        tracer_provider=trace.NoOpTracerProvider(),
    )
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client of the internal app that sends the bearer token."""
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://internal", headers=AUTH
    ) as http:
        yield http


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail", "instance"} <= set(body)
    assert body["status"] == status
    assert "Traceback" not in response.text
    return body


def invalid_names(response: httpx.Response) -> list[str]:
    body = assert_problem(response, 422)
    return [p["name"] for p in body["invalid_params"]]


def db_row(conn: psycopg.Connection[Any], security_id: str) -> tuple[Any, ...] | None:
    """The score row as PostgreSQL has it (version included), or None."""
    return conn.execute(
        "SELECT growth, value, quality, momentum, version FROM securecache.score"
        " WHERE security_id = %s",
        (security_id,),
    ).fetchone()


# -- authentication -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "challenge"),
    [
        ({}, 'Bearer realm="securecache-internal"'),
        ({b"authorization": b"Basic dXNlcjpwYXNz"}, 'Bearer realm="securecache-internal"'),
        ({b"authorization": b"Bearer"}, 'error="invalid_token"'),
        ({b"authorization": b"Bearer wrong-token"}, 'error="invalid_token"'),
        ({b"authorization": f"Bearer {TOKEN}x".encode()}, 'error="invalid_token"'),
        ({b"authorization": f"Bearer {TOKEN[:-1]}".encode()}, 'error="invalid_token"'),
        ({b"authorization": "Bearer t\u00f6ken".encode("latin-1")}, 'error="invalid_token"'),
    ],
)
async def test_missing_or_wrong_token_is_401_and_writes_nothing(
    app: Starlette,
    make_securities: MakeSecurities,
    admin_conn: psycopg.Connection[Any],
    headers: dict[bytes, bytes],
    challenge: str,
) -> None:
    """Every route but the probes needs a configured token; a refused write changes nothing."""
    (sid,) = make_securities(1, with_scores=True)
    before = db_row(admin_conn, sid)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://internal"
    ) as http:
        for request in (
            http.build_request("GET", f"/scores/{sid}", headers=headers),
            http.build_request("GET", "/scores", params={"ids": sid}, headers=headers),
            http.build_request("PUT", f"/scores/{sid}", json=SCORE, headers=headers),
            http.build_request(
                "POST",
                "/scores/batch",
                json={"items": [{"security_id": sid, **SCORE}]},
                headers=headers,
            ),
        ):
            response = await http.send(request)
            body = assert_problem(response, 401)
            assert challenge in response.headers["www-authenticate"]
            assert TOKEN not in response.text
            assert body["type"] == "about:blank"
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/readyz")).status_code == 200
        assert (await http.get("/openapi.json")).status_code == 200
    assert db_row(admin_conn, sid) == before


async def test_every_configured_token_is_accepted(
    app: Starlette, make_securities: MakeSecurities
) -> None:
    """Any of the configured tokens works (tokens can be rotated one at a time)."""
    (sid,) = make_securities(1, with_scores=True)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://internal"
    ) as http:
        for token in ("another-token-0123456789abcdef", TOKEN):
            response = await http.get(
                f"/scores/{sid}", headers={"Authorization": f"bearer {token}"}
            )
            assert response.status_code == 200


def test_internal_api_refuses_to_start_without_tokens(database: Any) -> None:
    """No configured token is a configuration error, raised before serving anything."""
    with pytest.raises(ConfigurationError, match="bearer token"):
        internal_api.create_app(Settings(database_url=database.writer_url), server=ServerSettings())


async def test_tokens_from_the_environment_are_checked_at_startup(
    monkeypatch: pytest.MonkeyPatch, database: Any
) -> None:
    """With settings from the environment, the same check runs when the lifespan starts."""
    monkeypatch.setenv("SECURECACHE_DATABASE_URL", database.writer_url)
    monkeypatch.delenv("SECURECACHE_API_TOKENS", raising=False)
    monkeypatch.delenv("SECURECACHE_API_TOKENS_FILE", raising=False)
    app = internal_api.create_app(tracer_provider=trace.NoOpTracerProvider())
    with pytest.raises(ConfigurationError):
        async with app.router.lifespan_context(app):
            pass


# -- reads ----------------------------------------------------------------------------------


async def test_get_score_with_etag(
    client: httpx.AsyncClient, make_securities: MakeSecurities
) -> None:
    """GET /scores/{id} returns the Score with its version as ETag, never cacheable."""
    (sid,) = make_securities(1, with_scores=True)
    response = await client.get(f"/scores/{sid}")
    assert response.status_code == 200
    body = response.json()
    assert body["security_id"] == sid
    assert response.headers["etag"] == f'"{body["version"]}"'
    assert response.headers["cache-control"] == "no-store"


async def test_get_score_errors(client: httpx.AsyncClient, make_securities: MakeSecurities) -> None:
    """No score is 404, a malformed id is 422 naming ``security_id``."""
    (bare,) = make_securities(1)
    assert_problem(await client.get(f"/scores/{bare}"), 404)
    assert_problem(await client.get("/scores/UNKNOWN-1"), 404)
    assert invalid_names(await client.get("/scores/-bad")) == ["security_id"]


async def test_batch_read(client: httpx.AsyncClient, make_securities: MakeSecurities) -> None:
    """GET /scores?ids= answers the scores found in request order and lists the rest."""
    scored = make_securities(3, with_scores=True)
    (bare,) = make_securities(1)
    ids = [scored[2], bare, scored[0], "UNKNOWN-2", scored[2]]
    response = await client.get("/scores", params={"ids": ",".join(ids)})
    assert response.status_code == 200
    body = response.json()
    assert [s["security_id"] for s in body["items"]] == [scored[2], scored[0]]
    assert body["missing"] == [bare, "UNKNOWN-2"]
    repeated = await client.get("/scores", params=[("ids", scored[0]), ("ids", scored[1])])
    assert [s["security_id"] for s in repeated.json()["items"]] == scored[:2]


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"ids": ""},
        {"ids": "A1,,B2"},
        {"ids": "A1,-bad"},
        {"ids": ",".join(f"S{i}" for i in range(501))},
    ],
)
async def test_batch_read_errors(client: httpx.AsyncClient, params: dict[str, str]) -> None:
    """Missing, empty, malformed or too many ids are a 422 naming ``ids``."""
    assert invalid_names(await client.get("/scores", params=params)) == ["ids"]


# -- single writes --------------------------------------------------------------------------


async def test_put_creates_then_updates(
    client: httpx.AsyncClient,
    make_securities: MakeSecurities,
    admin_conn: psycopg.Connection[Any],
) -> None:
    """PUT answers 201 with Location when it creates, 200 when it updates; ETag follows."""
    (sid,) = make_securities(1)
    created = await client.put(f"/scores/{sid}", json=SCORE)
    assert created.status_code == 201
    assert created.headers["location"] == f"/scores/{sid}"
    assert created.headers["etag"] == '"1"'
    assert created.json()["growth"] == 8.5
    updated = await client.put(f"/scores/{sid}", json=SCORE | {"growth": 3})
    assert updated.status_code == 200
    assert "location" not in updated.headers
    assert updated.headers["etag"] == '"2"'
    assert db_row(admin_conn, sid) == (3.0, 7.9, 9.1, 6.8, 2)
    assert (await client.get(f"/scores/{sid}")).json() == updated.json()


async def test_if_match_guards_against_lost_updates(
    client: httpx.AsyncClient,
    make_securities: MakeSecurities,
    admin_conn: psycopg.Connection[Any],
) -> None:
    """If-Match with the current version writes; a stale one is 412 and writes nothing."""
    (sid,) = make_securities(1, with_scores=True)
    etag = (await client.get(f"/scores/{sid}")).headers["etag"]
    ok = await client.put(f"/scores/{sid}", json=SCORE, headers={"If-Match": etag})
    assert ok.status_code == 200
    assert ok.headers["etag"] == '"2"'
    before = db_row(admin_conn, sid)
    stale = await client.put(
        f"/scores/{sid}", json=SCORE | {"value": 0}, headers={"If-Match": etag}
    )
    body = assert_problem(stale, 412)
    assert body["type"] == "urn:securecache:problem:version-mismatch"
    assert body["current_version"] == 2
    assert db_row(admin_conn, sid) == before
    (unscored,) = make_securities(1)
    missing = await client.put(f"/scores/{unscored}", json=SCORE, headers={"If-Match": '"1"'})
    assert_problem(missing, 412)
    assert db_row(admin_conn, unscored) is None


@pytest.mark.parametrize(
    ("if_match", "status"),
    [
        ('"2"', 200),
        ('"7", "2"', 200),
        ("*", 200),
        ('"1"', 412),
        ('W/"2"', 412),
        ('"0"', 412),
        ('"abc", "1"', 412),
        ("", 412),
        (" , ", 412),
        ("2", 422),
        ('"2" "3"', 422),
        ('"2', 422),
    ],
)
async def test_if_match_forms(
    client: httpx.AsyncClient,
    make_securities: MakeSecurities,
    admin_conn: psycopg.Connection[Any],
    if_match: str,
    status: int,
) -> None:
    """If-Match per RFC 9110: ``*`` or a list, compared strongly (a weak tag never matches);
    anything not an entity-tag list is 422. Only a match writes."""
    (sid,) = make_securities(1, with_scores=True)
    await client.put(f"/scores/{sid}", json=SCORE)  # now at version 2
    before = db_row(admin_conn, sid)
    response = await client.put(
        f"/scores/{sid}", json=SCORE | {"growth": 0.5}, headers={"If-Match": if_match}
    )
    if status == 200:
        assert response.status_code == 200, response.text
        assert response.headers["etag"] == '"3"'
        assert db_row(admin_conn, sid) == (0.5, 7.9, 9.1, 6.8, 3)
        return
    body = assert_problem(response, status)
    if status == 422:
        assert [p["name"] for p in body["invalid_params"]] == ["If-Match"]
    assert db_row(admin_conn, sid) == before


async def test_if_match_star_needs_an_existing_score(
    client: httpx.AsyncClient,
    make_securities: MakeSecurities,
    admin_conn: psycopg.Connection[Any],
) -> None:
    """``If-Match: *`` on a security without a score is 412 (nothing to match); on an
    unknown security it is 404, as it is with any If-Match."""
    (bare,) = make_securities(1)
    assert_problem(await client.put(f"/scores/{bare}", json=SCORE, headers={"If-Match": "*"}), 412)
    assert db_row(admin_conn, bare) is None
    for if_match in ("*", '"1"', 'W/"1"'):
        response = await client.put("/scores/UNKNOWN-5", json=SCORE, headers={"If-Match": if_match})
        assert_problem(response, 404)


async def test_put_for_unknown_security_is_404(
    client: httpx.AsyncClient, admin_conn: psycopg.Connection[Any]
) -> None:
    """A score for a security that does not exist is 404, and no row appears."""
    body = assert_problem(await client.put("/scores/UNKNOWN-3", json=SCORE), 404)
    assert body["security_id"] == "UNKNOWN-3"
    assert db_row(admin_conn, "UNKNOWN-3") is None


@pytest.mark.parametrize(
    ("body", "name"),
    [
        (SCORE | {"growth": 10.01}, "growth"),
        (SCORE | {"value": -0.5}, "value"),
        (SCORE | {"quality": "9"}, "quality"),
        (SCORE | {"momentum": True}, "momentum"),
        (SCORE | {"momentum": None}, "momentum"),
        (SCORE | {"extra": 1}, "extra"),
        ({k: v for k, v in SCORE.items() if k != "value"}, "value"),
        ([SCORE], "body"),
        ("8.5", "body"),
    ],
)
async def test_invalid_score_is_422_and_writes_nothing(
    client: httpx.AsyncClient,
    make_securities: MakeSecurities,
    admin_conn: psycopg.Connection[Any],
    body: Any,
    name: str,
) -> None:
    """Out-of-range, mistyped, unknown or missing fields are a 422 naming the field."""
    (sid,) = make_securities(1, with_scores=True)
    before = db_row(admin_conn, sid)
    assert invalid_names(await client.put(f"/scores/{sid}", json=body)) == [name]
    assert db_row(admin_conn, sid) == before


async def test_body_errors_write_nothing(
    client: httpx.AsyncClient,
    make_securities: MakeSecurities,
    admin_conn: psycopg.Connection[Any],
) -> None:
    """Malformed JSON 400, wrong content type 415, oversize 413 (declared or streamed)."""
    (sid,) = make_securities(1, with_scores=True)
    before = db_row(admin_conn, sid)
    url = f"/scores/{sid}"
    json_type = {"Content-Type": "application/json"}

    body = assert_problem(await client.put(url, content=b'{"growth": 1,', headers=json_type), 400)
    assert body["type"] == "urn:securecache:problem:malformed-json"
    assert_problem(await client.put(url, content=b"\xff\xfe", headers=json_type), 400)
    assert_problem(await client.put(url, content=b'{"growth": NaN}', headers=json_type), 400)
    assert_problem(await client.put(url, content=b"", headers=json_type), 400)
    for content_type in ("text/plain", "application/x-www-form-urlencoded", ""):
        response = await client.put(url, content=b"{}", headers={"Content-Type": content_type})
        assert_problem(response, 415)
    latin1 = {"Content-Type": "application/json; charset=latin-1"}
    assert_problem(await client.put(url, json=SCORE, headers=latin1), 415)
    utf8 = {"Content-Type": "application/json; charset=UTF-8"}
    assert (await client.put(url, json=SCORE, headers=utf8)).status_code == 200
    before = db_row(admin_conn, sid)

    padded = b" " * internal_api.PUT_BODY_LIMIT + b"{}"
    assert_problem(await client.put(url, content=padded, headers=json_type), 413)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b" " * 1024

    streamed = await client.put(url, content=chunks(), headers=json_type)
    assert "content-length" not in streamed.request.headers
    assert_problem(streamed, 413)

    lying = client.build_request("PUT", url, content=padded, headers=json_type)
    lying.headers["Content-Length"] = "2"
    # The ASGI server would cut the body at the declared length; in process it arrives whole,
    # so the limit must hold on what is read, not on what is declared.
    assert_problem(await client.send(lying), 413)
    assert db_row(admin_conn, sid) == before


# -- batch writes ---------------------------------------------------------------------------


async def test_batch_write_reports_created_and_updated(
    client: httpx.AsyncClient,
    make_securities: MakeSecurities,
    admin_conn: psycopg.Connection[Any],
) -> None:
    """POST /scores/batch writes all items and says which were created."""
    (scored,) = make_securities(1, with_scores=True)
    fresh = make_securities(2)
    items = [{"security_id": i, **SCORE} for i in [fresh[0], scored, fresh[1]]]
    response = await client.post("/scores/batch", json={"items": items})
    assert response.status_code == 200
    result = response.json()["items"]
    assert [(r["score"]["security_id"], r["created"]) for r in result] == [
        (fresh[0], True),
        (scored, False),
        (fresh[1], True),
    ]
    assert [r["score"]["version"] for r in result] == [1, 2, 1]
    assert db_row(admin_conn, fresh[1]) == (8.5, 7.9, 9.1, 6.8, 1)


async def test_batch_write_later_item_wins(
    client: httpx.AsyncClient,
    make_securities: MakeSecurities,
    admin_conn: psycopg.Connection[Any],
) -> None:
    """Two items for one security: the later one is written, once."""
    (sid,) = make_securities(1)
    items = [{"security_id": sid, **SCORE}, {"security_id": sid, **SCORE, "growth": 1.0}]
    response = await client.post("/scores/batch", json={"items": items})
    assert response.status_code == 200
    assert len(response.json()["items"]) == 1
    assert db_row(admin_conn, sid) == (1.0, 7.9, 9.1, 6.8, 1)


async def test_batch_write_is_all_or_nothing(
    client: httpx.AsyncClient,
    make_securities: MakeSecurities,
    admin_conn: psycopg.Connection[Any],
) -> None:
    """One unknown security fails the whole batch with 404: the valid items are not written."""
    (scored,) = make_securities(1, with_scores=True)
    (fresh,) = make_securities(1)
    before = db_row(admin_conn, scored)
    items = [{"security_id": i, **SCORE} for i in (scored, "UNKNOWN-4", fresh)]
    body = assert_problem(await client.post("/scores/batch", json={"items": items}), 404)
    assert body["security_id"] == "UNKNOWN-4"
    assert db_row(admin_conn, scored) == before
    assert db_row(admin_conn, fresh) is None


def _item(security_id: str, **changes: Any) -> dict[str, Any]:
    return {"security_id": security_id, **SCORE, **changes}


BAD_BATCHES: list[tuple[Callable[[str], Any], str]] = [
    (lambda s: {}, "items"),
    (lambda s: {"items": []}, "items"),
    (lambda s: {"items": {}}, "items"),
    (lambda s: {"items": [_item(s)] * 501}, "items"),
    (lambda s: {"items": [_item(s)], "extra": 1}, "extra"),
    (lambda s: [_item(s)], "body"),
    (lambda s: {"items": [_item(s), 1]}, "items[1]"),
    (lambda s: {"items": [_item(s), SCORE]}, "items[1].security_id"),
    (lambda s: {"items": [_item(s), _item("-x")]}, "items[1].security_id"),
    (lambda s: {"items": [_item(s), _item(s, growth=11)]}, "items[1].growth"),
    (lambda s: {"items": [_item(s, x=0)]}, "items[0].x"),
]


@pytest.mark.parametrize(("make_body", "name"), BAD_BATCHES, ids=[n for _, n in BAD_BATCHES])
async def test_invalid_batch_is_422_and_writes_nothing(
    client: httpx.AsyncClient,
    make_securities: MakeSecurities,
    admin_conn: psycopg.Connection[Any],
    make_body: Callable[[str], Any],
    name: str,
) -> None:
    """A batch is validated whole before anything is written; the error names the item."""
    (sid,) = make_securities(1, with_scores=True)
    before = db_row(admin_conn, sid)
    response = await client.post("/scores/batch", json=make_body(sid))
    assert invalid_names(response) == [name]
    assert db_row(admin_conn, sid) == before


async def test_batch_body_limits(client: httpx.AsyncClient) -> None:
    """The batch route has the same body rules: JSON only, bounded size."""
    assert_problem(await client.post("/scores/batch", content=b"{}"), 415)
    big = b"[" + b" " * internal_api.BATCH_BODY_LIMIT + b"]"
    response = await client.post(
        "/scores/batch", content=big, headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 413)


# -- routing, probes, outages, and the two APIs together --------------------------------------


async def test_unknown_route_and_wrong_method(client: httpx.AsyncClient) -> None:
    """404 for unknown paths; 405 with every allowed method in Allow."""
    assert_problem(await client.get("/nope"), 404)
    assert_problem(await client.get("/scores/a/b"), 404)
    response = await client.delete("/scores/A1")
    assert_problem(response, 405)
    assert {m.strip() for m in response.headers["allow"].split(",")} == {"GET", "HEAD", "PUT"}
    for method in ("GET", "PUT", "DELETE"):
        response = await client.request(method, "/scores/batch")
        assert_problem(response, 405)
        assert response.headers["allow"] == "POST"
    assert_problem(await client.post("/scores", json={}), 405)


async def test_readiness_and_schema(client: httpx.AsyncClient) -> None:
    """/readyz reports PostgreSQL and Redis; /openapi.json documents bearer auth."""
    ready = await client.get("/readyz")
    assert ready.json() == {"status": "ready", "database": "ok", "redis": "ok"}
    spec = (await client.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    assert set(spec["paths"]) == {
        "/scores",
        "/scores/{security_id}",
        "/scores/batch",
        "/healthz",
        "/readyz",
        "/openapi.json",
    }


async def test_writes_while_postgresql_is_down_are_503(key_prefix: str) -> None:
    """With PostgreSQL unreachable a write is 503 with Retry-After."""
    settings = Settings(
        database_url="postgresql://nobody@127.0.0.1:9/none",
        key_prefix=key_prefix,
        db_timeout_seconds=0.3,
    )
    app = internal_api.create_app(
        settings, server=SERVER, tracer_provider=trace.NoOpTracerProvider()
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://i", headers=AUTH
        ) as http,
    ):
        response = await http.put("/scores/SEC1", json=SCORE)
        assert_problem(response, 503)
        assert int(response.headers["retry-after"]) >= 1
        items = {"items": [{"security_id": "SEC1", **SCORE}]}
        assert_problem(await http.post("/scores/batch", json=items), 503)
        assert_problem(await http.get("/scores", params={"ids": "SEC1"}), 503)


@pytest.fixture
async def as_reader(
    database: Any, servers: ServerInfo, key_prefix: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The internal app started, by mistake, with the reader's database URL; a client of it
    that sends the bearer token."""
    settings = internal_settings(database, servers, key_prefix)
    app = internal_api.create_app(
        settings.with_changes(database_url=database.reader_url),
        server=SERVER,
        tracer_provider=trace.NoOpTracerProvider(),
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://i", headers=AUTH
        ) as http,
    ):
        yield http


async def test_a_role_that_may_not_write_is_a_500_naming_the_setup(
    as_reader: httpx.AsyncClient,
    make_securities: MakeSecurities,
    admin_conn: psycopg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Run as the reader, a PUT or batch write is a 500 problem that says the service is
    misconfigured (no role, SQL or traceback shown), logged once each at ERROR; and nothing
    is written."""
    (sid,) = make_securities(1, with_scores=True)
    before = db_row(admin_conn, sid)
    caplog.set_level(logging.INFO, logger="securecache.servers")
    responses = [
        await as_reader.put(f"/scores/{sid}", json=SCORE),
        await as_reader.post("/scores/batch", json={"items": [{"security_id": sid, **SCORE}]}),
    ]
    for response in responses:
        body = assert_problem(response, 500)
        assert body["type"] == "about:blank"
        assert "misconfigured" in body["detail"]
        assert set(body) == {"type", "title", "status", "detail", "instance"}
        for internal in ("securecache_reader", "role", "insert", "read-only", "permission"):
            assert internal not in response.text.lower()
    logged = [r for r in caplog.records if r.name == "securecache.servers"]
    assert [r.levelno for r in logged] == [logging.ERROR, logging.ERROR]
    assert all("misconfigured" in r.getMessage() and r.exc_info is None for r in logged)
    assert "may not write scores" in logged[0].getMessage()
    assert db_row(admin_conn, sid) == before


async def test_a_write_is_visible_through_the_public_api_at_once(
    client: httpx.AsyncClient,
    database: Any,
    servers: ServerInfo,
    key_prefix: str,
    make_securities: MakeSecurities,
) -> None:
    """Public (reader) and internal (writer) share the cache: a PUT replaces what the public
    API had cached, so its next read already returns the new version."""
    (sid,) = make_securities(1, with_scores=True)
    public = public_api.create_app(
        Settings(
            database_url=database.reader_url, redis_url=servers.redis_url, key_prefix=key_prefix
        ),
        tracer_provider=trace.NoOpTracerProvider(),
    )
    async with (
        public.router.lifespan_context(public),
        httpx.AsyncClient(transport=httpx.ASGITransport(public), base_url="http://p") as http,
    ):
        cached = await http.get(f"/securities/{sid}/score")
        assert cached.headers["etag"] == '"1"'
        written = await client.put(f"/scores/{sid}", json=SCORE | {"momentum": 0.5})
        assert written.status_code == 200
        seen = await http.get(f"/securities/{sid}/score", headers={"If-None-Match": '"1"'})
        assert seen.status_code == 200
        assert seen.headers["etag"] == '"2"'
        assert seen.json() == written.json()
