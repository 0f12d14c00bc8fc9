"""``python -m bench``: the whole picture in one run, written to a results file and a page.

Runs every workload of :mod:`bench.workloads` on one data set: async and sync hits beside
the floor and the peers, near-cache hits, misses and a herd beside a naive cache-aside,
writes, and HTTP under wrk. Then writes ``bench/results.json`` (every figure, the machine,
the versions and the command), ``bench/results.md`` (the table), and, drawn from the JSON,
``docs/benchmarks.svg`` and ``docs/benchmarks.md`` (with the issue's ratios, PASS/FAIL).

Servers: those of ``SECURECACHE_DATABASE_URL`` (an administrator's URL) and
``SECURECACHE_REDIS_URL`` when both are set, otherwise embedded ones started for the run.
A contender that cannot run here (a missing package, wrk not installed, the near cache not
yet implemented) is recorded as not available, with the reason; the rest still runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from bench import chart, machine, report
from bench.data import Context, clean_redis, drop, seed
from bench.hits import hit_phase, sync_phase
from bench.measure import Results, unavailable
from bench.misses import miss_phase
from bench.web import http_phase
from bench.workloads import BATCH, CONCURRENCY, HERD, HTTP_CONTENDERS, expected_pairs
from securecache import Settings
from securecache.ops.dev import resolve_servers

HERE: Final = Path(__file__).resolve().parent
DOCS: Final = HERE.parent / "docs"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="securecache beside its floor and its peers."
    )
    parser.add_argument("--ops", type=int, default=2000, help="calls per round (default 2000)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds per workload (default 5)")
    parser.add_argument("--keys", type=int, default=10_000, help="securities seeded")
    parser.add_argument("--herd", type=int, default=HERD, help="concurrent cold reads of a key")
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop of every async contender (default: asyncio's own)",
    )
    parser.add_argument("--no-http", action="store_true", help="skip the wrk measurements")
    parser.add_argument("--http-duration", type=int, default=4, help="seconds per wrk run")
    parser.add_argument(
        "--http-rounds",
        type=int,
        default=5,
        help="wrk runs per HTTP contender, interleaved (default 5; the median is kept)",
    )
    parser.add_argument("--http-connections", type=int, default=64)
    parser.add_argument("--http-threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE, help="results.json/.md go here")
    parser.add_argument("--docs", type=Path, default=DOCS, help="benchmarks.md/.svg go here")
    parser.add_argument("--database", default="securecache_bench", help="dropped and re-made")
    parser.add_argument("--key-prefix", default="bench", help="Redis keys of the run")
    args = parser.parse_args(argv)
    if args.keys < 4 * BATCH:
        parser.error(f"--keys must be at least {4 * BATCH}")
    if args.ops < 1 or args.repeat < 1 or args.herd < 1 or args.http_rounds < 1:
        parser.error("--ops, --repeat, --herd and --http-rounds must be positive")
    return args


def command_line(argv: Sequence[str]) -> str:
    """How this run was started, as a reader would type it again."""
    args = shlex.join(argv)
    if os.environ.get("NOX_CURRENT_SESSION") == "bench":
        if os.environ.get("MAKELEVEL") and not argv:
            return "make bench"
        return "nox -s bench" + (f" -- {args}" if args else "")
    return "python -m bench" + (f" {args}" if args else "")


def runner(loop: str) -> Callable[[Coroutine[Any, Any, None]], None]:
    """Runs a phase on a fresh loop of the chosen kind."""
    factory = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop

    def run(coro: Coroutine[Any, Any, None]) -> None:
        with asyncio.Runner(loop_factory=factory) as r:
            r.run(coro)

    return run


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    run = runner(args.loop)
    results = Results()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    host = machine.describe()
    http_meta: dict[str, Any] = {}
    with resolve_servers(name="bench") as servers:
        print(f"servers: {servers.describe()}", flush=True)
        dataset = seed(servers, args.database, args.keys)
        settings = Settings(
            database_url=dataset.writer_url,
            redis_url=servers.redis_url,
            key_prefix=args.key_prefix,
            ttl_seconds=3600,
        )
        ctx = Context(
            dataset=dataset,
            settings=settings,
            redis_url=servers.redis_url,
            ops=args.ops,
            repeat=args.repeat,
        )
        clean_redis(servers.redis_url, args.key_prefix)
        try:
            run(hit_phase(ctx, results))
            run(sync_phase(ctx, results))
            run(miss_phase(ctx, results, args.herd))
            if args.no_http:
                for contender in HTTP_CONTENDERS:
                    results.add(unavailable("http_get_security", contender, "--no-http given"))
                http_meta = {"tool": None, "note": "--no-http given"}
            else:
                http_meta = http_phase(
                    ctx,
                    results,
                    duration=args.http_duration,
                    connections=args.http_connections,
                    threads=args.http_threads,
                    rounds=args.http_rounds,
                )
        finally:
            clean_redis(servers.redis_url, args.key_prefix)
            drop(servers, args.database)
        versions: dict[str, Any] = machine.versions()
        versions["postgresql_server"] = servers.postgres_version
        versions["redis_server"] = servers.redis_version
        if http_meta.get("tool"):
            versions["wrk"] = str(http_meta["tool"]).removeprefix("wrk ")
        server_line = servers.describe()
    data = {
        "meta": {
            "date": started,
            "command": command_line(argv),
            "argv": [sys.executable, "-m", "bench", *argv],
            "machine": host,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "versions": versions,
            "servers": server_line,
            "settings": {
                "ops": args.ops,
                "repeat": args.repeat,
                "keys": args.keys,
                "hot_keys": len(ctx.hot),
                "concurrency": CONCURRENCY,
                "batch": BATCH,
                "herd": args.herd,
                "event_loop": "uvloop" if args.loop == "uvloop" else "asyncio (default loop)",
                "sync_twin_loop": "its own loop thread (asyncio.new_event_loop)",
            },
            "http": http_meta,
        },
        "results": results.ordered(expected_pairs()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    args.docs.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    # Everything else is drawn from the file just written, as a rerun of report/chart would.
    written = json.loads(results_path.read_text(encoding="utf-8"))
    report.write_results_md(written, results_path.with_suffix(".md"))
    chart.draw(written, args.docs / "benchmarks.svg")
    report.write_docs(written, args.docs / "benchmarks.md", "benchmarks.svg")
    print(
        f"wrote {results_path}, {results_path.with_suffix('.md')}, "
        f"{args.docs / 'benchmarks.svg'} and {args.docs / 'benchmarks.md'}",
        flush=True,
    )
    for line in report.goals_table(written["results"])[2:]:
        print("  " + line)
    return 0
