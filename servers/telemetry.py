"""The OpenTelemetry SDK for the servers: traces and metrics, and the per-request middleware.

The library only speaks the OpenTelemetry API; a process that serves HTTP decides where
spans and measurements go, from the standard ``OTEL_*`` variables:

- Traces are exported over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set (sampling follows ``OTEL_TRACES_SAMPLER``);
  without one no span is made at all, by the servers or the library (nothing would receive
  them, and the servers call no other service a trace id could reach), and the log says so
  once at start-up.
- Metrics (the library's counters: hits, misses, fills, CAS refusals, corrupt entries, Redis
  errors, queries; and the servers' ``http.server.request.duration`` histogram and
  ``http.server.active_requests``, from :class:`RequestTelemetry`) are
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
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import attrs
from opentelemetry import context, metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util.http import get_excluded_urls
from prometheus_client import CollectorRegistry, start_http_server
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servers import durations
from servers.durations import PeriodicReader, PrometheusReader, RequestDurations

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
    exporters = _exporters("OTEL_TRACES_EXPORTER")
    processors: list[SpanProcessor] = []
    sent_to: list[str] = []
    if "console" in exporters:
        processors.append(SimpleSpanProcessor(ConsoleSpanExporter()))
        sent_to.append("the console")
    endpoint = _endpoint(_TRACES_ENDPOINT_VARS)
    if "otlp" in exporters and endpoint:
        # Imported here: the exporter pulls in requests and protobuf, needless without a collector.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processors.append(BatchSpanProcessor(OTLPSpanExporter()))
        sent_to.append(f"OTLP/HTTP at {endpoint}")
    if sent_to:
        provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER
        for processor in processors:
            provider.add_span_processor(processor)
        return Tracing(provider, f"tracing {name}: spans exported to {' and '.join(sent_to)}")
    # Nowhere to send them: even unrecorded spans cost (ids, a sampler call, the context:
    # 6-7 us a span, measured with timeit), and their ids would reach nobody.
    return Tracing(
        trace.NoOpTracerProvider(),
        f"tracing {name}: no OTLP endpoint configured (OTEL_EXPORTER_OTLP_ENDPOINT), "
        "so no span is made",
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
    resource, name = _resource(default_service_name)
    histogram = RequestDurations()
    endpoint = _endpoint(_METRICS_ENDPOINT_VARS)
    if "otlp" in _exporters("OTEL_METRICS_EXPORTER") and endpoint:
        # Imported here, as the span exporter is.
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicReader(histogram, OTLPMetricExporter()))
        sent_to.append(f"OTLP/HTTP at {endpoint}")
    stop_endpoint: Callable[[], None] | None = None
    if port:
        # A registry of this app's own: two apps in one process (tests) stay apart.
        registry = CollectorRegistry()
        readers.append(PrometheusReader(histogram, registry=registry))
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
    provider = MeterProvider(metric_readers=readers, resource=resource, shutdown_on_exit=False)
    _DURATIONS[provider] = histogram
    description = f"metrics of {name} exported to {' and '.join(sent_to)}"
    return Metrics(provider, description, stop_endpoint)


def _stopper(server: Any, thread: threading.Thread) -> Callable[[], None]:
    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop


# -- the request middleware -------------------------------------------------------------------

KNOWN_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "QUERY"}
)
"""Methods named as sent in spans and metrics; any other is ``_OTHER`` (semantic conventions),
so a client cannot grow the metrics' label sets."""


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


