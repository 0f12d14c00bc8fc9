"""The HTTP client examples run against the two apps, in process, over real servers."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import psycopg
import pytest
from opentelemetry import trace
from starlette.applications import Starlette

from securecache import Settings
from securecache.ops.dev import ServerInfo
from servers import internal_api, public_api
from servers.settings import ServerSettings

MakeSecurities = Callable[..., list[str]]
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TOKEN = "example-token-0123456789abcdef"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` (examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def started(app: Starlette) -> AsyncIterator[httpx.ASGITransport]:
    async with app.router.lifespan_context(app):
        yield httpx.ASGITransport(app)


@pytest.fixture
async def public(
    database: Any, servers: ServerInfo, key_prefix: str
) -> AsyncIterator[httpx.ASGITransport]:
    settings = Settings(
        database_url=database.reader_url, redis_url=servers.redis_url, key_prefix=key_prefix
    )
    app = public_api.create_app(settings, tracer_provider=trace.NoOpTracerProvider())
    async for transport in started(app):
        yield transport


@pytest.fixture
async def internal(
    database: Any, servers: ServerInfo, key_prefix: str
) -> AsyncIterator[httpx.ASGITransport]:
    settings = Settings(
        database_url=database.writer_url, redis_url=servers.redis_url, key_prefix=key_prefix
    )
    app = internal_api.create_app(
        settings,
        server=ServerSettings(api_tokens=(f"examples:write:{TOKEN}",)),
        tracer_provider=trace.NoOpTracerProvider(),
    )
    async for transport in started(app):
        yield transport


async def test_public_client_pages_and_revalidates(
    public: httpx.ASGITransport, make_securities: MakeSecurities
) -> None:
    """The public example lists every security in order and its second round is all 304s."""
    scored = make_securities(2, with_scores=True)
    (bare,) = make_securities(1)
    example = load_example("http_public_client")
    ids = [*scored, bare, "UNKNOWN-EX"]
    summary = await example.run("http://public", ids, transport=public, page_size=7)
    assert summary["listed"] >= 3
    assert summary["in_order"] is True
    assert summary["profiles"][scored[0]]["growth"] is not None
    assert summary["profiles"][bare] == {"symbol": "S0", "growth": None}
    assert summary["profiles"]["UNKNOWN-EX"] == {"symbol": None, "growth": None}
    # Second round: the security and score of each scored id, and the bare security.
    assert summary["not_modified"] == 2 * len(scored) + 1


async def test_internal_client_reads_and_never_loses_an_update(
    internal: httpx.ASGITransport,
    make_securities: MakeSecurities,
    admin_conn: psycopg.Connection[Any],
) -> None:
    """Two concurrent read-modify-writes both land: If-Match turns the race into a retry."""
    scored = make_securities(2, with_scores=True)
    example = load_example("http_internal_client")
    summary = await example.run(
        "http://internal", TOKEN, [*scored, "UNKNOWN-EX"], transport=internal
    )
    assert summary["found"] == scored
    assert summary["missing"] == ["UNKNOWN-EX"]
    assert summary["adjusted"] == scored[0]
    assert summary["growth_after"] == pytest.approx(summary["growth_before"] + 0.2)
    assert summary["version_after"] == 3
    row = admin_conn.execute(
        "SELECT growth, version FROM securecache.score WHERE security_id = %s", (scored[0],)
    ).fetchone()
    assert row is not None
    assert row[1] == 3
    assert row[0] == pytest.approx(summary["growth_before"] + 0.2)


async def test_internal_client_batch_write_and_errors(
    internal: httpx.ASGITransport, make_securities: MakeSecurities
) -> None:
    """The client's batch write reports created flags, and API errors carry the problem."""
    example = load_example("http_internal_client")
    (fresh,) = make_securities(1)
    async with httpx.AsyncClient(
        base_url="http://internal",
        transport=internal,
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as http:
        client = example.InternalClient(http)
        values = {"growth": 1.0, "value": 2.0, "quality": 3.0, "momentum": 4.0}
        written = await client.put_scores([{"security_id": fresh, **values}])
        assert [w["created"] for w in written] == [True]
        with pytest.raises(example.ApiError) as caught:
            await client.put_score(fresh, values | {"growth": 11})
        assert caught.value.status == 422
        assert caught.value.problem["invalid_params"][0]["name"] == "growth"
