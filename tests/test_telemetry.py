"""Tracing costs nothing until an SDK is installed, and works as soon as one is."""

from __future__ import annotations

import threading

from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from counters import counter_totals
from securecache.telemetry import Tally, Telemetry


def test_without_an_sdk_no_span_is_started() -> None:
    """With only the API's default provider, spans are skipped (they would be no-ops)."""
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    telemetry = Telemetry()
    assert telemetry.tracing() is False
    with telemetry.client_span("MGET", "redis", "MGET") as span:
        assert span is trace.INVALID_SPAN
        assert trace.get_current_span() is trace.INVALID_SPAN


def test_with_a_provider_spans_are_recorded_and_nested() -> None:
    """A provider passed in records the call span with the round trip as its child."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(tracer_provider=provider)
    assert telemetry.tracing() is True
    with (
        telemetry.call_span("securecache scores.get"),
        telemetry.client_span("MGET", "redis", "MGET"),
    ):
        pass
    child, parent = exporter.get_finished_spans()
    assert (child.name, parent.name) == ("MGET", "securecache scores.get")
    assert child.parent is not None
    assert child.parent.span_id == parent.context.span_id
    assert child.attributes is not None
    assert child.attributes["db.system.name"] == "redis"
    provider.shutdown()


def test_a_tally_reports_ticks_and_adds_together_across_collections_and_threads() -> None:
    """``tick`` (lock-free) and ``add`` feed one cumulative count, exact under many threads
    and across collections (each collection's own step of the tick count is not counted)."""
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    tally = Tally(meter, "test.tally", unit="{entry}", description="test")
    assert counter_totals(reader, "test.tally") == {}

    def tick(times: int) -> None:
        for _ in range(times):
            tally.tick()

    threads = [threading.Thread(target=tick, args=(5_000,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tally.add(3)
    tally.add(2, {"outcome": "x"})
    assert counter_totals(reader, "test.tally", by="outcome") == {"": 40_003, "x": 2}
    tick(7)
    assert counter_totals(reader, "test.tally", by="outcome") == {"": 40_010, "x": 2}
    assert counter_totals(reader, "test.tally", by="outcome") == {"": 40_010, "x": 2}
