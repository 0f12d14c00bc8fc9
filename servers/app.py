"""The app factory: an :class:`~servers.routes.Api` served by Starlette over a SecureCache.

Both APIs are built here alike: their own operations plus the probes and ``/openapi.json``
(whose document is generated from those same operations), problem details for every error,
and OpenTelemetry per request. The lifespan opens the SecureCache and the telemetry when the
server starts and closes them after the last request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from opentelemetry import metrics, trace
from starlette.applications import Starlette
from starlette.middleware import Middleware

from securecache import SecureCache, Settings
from servers import openapi, probes
from servers.dispatch import DirectDispatch
from servers.problems import EXCEPTION_HANDLERS
from servers.routes import Api, Operation, starlette_routes
from servers.settings import ServerSettings, library_settings_from_env
from servers.telemetry import (
    CurrentProviders,
    Metrics,
    RequestTelemetry,
    Tracing,
    metrics_from_env,
    tracing_from_env,
)

log = logging.getLogger("securecache.servers")


def all_operations(api: Api) -> list[Operation]:
    """What an app built from ``api`` serves: its operations, the probes, the document."""
    return [*api.operations, *probes.OPERATIONS, openapi.OPERATION]


def document(api: Api) -> dict[str, Any]:
    """The OpenAPI document an app built from ``api`` serves at ``/openapi.json``."""
    return openapi.document(
        title=api.title, description=api.description, operations=all_operations(api)
    )


def build_app(
    api: Api,
    *,
    settings: Settings | None,
    server: ServerSettings | None,
    tracer_provider: trace.TracerProvider | None,
    meter_provider: metrics.MeterProvider | None,
    default_service_name: str,
) -> Starlette:
    """A Starlette app for ``api``, whose lifespan opens a SecureCache and closes it after
    the last request.

    ``settings`` (the library's) and ``server`` (this process's, :mod:`servers.settings`)
    None are read from the environment at startup, not here, so importing a server module
    needs no configuration; given, they are checked at once (an API with authentication and
    no tokens fails here), so mistakes surface early.

    ``tracer_provider`` / ``meter_provider`` None are built from ``OTEL_*`` (and the metrics
    port) when the lifespan starts, and shut down (flushed) when it ends: exporters run
    threads, which importing a module or creating an app must not start. Providers given are
    the caller's: flushed at the end, never shut down.
    """
    operations = all_operations(api)
    routes = starlette_routes(operations)
    auths = list({id(op.auth): op.auth for op in operations if op.auth is not None}.values())
    current = CurrentProviders(tracer_provider, meter_provider)

    def start_auth(app: Starlette, resolved: ServerSettings) -> None:
        for auth in auths:
            auth.start(app, resolved)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        resolved = settings if settings is not None else library_settings_from_env()
        resolved_server = server if server is not None else ServerSettings.from_env()
        if server is None:
            start_auth(app, resolved_server)
        tracing = _tracing(tracer_provider, default_service_name)
        try:
            measuring = _metrics(meter_provider, default_service_name, resolved_server)
        except BaseException:
            await asyncio.to_thread(_close, tracing, owned=tracer_provider is None)
            raise
        current.tracer_provider = tracing.provider
        current.meter_provider = measuring.provider
        try:
            async with SecureCache(
                resolved, tracer_provider=tracing.provider, meter_provider=measuring.provider
            ) as cache:
                app.state.cache = cache
                try:
                    yield
                finally:
                    # Requests still arriving after this get a 503 instead of a closed pool.
                    app.state.cache = None
        finally:
            current.tracer_provider = tracer_provider
            current.meter_provider = meter_provider
            # In a thread: exporting may wait on a collector, and other apps share the loop.
            await asyncio.to_thread(_close, tracing, owned=tracer_provider is None)
            await asyncio.to_thread(_close, measuring, owned=meter_provider is None)

    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestTelemetry, current=current),
            Middleware(DirectDispatch, routes=routes, handlers=EXCEPTION_HANDLERS),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    # A strict API: /securities/ is not /securities, and says so with a 404, not a redirect.
    app.router.redirect_slashes = False
    app.state.openapi = orjson.dumps(document(api))
    if server is not None:
        start_auth(app, server)
    return app


def _tracing(given: trace.TracerProvider | None, service_name: str) -> Tracing:
    if given is not None:
        return Tracing(given, "tracing with the provider the caller gave")
    tracing = tracing_from_env(service_name)
    log.info("%s", tracing.description)
    return tracing


def _metrics(
    given: metrics.MeterProvider | None, service_name: str, server: ServerSettings
) -> Metrics:
    if given is not None:
        return Metrics(given, "metrics with the provider the caller gave")
    measuring = metrics_from_env(service_name, port=server.metrics_port, host=server.metrics_host)
    log.info("%s", measuring.description)
    return measuring


def _close(telemetry: Tracing | Metrics, *, owned: bool) -> None:
    """Shut down what the lifespan built; only flush what the caller gave."""
    if owned:
        telemetry.shutdown()
    else:
        telemetry.flush()