class _Measures:
    """One meter provider's request instruments, made once per provider (two apps measured
    by one provider share them, as they share the process).

    The request durations go to the histogram the provider's readers export
    (:mod:`servers.durations`) when the servers built the provider; to an SDK histogram when
    the caller gave it.
    """

    def __init__(self, provider: metrics.MeterProvider) -> None:
        meter = provider.get_meter(durations.SCOPE)
        in_process = _DURATIONS.get(provider)
        self._histogram = (
            None
            if in_process is not None
            else meter.create_histogram(
                durations.NAME,
                unit=durations.UNIT,
                description=durations.DESCRIPTION,
                explicit_bucket_boundaries_advisory=durations.BUCKETS,
            )
        )
        self.record: Callable[[float, str, str, int, str | None], None] = (
            self._record_in_sdk if in_process is None else in_process.record
        )
        """One request's duration: (seconds, method, scheme, status or 0, route template or
        None), straight to the in-process histogram when there is one."""
        self.in_flight: dict[tuple[str, str], int] = {}
        """Requests being served, by (method, scheme): counted with plain integers and read
        when the metrics are collected, which costs a request nothing but two additions."""
        meter.create_observable_up_down_counter(
            "http.server.active_requests",
            callbacks=[self._observe],
            unit="{request}",
            description="Number of active HTTP server requests.",
        )

    def _record_in_sdk(
        self, seconds: float, method: str, scheme: str, status: int, template: str | None
    ) -> None:
        assert self._histogram is not None
        self._histogram.record(seconds, durations.attributes(method, scheme, status, template))

    def _observe(self, _options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        return [
            metrics.Observation(count, {"http.request.method": method, "url.scheme": scheme})
            for (method, scheme), count in list(self.in_flight.items())
        ]


_MEASURES: Final[weakref.WeakKeyDictionary[metrics.MeterProvider, _Measures]] = (
    weakref.WeakKeyDictionary()
)
_DURATIONS: Final[weakref.WeakKeyDictionary[metrics.MeterProvider, RequestDurations]] = (
    weakref.WeakKeyDictionary()
)
"""The request histogram of each provider :func:`metrics_from_env` built (its readers')."""


def _measures(provider: metrics.MeterProvider) -> _Measures:
    measures = _MEASURES.get(provider)
    if measures is None:
        measures = _MEASURES[provider] = _Measures(provider)
    return measures


class _Instruments:
    """What requests are traced and measured with, for one pair of providers."""

    def __init__(
        self, tracer_provider: trace.TracerProvider, meter_provider: metrics.MeterProvider | None
    ) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.tracer = tracer_provider.get_tracer("servers")
        self.traced = not isinstance(tracer_provider, trace.NoOpTracerProvider)
        """False without an SDK (no exporter configured): then no span at all."""
        self.measures = None if meter_provider is None else _measures(meter_provider)
        # The headers the configured propagators read (traceparent, tracestate, baggage...):
        # a request without any of them starts a new trace without a propagator call.
        self.fields = frozenset(
            f.lower().encode("latin-1") for f in propagate.get_global_textmap().fields
        )


_EXCLUDED_URLS_VARS: Final = ("OTEL_PYTHON_ASGI_EXCLUDED_URLS", "OTEL_PYTHON_EXCLUDED_URLS")
"""Where OpenTelemetry's ``get_excluded_urls("ASGI")`` finds the URLs not to trace."""


class RequestTelemetry:
    """ASGI middleware: a SERVER span per request, named after its route template, and the
    request metrics (``http.server.request.duration``, ``http.server.active_requests``),
    from the providers current at the time.

    Written here rather than taken from OpenTelemetry's ASGI instrumentation, which cost about
    as much as the rest of a cached read (it derives a dozen attributes from the scope and the
    headers, twice over for two conventions, and makes four measurements): this one extracts
    the caller's context only when a propagator's header is there, gives a span the
    semantic conventions' attributes only once it is known to be recorded (a sampled-out
    request pays for its ids and nothing else), and takes the route from the one Starlette routing
    has done (``scope["route"]``), naming the span once the request is served.
    """

    def __init__(self, app: ASGIApp, *, current: CurrentProviders) -> None:
        self.app = app
        self._current = current
        self._excluded = get_excluded_urls("ASGI")
        # Without one of the variables get_excluded_urls reads, no URL is excluded and the
        # request's URL need not be put together to ask.
        self._excluding = any(os.environ.get(v) for v in _EXCLUDED_URLS_VARS)
        self._instruments: _Instruments | None = None

    def _for(
        self, tracer_provider: trace.TracerProvider, meter_provider: metrics.MeterProvider | None
    ) -> _Instruments:
        instruments = self._instruments
        if (
            instruments is None
            or instruments.tracer_provider is not tracer_provider
            or instruments.meter_provider is not meter_provider
        ):
            instruments = self._instruments = _Instruments(tracer_provider, meter_provider)
        return instruments

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracer_provider = self._current.tracer_provider
        if tracer_provider is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        scheme: str = scope.get("scheme", "http")
        if self._excluding and self._excluded.url_disabled(f"{scheme}://{_host(scope)}{path}"):
            await self.app(scope, receive, send)
            return
        instruments = self._for(tracer_provider, self._current.meter_provider)
        started = time.perf_counter()
        method: str = scope["method"]
        if method not in KNOWN_METHODS:
            method = "_OTHER"
        span: trace.Span = trace.INVALID_SPAN
        token = None
        if instruments.traced:
            parent, user_agent = _read_headers(scope["headers"], instruments.fields)
            # No attributes at the start: the SDK copies and checks them for the sampler even
            # when it drops the span, and the samplers OTEL_TRACES_SAMPLER offers do not read
            # them.
            span = instruments.tracer.start_span(method, parent, kind=SpanKind.SERVER)
            if span.is_recording():
                _describe(span, scope, method, user_agent)
            token = context.attach(trace.set_span_in_context(span, parent))
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        measures = instruments.measures
        if measures is not None:
            in_flight = measures.in_flight
            in_flight[method, scheme] = in_flight.get((method, scheme), 0) + 1
        try:
            await self.app(scope, receive, send_status)
        except BaseException as exc:
            if span.is_recording():
                span.record_exception(exc)
                span.set_status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
            status = status or 500
            raise
        finally:
            route = scope.get("route")
            template = route.path if isinstance(route, Route) else None
            if token is not None:  # a span was started (tracing is on)
                context.detach(token)
                _end(span, method, template, status)
            if measures is not None:
                measures.in_flight[method, scheme] -= 1
                measures.record(time.perf_counter() - started, method, scheme, status, template)


def _read_headers(
    headers: Iterable[tuple[bytes, bytes]], fields: frozenset[bytes]
) -> tuple[Context | None, bytes | None]:
    """The caller's context (None without a propagator's header) and the User-Agent."""
    propagated = False
    user_agent = None
    for name, value in headers:
        if name in fields:
            propagated = True
        elif name == b"user-agent":
            user_agent = value
    return (_extract(headers, fields) if propagated else None), user_agent


def _end(span: trace.Span, method: str, template: str | None, status: int) -> None:
    """Name a recorded span after its route, give it the status, and end it."""
    if span.is_recording():
        if template is not None:
            span.update_name(f"{method} {template}")
            span.set_attribute("http.route", template)
        if status:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(StatusCode.ERROR)
    span.end()


def _extract(headers: Iterable[tuple[bytes, bytes]], fields: frozenset[bytes]) -> Context:
    """The caller's context from the propagators' headers (repeats joined, as HTTP allows)."""
    carrier: dict[str, str] = {}
    for name, value in headers:
        if name in fields:
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            carrier[key] = f"{carrier[key]},{text}" if key in carrier else text
    return propagate.extract(carrier)


def _host(scope: Scope) -> str:
    server = scope.get("server")
    return f"{server[0]}:{server[1]}" if server and server[1] is not None else ""


def _describe(span: trace.Span, scope: Scope, method: str, user_agent: bytes | None) -> None:
    """The attributes a recorded server span carries from the request."""
    span.set_attributes(
        {
            "http.request.method": method,
            "url.path": scope["path"],
            "url.scheme": scope.get("scheme", "http"),
            "network.protocol.version": scope.get("http_version", "1.1"),
        }
    )
    server = scope.get("server")
    if server:
        span.set_attribute("server.address", server[0])
        if server[1] is not None:
            span.set_attribute("server.port", server[1])
    client = scope.get("client")
    if client:
        span.set_attribute("client.address", client[0])
    if query := scope.get("query_string"):
        span.set_attribute("url.query", query.decode("latin-1"))
    if user_agent is not None:
        span.set_attribute("user_agent.original", user_agent.decode("latin-1"))
