"""One request, one trace: the server span is the root, the library's spans hang below it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette

from launched import launch_environment, launched
from securecache import Settings
from securecache.ops.dev import ServerInfo
from securecache.telemetry import Telemetry
from servers import internal_api, public_api
from servers.durations import BUCKETS
from servers.durations import NAME as REQUEST_DURATION
from servers.settings import ServerSettings
from servers.telemetry import INTERNAL_SERVICE_NAME, PUBLIC_SERVICE_NAME, tracing_from_env

MakeSecurities = Callable[..., list[str]]
TOKEN = "trace-token-0123456789abcdef"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    """Where the test's spans end up."""
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    """An SDK provider exporting each span to memory as it ends."""
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


async def started(app: Starlette, **headers: str) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://traced", headers=headers
        ) as http,
    ):
        yield http


@pytest.fixture
async def public(
    database: Any, servers: ServerInfo, key_prefix: str, provider: TracerProvider
) -> AsyncIterator[httpx.AsyncClient]:
    """The public app, its tracer provider exporting to memory."""
    settings = Settings(
        database_url=database.reader_url, redis_url=servers.redis_url, key_prefix=key_prefix
    )
    async for http in started(public_api.create_app(settings, tracer_provider=provider)):
        yield http


@pytest.fixture
async def internal(
    database: Any, servers: ServerInfo, key_prefix: str, provider: TracerProvider
) -> AsyncIterator[httpx.AsyncClient]:
    """The internal app, tracing to memory."""
    settings = Settings(
        database_url=database.writer_url, redis_url=servers.redis_url, key_prefix=key_prefix
    )
    app = internal_api.create_app(
        settings,
        server=ServerSettings(api_tokens=(f"tracing:write:{TOKEN}",)),
        tracer_provider=provider,
    )
    async for http in started(app, Authorization=f"Bearer {TOKEN}"):
        yield http


def ancestry(span: ReadableSpan, spans: Sequence[ReadableSpan]) -> list[str]:
    """Names from ``span`` up to its root, following ``parent.span_id``."""
    by_id = {s.context.span_id: s for s in spans}
    names = [span.name]
    current = span
    while current.parent is not None:
        parent = by_id.get(current.parent.span_id)
        if parent is None:
            names.append(f"<remote {current.parent.span_id:016x}>")
            break
        names.append(parent.name)
        current = parent
    return names


def named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


async def test_a_miss_traces_server_cache_and_database(
    public: httpx.AsyncClient, exporter: InMemorySpanExporter, make_securities: MakeSecurities
) -> None:
    """A cold GET: the library's get, its Redis MGET and lookup and the SELECT all descend
    from the server span, which is named after the route, not the id."""
    (sid,) = make_securities(1)
    exporter.clear()
    assert (await public.get(f"/securities/{sid}")).status_code == 200
    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
    assert server.name == "GET /securities/{id}"
    assert server.attributes is not None
    assert server.attributes["http.route"] == "/securities/{id}"
    assert server.attributes["http.request.method"] == "GET"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["url.path"] == f"/securities/{sid}"
    assert server.parent is None
    (get,) = named(spans, "securecache securities.get")
    (select,) = named(spans, "SELECT securecache.security")
    (mget,) = named(spans, "MGET")
    (lookup,) = named(spans, "EVALSHA lookup")
    for span in (get, select, mget, lookup):
        assert span.context.trace_id == server.context.trace_id
        assert ancestry(span, spans)[-1] == server.name
    assert ancestry(get, spans) == ["securecache securities.get", server.name]
    assert select.kind is SpanKind.CLIENT
    assert "securecache securities.get" in ancestry(select, spans)


async def test_a_hit_traces_no_database(
    public: httpx.AsyncClient, exporter: InMemorySpanExporter, make_securities: MakeSecurities
) -> None:
    """Once cached, the same GET is a server span over one Redis MGET and no SQL."""
    (sid,) = make_securities(1, with_scores=True)
    await public.get(f"/securities/{sid}/score")
    exporter.clear()
    assert (await public.get(f"/securities/{sid}/score")).status_code == 200
    spans = exporter.get_finished_spans()
    assert not [s for s in spans if s.name.startswith("SELECT")]
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
    assert not named(spans, "EVALSHA lookup")
    (mget,) = named(spans, "MGET")
    assert ancestry(mget, spans)[-1] == server.name


async def test_the_server_span_continues_the_caller_trace(
    public: httpx.AsyncClient, exporter: InMemorySpanExporter, make_securities: MakeSecurities
) -> None:
    """A W3C traceparent from the caller makes the request part of the caller's trace."""
    (sid,) = make_securities(1)
    trace_id, parent_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    exporter.clear()
    await public.get(f"/securities/{sid}", headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})
    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
    assert f"{server.context.trace_id:032x}" == trace_id
    assert server.parent is not None
    assert f"{server.parent.span_id:016x}" == parent_id
    assert {f"{s.context.trace_id:032x}" for s in spans} == {trace_id}


