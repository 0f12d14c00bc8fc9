"""Where a cached ``GET /securities/{id}`` spends its time: cProfile over the public app.

``python -m bench.profile_http`` with ``SECURECACHE_DATABASE_URL`` (an administrator's URL of a
migrated, seeded database, e.g. the one ``make run`` prints) and ``SECURECACHE_REDIS_URL``; the
other ``SECURECACHE_*`` and ``OTEL_*`` variables apply as they do to the servers (e.g.
``SECURECACHE_LOCAL_CACHE_SIZE=10000`` for the near cache). The app is built as the servers
build it (:func:`servers.public_api.create_app`, telemetry from the environment) and called
in process with the ASGI messages uvicorn would send, so the profile holds the app and the
library, and neither a socket nor an HTTP client. ``--constant`` profiles
:mod:`bench.constant_app` the same way, for the framework's own share. ``--tasks N`` also
prints the CPU a request costs when N tasks call the app at once (as N connections would,
without the server's own share).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from collections.abc import Sequence
from typing import Any

from starlette.types import ASGIApp, Message

from bench import constant_app
from servers import public_api
from servers.settings import library_settings_from_env


def scope(path: str) -> dict[str, Any]:
    """The scope uvicorn's httptools protocol builds for ``GET path`` (as wrk sends it)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "method": "GET",
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8080")],
        "state": {},
    }


async def call(app: ASGIApp, path: str) -> int:
    """One request; its status."""
    status = 0

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope(path), receive, send)
    return status


async def concurrent_cpu(app: ASGIApp, path: str, tasks: int, requests: int) -> float:
    """CPU microseconds of this process a request, ``tasks`` callers at once, best of 3."""

    async def caller() -> None:
        for _ in range(max(1, requests // tasks)):
            await call(app, path)

    rounds = []
    for _ in range(3):
        started = time.process_time()
        await asyncio.gather(*(caller() for _ in range(tasks)))
        rounds.append((time.process_time() - started) / (max(1, requests // tasks) * tasks))
    return min(rounds) * 1e6


async def profile(requests: int, rows: int, *, constant: bool, sort: str, tasks: int) -> None:
    app: Any = constant_app.app if constant else public_api.create_app(library_settings_from_env())
    async with app.router.lifespan_context(app):
        if constant:
            path = "/securities/SEC000001"
        else:
            page = await app.state.cache.securities.list(1)
            path = f"/securities/{page.items[0].id}"
        for _ in range(200):  # warm: the entry is cached, the pools are full
            if await call(app, path) != 200:
                raise SystemExit(f"GET {path} did not answer 200")
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        for _ in range(requests):
            await call(app, path)
        profiler.disable()
        elapsed = time.perf_counter() - started
        # The same loop without the profiler, the best of five: the cost of a request as
        # served, with as little of the other processes on the machine in it as can be.
        rounds = []
        for _ in range(5):
            plain = time.perf_counter()
            for _ in range(requests):
                await call(app, path)
            rounds.append(time.perf_counter() - plain)
        together = await concurrent_cpu(app, path, tasks, 10 * requests) if tasks else None
    stats = pstats.Stats(profiler)
    # Function calls a request: unlike time, the same on a busy machine as on an idle one.
    calls = stats.total_calls / requests  # type: ignore[attr-defined]
    print(
        f"{requests} cached GET {path}: {min(rounds) / requests * 1e6:.1f} us a request, best "
        f"of 5 rounds ({elapsed / requests * 1e6:.0f} us under cProfile; {calls:.0f} Python "
        "function calls a request)"
    )
    if together is not None:
        print(f"{tasks} tasks at once: {together:.1f} us of CPU a request (best of 3 rounds)")
    stats.sort_stats(sort).print_stats(rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=40, help="profile lines to print")
    parser.add_argument("--sort", default="cumulative", help="pstats order, e.g. tottime")
    parser.add_argument("--constant", action="store_true", help="the constant app instead")
    parser.add_argument("--tasks", type=int, default=0, help="also N concurrent callers")
    args = parser.parse_args(argv)
    asyncio.run(
        profile(args.requests, args.rows, constant=args.constant, sort=args.sort, tasks=args.tasks)
    )


if __name__ == "__main__":
    main()
