"""Real PostgreSQL and Redis for the suite, and the per-test things built on them.

The servers are chosen once per session: those of ``SECURECACHE_DATABASE_URL`` (an admin URL
able to create databases and roles) and ``SECURECACHE_REDIS_URL`` when both are set,
otherwise embedded ones started here. Nothing is ever skipped for want of a server: a green
run always talked to the real thing, and the report header says which.

Tests share servers with other sessions (several engineers, CI jobs), so everything they
create is private: a database of their own (``sctest_<hex>``), Redis keys under a unique
prefix, removed afterwards; never FLUSHALL.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, Protocol

import attrs
import psycopg
import pytest
import redis
from psycopg import sql

from fix_cluster import RedisTarget, delete_prefix
from securecache.ops.defaults import STATE_DIR_NAME
from securecache.ops.dev import (
    EmbeddedServers,
    ServerInfo,
    ServersBusyError,
    external_servers,
    role_passwords,
)
from securecache.ops.provision import derive_url, provision
from securecache.settings import Settings

DATABASE_PREFIX: Final = "sctest_"
EMBEDDED_SLOTS: Final = 16
"""Concurrent sessions in one tree each take a slot ``.securecache/test-<n>``."""
_WORKER_KEY: Final = "securecache_servers"
_SERVERS = pytest.StashKey[ServerInfo]()
_EMBEDDED = pytest.StashKey[EmbeddedServers]()


@attrs.frozen
class Database:
    """A migrated database of this session, with a URL per role."""

    name: str
    admin_url: str = attrs.field(repr=False)
    writer_url: str = attrs.field(repr=False)
    reader_url: str = attrs.field(repr=False)


@attrs.frozen
class EmptyDatabase:
    """A brand-new database of one test, not migrated."""

    name: str
    admin_url: str = attrs.field(repr=False)


class MakeSecurities(Protocol):
    def __call__(self, n: int, *, with_scores: bool = False) -> list[str]: ...


# -- session servers ------------------------------------------------------------------------


def state_base(config: pytest.Config) -> Path:
    return config.rootpath / STATE_DIR_NAME


def pytest_configure(config: pytest.Config) -> None:
    if config.option.help or config.option.version:
        return
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is not None:  # an xdist worker: the controller started the servers
        fields = dict(workerinput[_WORKER_KEY])
        state_dir = fields.pop("state_dir")
        config.stash[_SERVERS] = ServerInfo(
            **fields, state_dir=Path(state_dir) if state_dir else None
        )
        return
    database_url = os.environ.get("SECURECACHE_DATABASE_URL")
    redis_url = os.environ.get("SECURECACHE_REDIS_URL")
    if database_url and redis_url:
        try:
            config.stash[_SERVERS] = external_servers(database_url, redis_url)
        except (psycopg.Error, redis.RedisError) as exc:
            raise pytest.UsageError(
                f"the servers of SECURECACHE_DATABASE_URL / SECURECACHE_REDIS_URL do not answer: "
                f"{' '.join(str(exc).split())}"
            ) from exc
    elif database_url or redis_url:
        raise pytest.UsageError(
            "set both SECURECACHE_DATABASE_URL and SECURECACHE_REDIS_URL, or neither to test "
            "on embedded servers"
        )
    else:
        embedded = _start_embedded(state_base(config))
        config.stash[_EMBEDDED] = embedded
        config.stash[_SERVERS] = embedded.info()


def _start_embedded(base: Path) -> EmbeddedServers:
    for slot in range(EMBEDDED_SLOTS):
        embedded = EmbeddedServers(f"test-{slot}", base_dir=base)
        try:
            embedded.start()
        except ServersBusyError:
            continue
        try:
            _drop_stale_databases(embedded.info())
        except BaseException:
            embedded.stop()
            raise
        return embedded
    raise pytest.UsageError(f"all {EMBEDDED_SLOTS} embedded server slots in {base} are in use")


def _drop_stale_databases(servers: ServerInfo) -> None:
    """The slot is ours alone, so databases a crashed session left in it can go."""
    with psycopg.connect(servers.admin_url, autocommit=True) as conn:
        stale = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s",
            (DATABASE_PREFIX.replace("_", r"\_") + "%",),
        ).fetchall()
        for (name,) in stale:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def pytest_unconfigure(config: pytest.Config) -> None:
    embedded = config.stash.get(_EMBEDDED, None)
    if embedded is not None:
        embedded.stop()
        del config.stash[_EMBEDDED]


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: hand the controller's servers to each worker instead of starting more."""
    info = node.config.stash[_SERVERS]
    node.workerinput[_WORKER_KEY] = {
        "kind": info.kind,
        "admin_url": info.admin_url,
        "redis_url": info.redis_url,
        "postgres_version": info.postgres_version,
        "redis_version": info.redis_version,
        "state_dir": str(info.state_dir) if info.state_dir else None,  # execnet: plain types
    }


