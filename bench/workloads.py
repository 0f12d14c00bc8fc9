"""What the benchmark measures: every workload, who runs it, and what it is compared with.

One catalog, read by the harness (it emits a row for every pair here, measured or marked not
available), by the report and the chart (labels, baselines) and by the smoke test (every
workload present). A workload's *baseline* is the contender its ratios are taken against:
the bare client for hits, a naive cache-aside for misses, a constant-JSON endpoint for HTTP.
"""

from __future__ import annotations

from typing import Final

import attrs

CONCURRENCY: Final = 64
"""Tasks issuing single gets at once (and misses at once) in the concurrent workloads."""
BATCH: Final = 100
"""Keys per ``get_many`` / ``MGET``."""
HERD: Final = 500
"""Concurrent cold reads of one key in the herd workload."""
HOT_KEYS: Final = 1000
"""Keys read again and again by the hit workloads (all cached before timing)."""


@attrs.frozen
class Workload:
    id: str
    label: str
    contenders: tuple[str, ...]
    baseline: tuple[str, str] | None
    """``(workload, contender)`` whose figures this workload's ratios divide by."""
    description: str


HTTP_CONTENDERS: Final = ("constant", "public_api", "public_api_near", "public_api_no_metrics")
"""The servers wrk measures; the last is context: what the request metrics cost."""

WORKLOADS: Final = (
    Workload(
        "lone_get",
        "lone get, sequential",
        ("floor", "securecache", "aiocache", "cashews"),
        ("lone_get", "floor"),
        "One task, one key per call, every key already in Redis.",
    ),
    Workload(
        "concurrent_get_64",
        f"{CONCURRENCY} tasks of single gets",
        ("floor", "securecache", "aiocache", "cashews"),
        ("concurrent_get_64", "floor"),
        f"{CONCURRENCY} tasks at once, each calling get for one key after another.",
    ),
    Workload(
        "get_many_100",
        f"get_many of {BATCH}",
        ("floor", "securecache", "aiocache", "cashews"),
        ("get_many_100", "floor"),
        f"One task, {BATCH} keys per call (MGET).",
    ),
    Workload(
        "sync_lone_get",
        "sync lone get",
        ("floor", "securecache", "dogpile"),
        ("sync_lone_get", "floor"),
        "One thread, one key per call.",
    ),
    Workload(
        "sync_get_many_100",
        f"sync get_many of {BATCH}",
        ("floor", "securecache"),
        ("sync_get_many_100", "floor"),
        f"One thread, {BATCH} keys per call.",
    ),
    Workload(
        "near_hit",
        "near-cache hit, sequential",
        ("securecache_near", "cashews_client_side", "cachetools"),
        ("lone_get", "floor"),
        "In-process hits; compared with the bare Redis GET of the lone-get workload.",
    ),
    Workload(
        "miss_sequential",
        "miss + fill, sequential",
        ("securecache", "naive"),
        ("miss_sequential", "naive"),
        "One task; every key made cold (outside the timing) before the run.",
    ),
    Workload(
        "miss_concurrent_64",
        f"miss + fill, {CONCURRENCY} tasks",
        ("securecache", "naive"),
        ("miss_concurrent_64", "naive"),
        f"{CONCURRENCY} tasks at once, each reading cold keys one after another.",
    ),
    Workload(
        "cold_herd_500",
        f"{HERD} concurrent cold reads of one key",
        ("securecache", "naive"),
        ("cold_herd_500", "naive"),
        f"{HERD} gets of one cold key at the same moment; PostgreSQL queries counted.",
    ),
    Workload(
        "put",
        "put (write-through)",
        ("securecache",),
        None,
        "Commit in PostgreSQL, then the versioned cache write: context only.",
    ),
    Workload(
        "http_get_security",
        "HTTP GET /securities/{id}",
        HTTP_CONTENDERS,
        ("http_get_security", "constant"),
        "wrk against a real server process; one cached security.",
    ),
)

BY_ID: Final = {w.id: w for w in WORKLOADS}

LABELS: Final = {
    "floor": "bare redis-py + orjson (floor)",
    "securecache": "securecache",
    "securecache_near": "securecache near cache",
    "aiocache": "aiocache RedisCache",
    "cashews": "cashews (redis)",
    "cashews_client_side": "cashews client-side cache",
    "dogpile": "dogpile.cache redis",
    "cachetools": "cachetools TTLCache (in-process)",
    "naive": "naive cache-aside (redis-py + psycopg)",
    "constant": "constant-JSON Starlette endpoint",
    "public_api": "public API",
    "public_api_near": "public API + near cache",
    "public_api_no_metrics": "public API, metrics off",
}
"""Default labels; a measurement may name its contender more precisely (GET or MGET...)."""


def expected_pairs() -> list[tuple[str, str]]:
    """Every ``(workload, contender)`` a complete results file holds, in catalog order."""
    return [(w.id, c) for w in WORKLOADS for c in w.contenders]
