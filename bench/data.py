"""The one data set every contender reads, and the namespaces they keep it under.

A fresh database (``securecache_bench`` unless told otherwise) with N securities and their
scores, set up by the same :func:`securecache.ops.provision.provision` as ``securecache dev``
and the tests, with the service roles' shared passwords (roles belong to the whole server:
setting passwords of our own would lock other sessions on the same server out).

The library keeps its entries under ``<prefix>:``; every other contender writes the same
records (as plain JSON-able dicts) under ``<prefix>-<name>:``, so that cleaning up is two
patterns and never a FLUSHALL on a shared Redis.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

import attrs
import psycopg
import redis
from psycopg import sql

from bench.workloads import HOT_KEYS
from securecache import Settings
from securecache.ops.dev import ServerInfo, role_passwords
from securecache.ops.provision import provision

SCORE_COLUMNS = "security_id, growth, value, quality, momentum, version, updated_at"


@attrs.frozen
class Dataset:
    """A seeded database: its URLs per role, the ids, and every score as a plain dict."""

    name: str
    admin_url: str = attrs.field(repr=False)
    writer_url: str = attrs.field(repr=False)
    reader_url: str = attrs.field(repr=False)
    ids: list[str]
    scores: dict[str, dict[str, Any]] = attrs.field(repr=False)


def score_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    """A score row as the wire JSON shape (``updated_at`` RFC 3339 UTC)."""
    keys = [c.strip() for c in SCORE_COLUMNS.split(",")]
    data = dict(zip(keys, row, strict=True))
    data["updated_at"] = (
        data["updated_at"].astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    )
    return data


def seed(servers: ServerInfo, name: str, keys: int) -> Dataset:
    """Drop and re-create database ``name`` with ``keys`` securities (``SEC000001``...)."""
    drop(servers, name)
    passwords = role_passwords(servers)
    ready = provision(
        servers.admin_url,
        name,
        writer_password=passwords.writer,
        reader_password=passwords.reader,
    )
    with psycopg.connect(ready.admin_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO securecache.security (id, name, symbol, exchange)"
            " SELECT format('SEC%%s', lpad(g::text, 6, '0')), format('Company %%s', g),"
            " format('T%%s', g), 'XNYS' FROM generate_series(1, %s) g",
            (keys,),
        )
        conn.execute(
            "INSERT INTO securecache.score (security_id, growth, value, quality, momentum)"
            " SELECT id, 5.5, 6.25, 7.75, 8.5 FROM securecache.security"
        )
        rows = conn.execute(
            sql.SQL("SELECT {} FROM securecache.score ORDER BY security_id").format(
                sql.SQL(SCORE_COLUMNS)
            )
        ).fetchall()
    scores = {row[0]: score_dict(row) for row in rows}
    return Dataset(
        name=name,
        admin_url=ready.admin_url,
        writer_url=ready.writer_url,
        reader_url=ready.reader_url,
        ids=sorted(scores),
        scores=scores,
    )


def drop(servers: ServerInfo, name: str) -> None:
    with psycopg.connect(servers.admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def clean_redis(redis_url: str, prefix: str) -> int:
    """Delete every key of this benchmark (``<prefix>:*`` and ``<prefix>-*``); how many."""
    client = redis.Redis.from_url(redis_url)
    deleted = 0
    try:
        for pattern in (f"{prefix}:*", f"{prefix}-*"):
            batch: list[bytes] = []
            for key in client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    deleted += int(client.delete(*batch))
                    batch.clear()
            if batch:
                deleted += int(client.delete(*batch))
    finally:
        client.close()
    return deleted


def chunks(items: list[str], size: int = 500) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@attrs.frozen
class Context:
    """What every phase of a run needs."""

    dataset: Dataset
    settings: Settings
    """The library's settings: the writer's database URL, the bench key prefix."""
    redis_url: str = attrs.field(repr=False)
    ops: int
    repeat: int

    @property
    def prefix(self) -> str:
        return self.settings.key_prefix

    @property
    def hot(self) -> list[str]:
        """Ids the hit workloads read (half the data set at most)."""
        return self.dataset.ids[: min(HOT_KEYS, len(self.dataset.ids) // 2)]

    @property
    def cold(self) -> list[str]:
        """Ids the miss workloads read: never touched by the hit workloads."""
        return self.dataset.ids[len(self.hot) :]

    def key(self, contender: str, id_: str) -> str:
        """Where a contender other than the library keeps ``id_``."""
        return f"{self.prefix}-{contender}:{id_}"