def pytest_report_header(config: pytest.Config) -> str | None:
    info = config.stash.get(_SERVERS, None)
    return None if info is None else f"securecache servers: {info.describe()}"


# -- databases ------------------------------------------------------------------------------


def create_database(servers: ServerInfo) -> str:
    name = DATABASE_PREFIX + secrets.token_hex(6)
    with psycopg.connect(servers.admin_url, autocommit=True) as conn:
        # template0: template1 may be busy with another session's connection.
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    return name


def drop_database(servers: ServerInfo, name: str) -> None:
    with psycopg.connect(servers.admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def servers(pytestconfig: pytest.Config) -> ServerInfo:
    """The session's PostgreSQL and Redis (external or embedded)."""
    return pytestconfig.stash[_SERVERS]


@pytest.fixture(scope="session")
def database(servers: ServerInfo, pytestconfig: pytest.Config) -> Iterator[Database]:
    """A migrated database of this session, dropped at its end."""
    name = DATABASE_PREFIX + secrets.token_hex(6)
    try:
        passwords = role_passwords(servers, state_base(pytestconfig))
        ready = provision(
            servers.admin_url,
            name,
            writer_password=passwords.writer,
            reader_password=passwords.reader,
        )
        yield Database(
            name=name,
            admin_url=ready.admin_url,
            writer_url=ready.writer_url,
            reader_url=ready.reader_url,
        )
    finally:
        drop_database(servers, name)


@pytest.fixture
def empty_database(servers: ServerInfo) -> Iterator[EmptyDatabase]:
    """A new database, not migrated, dropped after the test."""
    name = create_database(servers)
    try:
        yield EmptyDatabase(name=name, admin_url=derive_url(servers.admin_url, dbname=name))
    finally:
        drop_database(servers, name)


@pytest.fixture
def admin_conn(database: Database) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """An autocommit connection to the session database as the administrator."""
    with psycopg.connect(database.admin_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def make_securities(admin_conn: psycopg.Connection[tuple[Any, ...]]) -> MakeSecurities:
    """Insert ``n`` securities with ids unique to the call (``T<hex10>-000001``...): 40 random
    bits, so that the thousands of calls of a session never collide (24 bits once did)."""

    def make(n: int, *, with_scores: bool = False) -> list[str]:
        tag = "T" + secrets.token_hex(5)
        ids = [f"{tag}-{i:06d}" for i in range(1, n + 1)]
        with admin_conn.transaction(), admin_conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO securecache.security (id, name, symbol, exchange) "
                "VALUES (%s, %s, %s, %s)",
                [(id_, f"Test Security {id_}", f"S{i}", "XTST") for i, id_ in enumerate(ids)],
            )
            if with_scores:
                cur.executemany(
                    "INSERT INTO securecache.score (security_id, growth, value, quality, "
                    "momentum) VALUES (%s, %s, %s, %s, %s)",
                    [(id_, i % 11, 5.5, 10.0 - i % 11, 0.25) for i, id_ in enumerate(ids)],
                )
        return ids

    return make


# -- Redis and settings ---------------------------------------------------------------------


@pytest.fixture
def key_prefix(redis_target: RedisTarget) -> Iterator[str]:
    """A Redis key prefix of this test; every ``<prefix>:*`` key is deleted afterwards."""
    prefix = "t" + secrets.token_hex(4)
    yield prefix
    client = redis_target.admin_client()
    try:
        delete_prefix(client, prefix)
    finally:
        client.close()


@pytest.fixture
def redis_admin(redis_target: RedisTarget) -> Iterator[redis.Redis]:
    """A client on the session's Redis (a cluster client in cluster mode), as its
    administrator."""
    client = redis_target.admin_client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def settings(database: Database, redis_target: RedisTarget, key_prefix: str) -> Settings:
    """Library settings for this test: the writer's URL and a private key prefix."""
    return Settings(
        database_url=database.writer_url,
        redis_url=redis_target.url,
        redis_cluster=redis_target.cluster,
        key_prefix=key_prefix,
    )
