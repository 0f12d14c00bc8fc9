"""Schemathesis against both apps in process: each does what its OpenAPI document says.

Every check runs (server errors, status codes, content types, headers, response schemas,
positive data accepted, negative data rejected, unsupported methods, auth enforced), over
real PostgreSQL and Redis. Half of the ids it draws are ids that exist, so the 200 paths are
checked as well as the 404s. The documents are generated from the route declarations, so
this checks the generator as much as the handlers.

The documents are loaded from the servers' own ``OPENAPI`` data, and
:func:`test_served_documents_are_the_tested_ones` proves ``GET /openapi.json`` serves exactly
that. (``schemathesis.pytest.from_fixture``, which would load them over ASGI from an app built
in a fixture, fails under pytest 9: it writes ``Function._nodeid``, which pytest 9 removed.)

The project's ``schemathesis.toml`` (what ``schemathesis run`` reads against the running
servers) is loaded too: it tells one check that ``PUT /scores/{security_id}`` may answer 412
to a well-formed If-Match, and why. Last, the schemathesis CLI runs as a client would,
against both APIs launched as processes (``python -m servers``), in every phase.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, cast

import httpx
import orjson
import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from opentelemetry import trace
from schemathesis.config import SchemathesisConfig
from schemathesis.schemas import BaseSchema

from launched import launch_environment, launched
from securecache.ops.dev import ServerInfo
from servers import internal_api, public_api

ROOT: Final = Path(__file__).resolve().parent.parent
PROJECT_CONFIG: Final = tomllib.loads((ROOT / "schemathesis.toml").read_text(encoding="utf-8"))
TOKEN: Final = "schemathesis-token-0123456789abcdef"
MAX_EXAMPLES: Final = 25
SCORED: Final = [f"STH-SCORED-{i:02d}" for i in range(20)]
BARE: Final = [f"STH-BARE-{i:02d}" for i in range(5)]
"""Securities that exist (with and without a score); fixed, so the config can name them."""

TestFunction = Callable[..., None]


def load(document: dict[str, Any], *id_parameters: str, **extra: Any) -> BaseSchema:
    """The document as served (JSON), modest example counts, ids half the time real ones."""
    config = SchemathesisConfig.from_dict(
        {
            **PROJECT_CONFIG,
            "generation": {"max-examples": MAX_EXAMPLES},
            "dictionaries": {"ids": {"values": SCORED + BARE}},
            "parameters": {
                name: {"dictionary": "ids", "probability": 0.5} for name in id_parameters
            },
            **extra,
        }
    )
    return schemathesis.openapi.from_dict(orjson.loads(orjson.dumps(document)), config=config)


def parametrize(schema: BaseSchema) -> Callable[[TestFunction], TestFunction]:
    """``schema.parametrize()``, typed for mypy: one test per operation of ``schema``."""
    return cast("Callable[[TestFunction], TestFunction]", schema.parametrize())


public = load(public_api.OPENAPI, "path.id")
internal = load(
    internal_api.OPENAPI,
    "path.security_id",
    "body.items[*].security_id",
    auth={"openapi": {"bearer": {"bearer": TOKEN}}},
)


@pytest.fixture
def seeded(database: Any) -> None:
    """The securities the config names, present (idempotent: the database is the session's)."""
    with psycopg.connect(database.admin_url, autocommit=True) as conn, conn.transaction():
        for security_id in SCORED + BARE:
            conn.execute(
                "INSERT INTO securecache.security (id, name, symbol, exchange)"
                " VALUES (%s, %s, 'STH', 'XTST') ON CONFLICT (id) DO NOTHING",
                (security_id, f"Schemathesis {security_id}"),
            )
        for security_id in SCORED:
            conn.execute(
                "INSERT INTO securecache.score (security_id, growth, value, quality, momentum)"
                " VALUES (%s, 5, 5, 5, 5) ON CONFLICT (security_id) DO NOTHING",
                (security_id,),
            )


# One app per API for the module, configured like a deployed server: from SECURECACHE_*
# variables read when its lifespan starts. Schemathesis starts that lifespan at a test's first
# request and stops it at the test's teardown, so each test's variables (its own key prefix)
# apply to it.
PUBLIC_APP: Final = public_api.create_app(tracer_provider=trace.NoOpTracerProvider())
INTERNAL_APP: Final = internal_api.create_app(tracer_provider=trace.NoOpTracerProvider())
public.app = PUBLIC_APP
internal.app = INTERNAL_APP


def set_environment(
    monkeypatch: pytest.MonkeyPatch, database_url: str, redis_url: str, key_prefix: str
) -> None:
    for name in list(os.environ):
        if name.startswith("SECURECACHE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SECURECACHE_DATABASE_URL", database_url)
    monkeypatch.setenv("SECURECACHE_REDIS_URL", redis_url)
    monkeypatch.setenv("SECURECACHE_KEY_PREFIX", key_prefix)
    monkeypatch.setenv("SECURECACHE_API_TOKENS", f"schemathesis:write:{TOKEN}")


@pytest.fixture
def reader_env(
    monkeypatch: pytest.MonkeyPatch,
    seeded: None,
    database: Any,
    servers: ServerInfo,
    key_prefix: str,
) -> None:
    """The public app's variables: the reader role, this test's key prefix."""
    set_environment(monkeypatch, database.reader_url, servers.redis_url, key_prefix)


@pytest.fixture
def writer_env(
    monkeypatch: pytest.MonkeyPatch,
    seeded: None,
    database: Any,
    servers: ServerInfo,
    key_prefix: str,
) -> None:
    """The internal app's variables: the writer role, a token, this test's key prefix."""
    set_environment(monkeypatch, database.writer_url, servers.redis_url, key_prefix)


# One app per operation, shared by its examples on purpose: like a server, it must not need a
# fresh start between requests.
SHARED_APP: Final = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


@parametrize(public)
@SHARED_APP
def test_public_api_matches_its_openapi(case: Any, reader_env: None) -> None:
    """Every public operation, with generated valid and invalid input, passes every check."""
    case.call_and_validate()


@parametrize(internal)
@SHARED_APP
def test_internal_api_matches_its_openapi(case: Any, writer_env: None) -> None:
    """Every internal operation, authenticated, passes every check (auth probes included)."""
    case.call_and_validate()


@pytest.mark.usefixtures("writer_env")
async def test_served_documents_are_the_tested_ones() -> None:
    """GET /openapi.json serves exactly the documents schemathesis tested."""
    for app, schema in ((PUBLIC_APP, public), (INTERNAL_APP, internal)):
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://x") as http,
        ):
            assert (await http.get("/openapi.json")).json() == schema.raw_schema


