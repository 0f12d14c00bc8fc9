"""The one launcher: ``python -m servers public|internal [--host H] [--port P]``.

One API per process, as containers run them (and as ``securecache dev --serve`` does, one
child process each): settings from ``SECURECACHE_*`` and ``OTEL_*``
(:mod:`servers.settings`, :mod:`servers.telemetry`). Default ports: 8080 (public) and 8081
(internal); their Prometheus endpoints 9464 and 9465 unless ``SECURECACHE_METRICS_PORT`` says
otherwise (0: off).

Shutdown is graceful (:mod:`servers.run`): on SIGTERM or SIGINT the server stops accepting
connections, lets the requests in flight finish, and only then closes the PostgreSQL and
Redis pools and flushes telemetry. Exit status 0 after a clean stop; 1 with a one-line reason
on stderr when the API cannot start (bad settings, port in use).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from typing import Final

import attrs
from starlette.applications import Starlette

from securecache import SecureCacheError, Settings
from servers import internal_api, public_api
from servers.run import StartupError, configure_logging, serve_apps
from servers.settings import ServerSettings, library_settings_from_env


@attrs.frozen
class Launchable:
    """An API the launcher can serve, and where it serves by default."""

    create_app: Callable[..., Starlette]
    port: int
    metrics_port: int


APIS: Final = {
    "public": Launchable(public_api.create_app, port=8080, metrics_port=9464),
    "internal": Launchable(internal_api.create_app, port=8081, metrics_port=9465),
}


def build(api: str, host: str) -> tuple[Starlette, ServerSettings]:
    """The app ``python -m servers <api>`` serves and the server's own settings, read (and
    checked) now."""
    launchable = APIS[api]
    settings: Settings = library_settings_from_env()
    server = ServerSettings.from_env(
        default_metrics_port=launchable.metrics_port, metrics_host=host
    )
    return launchable.create_app(settings, server=server), server


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m servers public|internal [--host H] [--port P]``."""
    parser = argparse.ArgumentParser(
        prog="python -m servers",
        description="Serve one securecache API (settings from SECURECACHE_* and OTEL_*).",
    )
    parser.add_argument("api", choices=sorted(APIS), help="which API this process serves")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 in a container")
    parser.add_argument("--port", type=int, help="default 8080 (public) or 8081 (internal)")
    args = parser.parse_args(argv)
    port = args.port if args.port is not None else APIS[args.api].port
    configure_logging()
    try:
        app, server = build(args.api, args.host)
        asyncio.run(
            serve_apps([(app, args.host, port)], server.http_limits, access_log=server.access_log)
        )
    except (StartupError, SecureCacheError) as exc:
        sys.exit(f"error: {exc}")
