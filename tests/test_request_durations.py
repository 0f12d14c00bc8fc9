"""The servers' own request histogram (servers.durations) against the SDK's: the same
durations give the same data points, and the same Prometheus exposition."""

from __future__ import annotations

import random
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Histogram, HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, generate_latest

from servers import durations
from servers.durations import PrometheusReader, RequestDurations

RESOURCE = Resource.create({"service.name": "durations-test"})
ROUTES = ["/securities/{id}", "/securities/{id}/score", None]


def requests(n: int) -> list[tuple[float, str, str, int, str | None]]:
    """Durations on and around every bucket bound, beyond the last, and random ones."""
    rng = random.Random(7)
    edges = [b for bound in durations.BUCKETS for b in (bound, bound * 0.999, bound * 1.001)]
    values = [0.0, 12.5, *edges, *(rng.expovariate(50) for _ in range(n))]
    return [
        (v, rng.choice(["GET", "PUT"]), "http", rng.choice([200, 304, 404, 0]), rng.choice(ROUTES))
        for v in values
    ]


def attributes(method: str, scheme: str, status: int, route: str | None) -> dict[str, Any]:
    found: dict[str, Any] = {"http.request.method": method, "url.scheme": scheme}
    if status:
        found["http.response.status_code"] = status
    if route is not None:
        found["http.route"] = route
    return found


def sdk_histogram(provider: MeterProvider) -> Any:
    return provider.get_meter(durations.SCOPE).create_histogram(
        durations.NAME,
        unit=durations.UNIT,
        description=durations.DESCRIPTION,
        explicit_bucket_boundaries_advisory=durations.BUCKETS,
    )


def by_attributes(points: Any) -> dict[frozenset[tuple[str, Any]], HistogramDataPoint]:
    return {frozenset(p.attributes.items()): p for p in points}


def test_the_same_durations_make_the_same_data_points_as_the_sdk() -> None:
    """Count, sum, bucket counts (values on a bound fall in the bucket it closes), bounds,
    min and max agree with the SDK's explicit-bucket histogram, per attribute set."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], resource=RESOURCE)
    histogram = sdk_histogram(provider)
    ours = RequestDurations()
    for seconds, method, scheme, status, route in requests(2000):
        histogram.record(seconds, attributes(method, scheme, status, route))
        ours.record(seconds, method, scheme, status, route)
    data = reader.get_metrics_data()
    assert data is not None
    (theirs,) = [
        m
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == durations.NAME
    ]
    mine = ours.metric()
    assert mine is not None
    assert (mine.name, mine.unit) == (theirs.name, theirs.unit)
    assert mine.description == theirs.description
    assert isinstance(mine.data, Histogram)
    assert isinstance(theirs.data, Histogram)
    assert mine.data.aggregation_temporality == theirs.data.aggregation_temporality
    expected, actual = by_attributes(theirs.data.data_points), by_attributes(mine.data.data_points)
    assert expected.keys() == actual.keys()
    for key, point in expected.items():
        got = actual[key]
        assert got.count == point.count
        assert abs(got.sum - point.sum) < 1e-9
        assert list(got.bucket_counts) == list(point.bucket_counts)
        assert list(got.explicit_bounds) == list(point.explicit_bounds)
        assert (got.min, got.max) == (point.min, point.max)
    provider.shutdown()


def _histogram_lines(text: bytes) -> list[str]:
    """The exposition's lines of the request histogram, without scope version labels."""
    return sorted(
        line
        for line in text.decode().splitlines()
        if line.startswith("http_server_request_duration_seconds")
    )


def test_the_prometheus_endpoint_shows_what_the_sdk_histogram_would() -> None:
    """Through the Prometheus reader the servers build, the histogram's exposition is line
    for line the one the SDK's own instrument gives (beside the requests in flight, which
    the servers always observe in the same scope)."""
    registries = CollectorRegistry(), CollectorRegistry()
    theirs = MeterProvider(
        metric_readers=[PrometheusMetricReader(registry=registries[0])], resource=RESOURCE
    )
    ours = RequestDurations()
    mine = MeterProvider(
        metric_readers=[PrometheusReader(ours, registry=registries[1])], resource=RESOURCE
    )
    histogram = sdk_histogram(theirs)
    for provider in (theirs, mine):
        provider.get_meter(durations.SCOPE).create_observable_up_down_counter(
            "http.server.active_requests",
            callbacks=[lambda _: [Observation(0, {"http.request.method": "GET"})]],
        )
    assert _histogram_lines(generate_latest(registries[1])) == []  # nothing before a request
    for seconds, method, scheme, status, route in requests(300):
        histogram.record(seconds, attributes(method, scheme, status, route))
        ours.record(seconds, method, scheme, status, route)
    expected = _histogram_lines(generate_latest(registries[0]))
    assert len(expected) > 50
    assert _histogram_lines(generate_latest(registries[1])) == expected
    theirs.shutdown()
    mine.shutdown()
