"""The OpenTelemetry SDK for the servers: traces and metrics, and the per-request middleware.

The library only speaks the OpenTelemetry API; a process that serves HTTP decides where
spans and measurements go, from the standard ``OTEL_*`` variables:

- Traces are exported over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set; without one the servers still trace (so
  trace ids propagate) but export nothing, and say so once at start-up. Sampling follows
  ``OTEL_TRACES_SAMPLER``.
- Metrics (the library's counters: hits, misses, fills, CAS refusals, corrupt entries, Redis
  errors, queries; and the request duration histogram of the ASGI instrumentation) are
  exported over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
  ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` is set, and served for Prometheus on
  ``SECURECACHE_METRICS_PORT`` (its own port: never on the API's).
- ``OTEL_SDK_DISABLED=true`` turns both off; ``OTEL_TRACES_EXPORTER`` /
  ``OTEL_METRICS_EXPORTER`` choose among ``otlp``, ``console`` (traces) and ``none``.

Nothing here runs at import or when an app is created: exporters and the metrics endpoint
run threads, which only a starting lifespan may start, and its end stops them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from opentelemetry import metrics, trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)
from opentelemetry.util.http import get_excluded_urls
from prometheus_client import CollectorRegistry, start_http_server
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

PUBLIC_SERVICE_NAME = "securecache-public-api"
INTERNAL_SERVICE_NAME = "securecache-internal-api"

_TRACES_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_METRICS_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


@attrs.frozen
class Tracing:
    """A tracer provider and a one-line account of where its spans go (logged at start-up)."""

    provider: trace.TracerProvider
    description: str

    def flush(self) -> None:
        """Push out spans still buffered, leaving the provider usable (one the caller owns)."""
        if isinstance(self.provider, TracerProvider):
            self.provider.force_flush()

    def shutdown(self) -> None:
        """Push out spans still buffered and stop the exporters and their threads (for a
        provider :func:`tracing_from_env` built, once the application is done with it)."""
        if isinstance(self.provider, TracerProvider):
            self.provider.shutdown()


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _exporters(variable: str) -> set[str]:
    return {e.strip().lower() for e in os.environ.get(variable, "otlp").split(",") if e.strip()}


def _endpoint(variables: Sequence[str]) -> str | None:
    return next((os.environ[v] for v in variables if os.environ.get(v)), None)


def _resource(default_service_name: str) -> tuple[Resource, str]:
    """``service.name`` from ``OTEL_SERVICE_NAME`` (or ``OTEL_RESOURCE_ATTRIBUTES``), else
    ``default_service_name``, so that two APIs stay apart in a trace viewer."""
    resource = Resource.create()
    name = str(resource.attributes.get(SERVICE_NAME, ""))
    if not name or name.startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: default_service_name}))
        name = default_service_name
    return resource, name


def tracing_from_env(default_service_name: str) -> Tracing:
    """Build the SDK tracer provider the ``OTEL_*`` variables describe.

    The provider is not made global: each application passes its own to its middleware and
    its :class:`~securecache.SecureCache`. With an OTLP endpoint this starts an exporting
    thread, so the servers call it when their lifespan starts, never at import, and
    :meth:`Tracing.shutdown` it when the lifespan ends.
    """
    if _true(os.environ.get("OTEL_SDK_DISABLED")):
        return Tracing(trace.NoOpTracerProvider(), "tracing disabled (OTEL_SDK_DISABLED)")
    resource, name = _resource(default_service_name)
    provider = TracerProvider(resource=resource)
    exporters = _exporters("OTEL_TRACES_EXPORTER")
    sent_to: list[str] = []
    if "console" in exporters:
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        sent_to.append("the console")
    endpoint = _endpoint(_TRACES_ENDPOINT_VARS)
    if "otlp" in exporters and endpoint:
        # Imported here: the exporter pulls in requests and protobuf, needless without a collector.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        sent_to.append(f"OTLP/HTTP at {endpoint}")
    if sent_to:
        return Tracing(provider, f"tracing {name}: spans exported to {' and '.join(sent_to)}")
    return Tracing(
        provider,
        f"tracing {name}: no OTLP endpoint configured (OTEL_EXPORTER_OTLP_ENDPOINT), "
        "spans are not exported",
    )


@attrs.frozen
class Metrics:
    """A meter provider, the Prometheus endpoint serving it (if any), and a one-line account
    of where measurements go."""

    provider: metrics.MeterProvider
    description: str
    stop_endpoint: Callable[[], None] | None = None

    def flush(self) -> None:
        if isinstance(self.provider, MeterProvider):
            self.provider.force_flush()

    def shutdown(self) -> None:
        """Stop the Prometheus endpoint, export what is left, stop the exporters."""
        if self.stop_endpoint is not None:
            self.stop_endpoint()
        if isinstance(self.provider, MeterProvider):
            self.provider.shutdown()


def metrics_from_env(default_service_name: str, *, port: int, host: str) -> Metrics:
    """Build the SDK meter provider: OTLP/HTTP per ``OTEL_*``, Prometheus on ``host:port``
    (0: none). Raises ``OSError`` if the port is taken, before anything is left running."""
    if _true(os.environ.get("OTEL_SDK_DISABLED")):
        return Metrics(metrics.NoOpMeterProvider(), "metrics disabled (OTEL_SDK_DISABLED)")
    readers: list[MetricReader] = []
    sent_to: list[str] = []
    endpoint = _endpoint(_METRICS_ENDPOINT_VARS)
    if "otlp" in _exporters("OTEL_METRICS_EXPORTER") and endpoint:
        # Imported here, as the span exporter is.
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        sent_to.append(f"OTLP/HTTP at {endpoint}")
    stop_endpoint: Callable[[], None] | None = None
    if port:
        # A registry of this app's own: two apps in one process (tests) stay apart.
        registry = CollectorRegistry()
        readers.append(PrometheusMetricReader(registry=registry))
        try:
            server, thread = start_http_server(port, host, registry)
        except OSError:
            for reader in readers:
                reader.shutdown()
            raise
        stop_endpoint = _stopper(server, thread)
        sent_to.append(f"Prometheus at http://{host}:{port}/metrics")
    if not readers:
        return Metrics(
            metrics.NoOpMeterProvider(),
            "metrics: no OTLP endpoint and no SECURECACHE_METRICS_PORT, none are exported",
        )
    resource, name = _resource(default_service_name)
    provider = MeterProvider(metric_readers=readers, resource=resource, shutdown_on_exit=False)
    description = f"metrics of {name} exported to {' and '.join(sent_to)}"
    return Metrics(provider, description, stop_endpoint)


def _stopper(server: Any, thread: threading.Thread) -> Callable[[], None]:
    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop


# -- the request middleware -------------------------------------------------------------------


def _span_details(
    routes: Sequence[BaseRoute],
) -> Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]:
    """Name request spans after the route template (``GET /securities/{id}``), not the path,
    so span names stay few however many ids are asked for."""

    def details(scope: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        method = str(scope.get("method", "HTTP"))
        for route in routes:
            if isinstance(route, Route) and route.matches(scope)[0] is Match.FULL:
                return f"{method} {route.path}", {"http.route": route.path}
        return method, {}

    return details


class CurrentProviders:
    """The providers requests are measured with: the caller's, or those the lifespan built,
    for as long as it runs (None before and after: such requests go unmeasured)."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None,
        meter_provider: metrics.MeterProvider | None,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider


