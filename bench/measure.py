"""Timing: run contenders side by side, in rounds, and summarise each as one results row.

Contenders of one workload are measured in interleaved rounds (round 1: A, B, C; round 2:
B, C, A; ...), not one after the other, so that a slow minute of a shared machine lands on
all of them alike. Each round is preceded by an untimed ``prepare`` (making keys cold,
filling a near cache); a warm-up run before the first round is not recorded. Throughput is
the median over rounds; p50 and p99 are taken over the latencies of every round together.
"""

from __future__ import annotations

import asyncio
import gc
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

import attrs

from bench.workloads import LABELS

AsyncOp = Callable[[int], Awaitable[object]]
SyncOp = Callable[[int], object]
Shape = Literal["sequential", "concurrent", "herd"]


@attrs.define
class Run:
    """One timed run: wall time, per-call latencies, and counters read around it."""

    wall: float
    latencies: list[float]
    counts: dict[str, float] = attrs.Factory(dict)


@attrs.define
class Case:
    """One contender in one workload."""

    contender: str
    op: AsyncOp | SyncOp
    label: str = ""
    note: str = ""
    prepare: Callable[[], Awaitable[None]] | Callable[[], None] | None = None
    sync: bool = False
    """A plain function, called on this thread (the loop is blocked meanwhile, as a sync
    caller's thread would be)."""
    counters: dict[str, Callable[[], float]] = attrs.Factory(dict)
    """Read before and after each run; the row reports the median difference per run."""
    runs: list[Run] = attrs.Factory(list)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (``q`` in (0, 1])."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def row(
    workload: str, case: Case, keys_per_op: int, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The results row of a measured case."""
    throughput = statistics.median(len(r.latencies) * keys_per_op / r.wall for r in case.runs)
    latencies = sorted(x for r in case.runs for x in r.latencies)
    result: dict[str, Any] = {
        "workload": workload,
        "contender": case.contender,
        "label": case.label or LABELS[case.contender],
        "available": True,
        "keys_per_second": round(throughput),
        "p50_us": round(percentile(latencies, 0.50) * 1e6, 1),
        "p99_us": round(percentile(latencies, 0.99) * 1e6, 1),
        "calls": len(latencies),
        "wall_ms": round(statistics.median(r.wall for r in case.runs) * 1e3, 2),
        "note": case.note,
    }
    for name in case.counters:
        result[name] = statistics.median(r.counts[name] for r in case.runs)
    failed = sum(r.counts.get("redis_errors", 0) for r in case.runs)
    if failed:
        # Fail-open served these from PostgreSQL: the figures measure something else.
        result["errors"] = failed
        result["note"] = f"{failed:g} Redis errors during the runs; " + result["note"]
    if extra:
        result.update(extra)
    return result


def unavailable(workload: str, contender: str, reason: str, label: str = "") -> dict[str, Any]:
    """The row of a contender that could not run here, saying why."""
    return {
        "workload": workload,
        "contender": contender,
        "label": label or LABELS[contender],
        "available": False,
        "keys_per_second": None,
        "p50_us": None,
        "p99_us": None,
        "calls": 0,
        "wall_ms": None,
        "note": f"not available: {reason}",
    }


def _counts(case: Case) -> dict[str, float]:
    return {name: read() for name, read in case.counters.items()}


async def _prepare(case: Case) -> None:
    if case.prepare is not None:
        result = case.prepare()
        if isinstance(result, Awaitable):
            await result


async def _time_async(op: AsyncOp, shape: Shape, ops: int, tasks: int) -> Run:
    latencies: list[float] = []
    clock = time.perf_counter

    async def sequence(first: int, count: int) -> None:
        for i in range(first, first + count):
            t0 = clock()
            await op(i)
            latencies.append(clock() - t0)

    async def one(i: int) -> None:
        t0 = clock()
        await op(i)
        latencies.append(clock() - t0)

    start = clock()
    if shape == "sequential":
        await sequence(0, ops)
    elif shape == "concurrent":
        per_task = max(1, ops // tasks)
        await asyncio.gather(*(sequence(t * per_task, per_task) for t in range(tasks)))
    else:  # herd: every call at the same moment
        await asyncio.gather(*(one(i) for i in range(ops)))
    return Run(clock() - start, latencies)


def _time_sync(op: SyncOp, ops: int) -> Run:
    latencies: list[float] = []
    clock = time.perf_counter
    start = clock()
    for i in range(ops):
        t0 = clock()
        op(i)
        latencies.append(clock() - t0)
    return Run(clock() - start, latencies)


async def compare(
    cases: Sequence[Case],
    *,
    shape: Shape = "sequential",
    ops: int,
    repeat: int,
    tasks: int = 1,
    warmup: int | None = None,
) -> None:
    """Measure every case ``repeat`` times in rotating order; runs land in ``case.runs``."""
    warm = min(ops, 200) if warmup is None else warmup
    for case in cases:
        if warm:
            await _prepare(case)
            await _one_run(case, shape, warm, tasks)
    for r in range(repeat):
        for k in range(len(cases)):
            case = cases[(r + k) % len(cases)]
            await _prepare(case)
            before = _counts(case)
            run = await _one_run(case, shape, ops, tasks)
            after = _counts(case)
            run.counts = {name: after[name] - before[name] for name in before}
            case.runs.append(run)


async def _one_run(case: Case, shape: Shape, ops: int, tasks: int) -> Run:
    gc.collect()
    if case.sync:
        return _time_sync(case.op, ops)
    op: Any = case.op
    return await _time_async(op, shape, ops, tasks)


class Results:
    """Rows keyed by ``(workload, contender)``, printed as they come."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}

    def add(self, result: dict[str, Any]) -> None:
        self.rows[(result["workload"], result["contender"])] = result
        if result["available"]:
            print(
                f"  {result['workload']:<20} {result['label'][:40]:<40}"
                f" {result['keys_per_second']:>10,} keys/s"
                f"  p50 {result['p50_us']:>9} us  p99 {result['p99_us']:>9} us",
                flush=True,
            )
        else:
            print(f"  {result['workload']:<20} {result['label'][:40]:<40} {result['note']}")

    def measured(self, workload: str, cases: Sequence[Case], keys_per_op: int = 1) -> None:
        for case in cases:
            self.add(row(workload, case, keys_per_op))

    def ordered(self, pairs: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        """Rows in catalog order; a pair never measured is marked so, never left out."""
        return [
            self.rows.get(pair) or unavailable(*pair, "not measured in this run") for pair in pairs
        ]