async def test_requests_without_a_route_are_spans_named_by_their_method(
    public: httpx.AsyncClient, exporter: InMemorySpanExporter
) -> None:
    """An unknown path is a SERVER span named ``GET`` (no template to name it after) with its
    404; a method the path lacks is named after the path's template, with its 405; neither
    is an error on the server's side."""
    exporter.clear()
    assert (await public.get("/no/such/thing")).status_code == 404
    assert (await public.delete("/securities/SEC1")).status_code == 405
    unknown, wrong_method = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert unknown.name == "GET"
    assert unknown.attributes is not None
    assert unknown.attributes["http.response.status_code"] == 404
    assert "http.route" not in unknown.attributes
    assert wrong_method.name == "DELETE /securities/{id}"
    assert wrong_method.attributes is not None
    assert wrong_method.attributes["http.response.status_code"] == 405
    for span in (unknown, wrong_method):
        assert span.status.status_code is StatusCode.UNSET


async def test_excluded_urls_get_no_server_span(
    monkeypatch: pytest.MonkeyPatch,
    database: Any,
    servers: ServerInfo,
    key_prefix: str,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    """``OTEL_PYTHON_ASGI_EXCLUDED_URLS`` (docs/operations.md): a request whose URL matches
    one of its expressions gets no span; the others still do."""
    monkeypatch.setenv("OTEL_PYTHON_ASGI_EXCLUDED_URLS", "healthz,readyz")
    settings = Settings(
        database_url=database.reader_url, redis_url=servers.redis_url, key_prefix=key_prefix
    )
    async for http in started(public_api.create_app(settings, tracer_provider=provider)):
        exporter.clear()
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/no/such/thing")).status_code == 404
    server_spans = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert [s.name for s in server_spans] == ["GET"]  # the 404's; none for /healthz


async def test_a_write_traces_the_upsert_under_the_request(
    internal: httpx.AsyncClient, exporter: InMemorySpanExporter, make_securities: MakeSecurities
) -> None:
    """PUT: the library's scores.put and its UPSERT descend from the server span."""
    (sid,) = make_securities(1)
    exporter.clear()
    body = {"growth": 1, "value": 2, "quality": 3, "momentum": 4}
    assert (await internal.put(f"/scores/{sid}", json=body)).status_code == 201
    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
    assert server.name == "PUT /scores/{security_id}"
    (upsert,) = named(spans, "UPSERT securecache.score")
    assert ancestry(upsert, spans) == [upsert.name, "securecache scores.put", server.name]


def test_tracing_from_env_without_a_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    """No endpoint: no SDK tracer at all (nothing would receive a span, and the servers call
    no service a trace id could reach), the library starts none either, and the log says so."""
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    tracing = tracing_from_env(PUBLIC_SERVICE_NAME)
    assert isinstance(tracing.provider, trace.NoOpTracerProvider)
    assert "no span is made" in tracing.description
    assert Telemetry(tracer_provider=tracing.provider).tracing() is False
    tracing.shutdown()


def test_tracing_from_env_with_a_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    """An OTLP endpoint turns on the exporter; OTEL_SERVICE_NAME overrides the default name."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "scores-east")
    tracing = tracing_from_env(INTERNAL_SERVICE_NAME)
    assert isinstance(tracing.provider, TracerProvider)
    assert tracing.provider.resource.attributes["service.name"] == "scores-east"
    assert "OTLP/HTTP at http://127.0.0.1:4318" in tracing.description
    tracing.provider.shutdown()


def test_tracing_can_be_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_SDK_DISABLED=true installs no SDK at all."""
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    tracing = tracing_from_env(PUBLIC_SERVICE_NAME)
    assert not isinstance(tracing.provider, TracerProvider)


# -- the servers' own tracing: built when the lifespan starts, shut down when it ends -------


def otel_free_env(**extra: str) -> dict[str, str]:
    """This process's environment without any OTEL_* setting, plus ``extra``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | extra


NEW_THREADS = """
import json, threading
before = set(threading.enumerate())
from servers import internal_api, public_api
public_api.create_app()
internal_api.create_app()
print(json.dumps(sorted(t.name for t in set(threading.enumerate()) - before)))
"""


def test_importing_and_creating_the_apps_starts_no_thread() -> None:
    """With a collector configured, a fresh interpreter that imports both server modules
    (each creates its app) and creates two more apps has no more threads than before."""
    env = otel_free_env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", NEW_THREADS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


class Collector:
    """A stand-in OTLP/HTTP collector: it keeps every request's path and body."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.received: list[tuple[str, bytes]] = []


@pytest.fixture
def collector() -> Iterator[Collector]:
    """An OTLP/HTTP endpoint on a free loopback port, answering every export with 200."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    collector = Collector(f"http://127.0.0.1:{server.server_address[1]}")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            collector.received.append((self.path, body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server.RequestHandlerClass = Handler
    thread = threading.Thread(target=server.serve_forever, name="test-collector", daemon=True)
    thread.start()
    try:
        yield collector
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def exporting_threads() -> set[threading.Thread]:
    """The SDK's exporters' worker threads (spans in batches, metrics periodically) alive now."""
    return {t for t in threading.enumerate() if t.name.startswith(("OtelBatch", "OtelPeriodic"))}


@pytest.fixture
def reader_settings(database: Any, servers: ServerInfo, key_prefix: str) -> Settings:
    """Settings for the public app: the reader's URL and this test's key prefix."""
    return Settings(
        database_url=database.reader_url, redis_url=servers.redis_url, key_prefix=key_prefix
    )


async def test_a_served_app_exports_from_startup_and_flushes_at_shutdown(
    collector: Collector,
    reader_settings: Settings,
    make_securities: MakeSecurities,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No provider given: creating the app starts no exporter, the lifespan's startup starts
    one for spans and one for metrics, and its shutdown sends the request's spans and the
    measurements to the collector and stops both threads."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # only a flush exports in time
    (sid,) = make_securities(1)
    before = exporting_threads()
    app = public_api.create_app(reader_settings)
    assert exporting_threads() == before
    async for http in started(app):
        assert len(exporting_threads() - before) == 2
        assert (await http.get(f"/securities/{sid}")).status_code == 200
        assert collector.received == []
    assert exporting_threads() == before
    paths = [path for path, _ in collector.received]
    assert sorted(paths) == ["/v1/metrics", "/v1/traces"]
    body = dict(collector.received)["/v1/traces"]
    assert b"GET /securities/{id}" in body
    assert PUBLIC_SERVICE_NAME.encode() in body


# -- on the wire: a real server process exporting OTLP/HTTP to a receiver in this test ---------


def received_spans(collector: Collector) -> list[Span]:
    """Every span the collector received, decoded from OTLP/HTTP protobuf."""
    spans: list[Span] = []
    for path, body in collector.received:
        if path == "/v1/traces":
            request = ExportTraceServiceRequest.FromString(body)
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    spans.extend(scope.spans)
    return spans


def received_metrics(collector: Collector) -> list[Any]:
    """Every metric the collector received over OTLP, in order."""
    found: list[Any] = []
    for path, body in collector.received:
        if path == "/v1/metrics":
            request = ExportMetricsServiceRequest.FromString(body)
            for resource in request.resource_metrics:
                for scope in resource.scope_metrics:
                    found.extend(scope.metrics)
    return found


def received_metric_names(collector: Collector) -> set[str]:
    return {m.name for m in received_metrics(collector)}


def wire_ancestry(span: Span, spans: Sequence[Span]) -> list[str]:
    """Names from ``span`` up to its root, following ``parent_span_id`` on the wire."""
    by_id = {s.span_id: s for s in spans}
    names = [span.name]
    while span.parent_span_id:
        span = by_id[span.parent_span_id]
        names.append(span.name)
    return names


def test_a_served_request_reaches_the_collector_with_its_cache_and_database_spans(
    collector: Collector,
    database: Any,
    servers: ServerInfo,
    key_prefix: str,
    make_securities: MakeSecurities,
) -> None:
    """``python -m servers public`` with OTEL_EXPORTER_OTLP_ENDPOINT set: a cold GET's server
    span, its Redis lookup and its PostgreSQL SELECT arrive over OTLP/HTTP in one trace, the
    client spans descending from the server span; the library's counters arrive too."""
    (sid,) = make_securities(1)
    env = launch_environment(
        SECURECACHE_DATABASE_URL=database.reader_url,
        SECURECACHE_REDIS_URL=servers.redis_url,
        SECURECACHE_KEY_PREFIX=key_prefix,
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.url,
    )
    with launched("public", env) as running:
        assert httpx.get(f"{running.url}/securities/{sid}", timeout=10).status_code == 200
        assert running.stop() == 0, running.stderr  # shutting down flushes both exporters
    assert f"spans exported to OTLP/HTTP at {collector.url}" in running.stderr
    spans = received_spans(collector)
    (server,) = [s for s in spans if s.name == "GET /securities/{id}"]
    assert server.kind == Span.SpanKind.SPAN_KIND_SERVER
    (mget,) = [s for s in spans if s.name == "EVALSHA lookup"]
    (select,) = [s for s in spans if s.name == "SELECT securecache.security"]
    for child in (mget, select):
        assert child.trace_id == server.trace_id
        assert child.kind == Span.SpanKind.SPAN_KIND_CLIENT
        assert wire_ancestry(child, spans)[-1] == server.name
    assert {"securecache.cache.misses", "securecache.db.queries"} <= received_metric_names(
        collector
    )
    # The request histogram (servers.durations) arrives as the SDK's would: by route, with
    # its buckets, cumulative.
    (last, *_) = reversed([m for m in received_metrics(collector) if m.name == REQUEST_DURATION])
    assert last.unit == "s"
    by_route = {
        tuple(sorted((a.key, a.value.string_value or a.value.int_value) for a in p.attributes)): p
        for p in last.histogram.data_points
    }
    point = by_route[
        (
            ("http.request.method", "GET"),
            ("http.response.status_code", 200),
            ("http.route", "/securities/{id}"),
            ("url.scheme", "http"),
        )
    ]
    assert point.count == 1
    assert sum(point.bucket_counts) == 1
    assert list(point.explicit_bounds) == list(BUCKETS)
