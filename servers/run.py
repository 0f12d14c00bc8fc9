"""Serving apps under uvicorn, with a graceful drain: the core :mod:`servers.launcher` runs.

Shutdown is graceful. On SIGTERM or SIGINT every server stops accepting connections, lets the
requests in flight finish (up to :data:`GRACE_SECONDS`), and only then runs its lifespan's
shutdown, which closes the PostgreSQL and Redis pools. A second SIGINT skips the wait.

uvicorn installs its own signal handlers per server, and a second server on the same loop
would take them over from the first; here the servers leave signals alone and one handler
stops them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Iterator, Sequence
from typing import Final

import uvicorn
from starlette.applications import Starlette

from securecache.redaction import RedactSecrets
from servers.http_limits import BoundedHttpToolsProtocol, HttpLimits

GRACE_SECONDS: Final = 25.0
"""Longest wait for requests in flight: under Kubernetes' default 30 s termination grace."""

log = logging.getLogger("securecache.servers")


class StartupError(RuntimeError):
    """A server could not start (bad settings, port in use); the others were stopped."""


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to :func:`serve_apps`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _config(
    app: Starlette, host: str, port: int, limits: HttpLimits, *, access_log: bool
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        access_log=access_log,
        timeout_graceful_shutdown=int(GRACE_SECONDS),
        server_header=False,
        log_config=None,
        http=BoundedHttpToolsProtocol.with_limits(limits),
        ws="none",  # an upgrade request is an ordinary request: the app answers a problem
    )


def configure_logging(level: int = logging.INFO) -> None:
    """Plain logging to stderr, unless the application has set up logging already; every
    handler redacts passwords, whichever logger a record comes from."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets())


async def serve_apps(
    apps: Sequence[tuple[Starlette, str, int]],
    limits: HttpLimits | None = None,
    *,
    access_log: bool = False,
) -> None:
    """Serve each ``(app, host, port)`` on this loop until SIGINT/SIGTERM, then drain them all.

    ``access_log`` turns on uvicorn's line per request (``SECURECACHE_ACCESS_LOG``); off, it
    is off for the whole process (uvicorn silences its ``uvicorn.access`` logger).

    Signal handlers are installed only in the main thread; elsewhere (tests, embedding) stop
    the servers by cancelling this coroutine, which still drains them.
    """
    limits = limits or HttpLimits()
    # What is loaded by now (modules, the apps, their documents) lives as long as the process:
    # moved out of the collector's sight, it is no longer walked by every full collection,
    # which otherwise cost the request that triggered it a few milliseconds.
    gc.collect()
    gc.freeze()
    servers = [
        _Server(_config(app, host, port, limits, access_log=access_log)) for app, host, port in apps
    ]

    def stop(sig: signal.Signals) -> None:
        log.info("%s received: finishing requests in flight, then stopping", sig.name)
        for server in servers:
            if server.should_exit and sig is signal.SIGINT:
                server.force_exit = True
            server.should_exit = True

    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop, sig)
            installed.append(sig)

    failed: list[int] = []

    async def run(index: int, server: _Server) -> None:
        try:
            await server.serve()
        except SystemExit:
            # uvicorn exits the process when a lifespan fails to start; keep the others able
            # to shut down cleanly instead.
            failed.append(index)
            for other in servers:
                other.should_exit = True

    tasks = [asyncio.create_task(run(i, s)) for i, s in enumerate(servers)]
    try:
        await asyncio.shield(asyncio.gather(*tasks))
    except asyncio.CancelledError:
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks)
        raise
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    if failed:
        names = ", ".join(f"{apps[i][1]}:{apps[i][2]}" for i in sorted(failed))
        raise StartupError(f"could not start the server(s) on {names}; see the log above")
