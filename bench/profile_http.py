"""Where a cached ``GET /securities/{id}`` spends its time: cProfile over the public app.

``python -m bench.profile_http`` with ``SECURECACHE_DATABASE_URL`` (an administrator's URL of a
migrated, seeded database, e.g. the one ``make run`` prints) and ``SECURECACHE_REDIS_URL``.
The app is built as the servers build it (tracing SDK on, no exporter) and driven in process
through httpx's ASGI transport, so the profile holds the app and the library, not the socket.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from collections.abc import Sequence

import httpx

from securecache import Settings
from servers import public_api
from servers.settings import ServerSettings


async def profile(requests: int, rows: int) -> None:
    app = public_api.create_app(Settings.from_env(), server=ServerSettings())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
            page = (await http.get("/securities", params={"limit": 1})).json()
            path = f"/securities/{page['items'][0]['id']}"
            for _ in range(200):  # warm: the entry is cached, the pools are full
                await http.get(path)
            profiler = cProfile.Profile()
            started = time.perf_counter()
            profiler.enable()
            for _ in range(requests):
                await http.get(path)
            profiler.disable()
            elapsed = time.perf_counter() - started
    print(f"{requests} cached GET {path}: {elapsed / requests * 1e6:.0f} us a request")
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=40, help="profile lines to print")
    args = parser.parse_args(argv)
    asyncio.run(profile(args.requests, args.rows))


if __name__ == "__main__":
    main()
