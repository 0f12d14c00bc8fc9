"""The "Must show" ratios of issue 10, computed from a results file, with PASS or FAIL.

Each goal divides one measured figure by another of the same run (a p50 by a p50, a
throughput by a throughput) and compares the ratio with its target. A goal whose figures were
not measured in the run (a contender not available here) is ``N/A``, never a pass.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Literal

import attrs

from bench.workloads import LABELS

TIMES: Final = "\u00d7"
"""The multiplication sign that ratios are written with."""

Metric = Literal["p50_us", "keys_per_second", "queries"]
Status = Literal["PASS", "FAIL", "N/A"]

_COMPARE: Final[Mapping[str, Callable[[float, float], bool]]] = {
    "<=": operator.le,
    ">=": operator.ge,
}


@attrs.frozen
class Goal:
    id: str
    text: str
    metric: Metric
    measured: tuple[str, str]
    """``(workload, contender)`` of the figure under test."""
    against: tuple[str, str] | None
    """``(workload, contender)`` it is divided by; None compares the figure itself."""
    op: Literal["<=", ">="]
    target: float
    source: str = "issue 10"


@attrs.frozen
class Check:
    goal: Goal
    value: float | None
    """The ratio (or the figure itself); None when a side was not measured."""
    status: Status
    detail: str


GOALS: Final = (
    Goal(
        "lone_get",
        "lone get p50 / bare GET + orjson p50",
        "p50_us",
        ("lone_get", "securecache"),
        ("lone_get", "floor"),
        "<=",
        1.15,
    ),
    Goal(
        "concurrent_vs_bare",
        "64 concurrent single gets: keys/s / bare GET's",
        "keys_per_second",
        ("concurrent_get_64", "securecache"),
        ("concurrent_get_64", "floor"),
        ">=",
        6.0,
    ),
    Goal(
        "concurrent_vs_aiocache",
        "64 concurrent single gets: keys/s / aiocache's",
        "keys_per_second",
        ("concurrent_get_64", "securecache"),
        ("concurrent_get_64", "aiocache"),
        ">=",
        6.0,
    ),
    Goal(
        "concurrent_vs_cashews",
        "64 concurrent single gets: keys/s / cashews'",
        "keys_per_second",
        ("concurrent_get_64", "securecache"),
        ("concurrent_get_64", "cashews"),
        ">=",
        6.0,
    ),
    Goal(
        "get_many",
        "get_many(100) p50 / bare MGET + orjson p50",
        "p50_us",
        ("get_many_100", "securecache"),
        ("get_many_100", "floor"),
        "<=",
        1.25,
    ),
    Goal(
        "sync_lone_get",
        "sync lone get p50 / bare sync GET + orjson p50",
        "p50_us",
        ("sync_lone_get", "securecache"),
        ("sync_lone_get", "floor"),
        "<=",
        1.3,
    ),
    Goal(
        "miss_sequential",
        "sequential miss p50 / naive cache-aside p50",
        "p50_us",
        ("miss_sequential", "securecache"),
        ("miss_sequential", "naive"),
        "<=",
        1.5,
    ),
    Goal(
        "miss_concurrent",
        "miss at 64 tasks: keys/s / naive cache-aside's",
        "keys_per_second",
        ("miss_concurrent_64", "securecache"),
        ("miss_concurrent_64", "naive"),
        ">=",
        2.0,
    ),
    Goal(
        "near_hit",
        "near-cache hit p50 / bare GET + orjson p50",
        "p50_us",
        ("near_hit", "securecache_near"),
        ("lone_get", "floor"),
        "<=",
        0.1,
    ),
    Goal(
        "http",
        "HTTP GET /securities/{id}: req/s / constant-JSON endpoint's",
        "keys_per_second",
        ("http_get_security", "public_api"),
        ("http_get_security", "constant"),
        ">=",
        0.7,
    ),
    Goal(
        "http_near",
        "HTTP with the near cache: req/s / constant-JSON endpoint's",
        "keys_per_second",
        ("http_get_security", "public_api_near"),
        ("http_get_security", "constant"),
        ">=",
        0.85,
    ),
    Goal(
        "herd_queries",
        "500 concurrent cold reads of one key: PostgreSQL queries",
        "queries",
        ("cold_herd_500", "securecache"),
        None,
        "<=",
        1.0,
        source="DESIGN.md (single-flight)",
    ),
)


def _figure(
    rows: Mapping[tuple[str, str], Mapping[str, Any]], pair: tuple[str, str], metric: str
) -> float | None:
    found = rows.get(pair)
    if found is None or not found.get("available") or found.get(metric) is None:
        return None
    if found.get("errors"):
        return None  # a run with failed requests measures something else
    return float(found[metric])


def evaluate(results: Sequence[Mapping[str, Any]]) -> list[Check]:
    """Every goal checked against the rows of one run."""
    rows = {(r["workload"], r["contender"]): r for r in results}
    checks = []
    for goal in GOALS:
        value = _figure(rows, goal.measured, goal.metric)
        if goal.against is not None and value is not None:
            base = _figure(rows, goal.against, goal.metric)
            value = value / base if base else None
        if value is None:
            missing = [
                LABELS[c]
                for w, c in filter(None, (goal.measured, goal.against))
                if _figure(rows, (w, c), goal.metric) is None
            ]
            checks.append(Check(goal, None, "N/A", "no figure for " + ", ".join(missing)))
            continue
        passed = _COMPARE[goal.op](value, goal.target)
        shown = f"{value:.3g}" if goal.against is None else f"{value:.2f}{TIMES}"
        detail = f"{shown} (goal {goal.op} {goal.target:g})"
        checks.append(Check(goal, value, "PASS" if passed else "FAIL", detail))
    return checks