class RequestTelemetry:
    """ASGI middleware: OpenTelemetry's server spans and request metrics (the duration
    histogram, requests in flight), from the providers current at the time.

    OpenTelemetryMiddleware takes its providers when it is built, which Starlette does before
    the lifespan has made them; so it is built here, for each new pair, on its first request.
    """

    def __init__(
        self, app: ASGIApp, *, current: CurrentProviders, routes: Sequence[BaseRoute]
    ) -> None:
        self.app = app
        self._current = current
        self._excluded_urls = get_excluded_urls("ASGI")
        self._span_details = _span_details(routes)
        self._built: tuple[trace.TracerProvider, metrics.MeterProvider | None, ASGIApp] | None
        self._built = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracer_provider = self._current.tracer_provider
        meter_provider = self._current.meter_provider
        if tracer_provider is None or scope["type"] not in {"http", "websocket"}:
            await self.app(scope, receive, send)
            return
        built = self._built
        if built is None or built[0] is not tracer_provider or built[1] is not meter_provider:
            middleware = OpenTelemetryMiddleware(
                self.app,
                tracer_provider=tracer_provider,
                meter_provider=meter_provider or metrics.NoOpMeterProvider(),
                excluded_urls=self._excluded_urls,
                default_span_details=self._span_details,
                # No span per ASGI message ("http send"/"http receive"): two more spans a
                # request that say nothing the request's span does not, at a third of the
                # server's tracing cost (measured with cProfile on GET /securities/{id}).
                exclude_spans=["receive", "send"],
            )
            built = self._built = (tracer_provider, meter_provider, middleware)
        await built[2](scope, receive, send)
