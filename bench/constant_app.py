"""A constant-JSON Starlette endpoint: what serving ``GET /securities/{id}`` costs the
framework and the server alone, with no cache, no middleware and no work.

It answers every ``GET /securities/{id}`` with the same Security-shaped body (the size of the
public API's answer for the benchmark's ``SEC000001``). The benchmark serves it exactly as it
serves the public API: through the servers' own launcher function (:mod:`servers.run`: the
same uvicorn settings, logging and event loop) when that is importable, otherwise with the
same ``uvicorn`` command line, so that the ratio between the two measures the API's own work.

``python -m bench.constant_app --host H --port P`` serves it the launcher's way.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from typing import Final

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

BODY: Final = orjson.dumps(
    {
        "id": "SEC000001",
        "name": "Company 1",
        "symbol": "T1",
        "exchange": "XNYS",
        "version": 1,
        "updated_at": "2026-11-25T21:55:00.000000Z",
    }
)


async def security(request: Request) -> Response:
    """The same body whatever the id: the path is still routed and its parameter parsed."""
    return Response(BODY, media_type="application/json")


app = Starlette(routes=[Route("/securities/{id}", security, methods=["GET"])])


def main(argv: Sequence[str] | None = None) -> None:
    """Serve :data:`app` with the servers' launcher machinery (``servers.run``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args(argv)
    from servers.run import configure_logging, serve_apps
    from servers.settings import ServerSettings

    configure_logging()
    # The server's own settings as the launcher reads them (header bounds, access log), so
    # that both contenders always run under the same uvicorn configuration.
    server = ServerSettings.from_env()
    asyncio.run(
        serve_apps([(app, args.host, args.port)], server.http_limits, access_log=server.access_log)
    )


if __name__ == "__main__":
    main()