# -- as a client would: the schemathesis CLI against the launched servers ---------------------

CLI_MAX_EXAMPLES: Final = 10


def schemathesis_cli(url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``schemathesis run <url>/openapi.json --checks all``, every phase, the project's
    schemathesis.toml; modest example counts, so the suite stays quick."""
    return subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "--config-file",
            str(ROOT / "schemathesis.toml"),
            "run",
            f"{url}/openapi.json",
            "--checks",
            "all",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            str(CLI_MAX_EXAMPLES),
            "--no-color",
            *args,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )


def test_the_running_servers_pass_the_schemathesis_cli(
    seeded: None, database: Any, servers: ServerInfo, key_prefix: str, tmp_path: Path
) -> None:
    """``python -m servers public`` and ``internal``, each as its own role, pass
    ``schemathesis run --checks all`` in every phase (examples, coverage, fuzzing, stateful)."""
    common = {
        "SECURECACHE_REDIS_URL": servers.redis_url,
        "SECURECACHE_KEY_PREFIX": key_prefix,
    }
    public_env = launch_environment(SECURECACHE_DATABASE_URL=database.reader_url, **common)
    internal_env = launch_environment(
        SECURECACHE_DATABASE_URL=database.writer_url,
        SECURECACHE_API_TOKENS=f"schemathesis:write:{TOKEN}",
        **common,
    )
    with launched("public", public_env) as public_server:
        result = schemathesis_cli(public_server.url, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    with launched("internal", internal_env) as internal_server:
        result = schemathesis_cli(
            internal_server.url, tmp_path, "--header", f"Authorization: Bearer {TOKEN}"
        )
    assert result.returncode == 0, result.stdout + result.stderr
