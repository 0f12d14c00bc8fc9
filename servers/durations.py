"""The request duration histogram (``http.server.request.duration``), aggregated in process.

The SDK's ``Histogram.record`` cleans, copies and hashes the attributes of every measurement:
under load that was a quarter of a cached request's CPU (``wrk -t2 -c64`` against ``python -m
servers public``: 12,528 requests a second with it, 17,185 with the call removed; see
docs/performance.md). Here a request adds its duration to the buckets of its attribute set (a
look-up, a bisect and a few additions under a lock), and the metric readers the servers build
receive the histogram as SDK metric data each time they collect (:class:`PrometheusReader`,
:class:`PeriodicReader`): the Prometheus endpoint and the OTLP export see the instrument the
SDK would have made (name, unit, buckets, attributes; cumulative, with min and max; no
exemplars). A meter provider given by the caller is measured through the SDK instead
(:class:`servers.telemetry.RequestTelemetry`): its readers are not ours.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from typing import Any, Final

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    PeriodicExportingMetricReader,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

NAME: Final = "http.server.request.duration"
UNIT: Final = "s"
DESCRIPTION: Final = "Duration of HTTP server requests."
BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
"""The semantic conventions' advice for ``http.server.request.duration``, in seconds."""
SCOPE: Final = "servers"
"""The instrumentation scope of the servers' own instruments (their meter's name)."""

SeriesKey = tuple[str, str, int, str | None]
"""(method, scheme, status or 0, route template or None): one attribute set."""


class _Series:
    __slots__ = ("count", "counts", "high", "low", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0
        self.count = 0
        self.low = float("inf")
        self.high = float("-inf")


class RequestDurations:
    """The cumulative histogram of the requests one app (or several) served."""

    def __init__(self) -> None:
        self._series: dict[SeriesKey, _Series] = {}
        self._lock = threading.Lock()  # the readers collect on threads of their own
        self._started = time.time_ns()

    def record(
        self, seconds: float, method: str, scheme: str, status: int, route: str | None
    ) -> None:
        """One request's duration; ``status`` 0 when none was sent, ``route`` None when no
        route matched."""
        # The SDK's explicit-bucket rule: bucket i counts values up to BUCKETS[i] included.
        bucket = bisect_left(BUCKETS, seconds)
        key = (method, scheme, status, route)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series()
            series.counts[bucket] += 1
            series.total += seconds
            series.count += 1
            # Comparisons rather than min() and max(): two builtin calls fewer a request.
            if seconds < series.low:  # noqa: PLR1730
                series.low = seconds
            if seconds > series.high:  # noqa: PLR1730
                series.high = seconds

    def metric(self) -> Metric | None:
        """The histogram as the SDK exports it; None before the first request."""
        now = time.time_ns()
        with self._lock:
            points = [
                HistogramDataPoint(
                    attributes=attributes(*key),
                    start_time_unix_nano=self._started,
                    time_unix_nano=now,
                    count=series.count,
                    sum=series.total,
                    bucket_counts=tuple(series.counts),
                    explicit_bounds=BUCKETS,
                    min=series.low,
                    max=series.high,
                )
                for key, series in self._series.items()
            ]
        if not points:
            return None
        return Metric(
            name=NAME,
            description=DESCRIPTION,
            unit=UNIT,
            data=Histogram(
                data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE
            ),
        )

    def added_to(self, data: MetricsData) -> MetricsData:
        """``data`` with the histogram in the servers' scope of its first resource.

        A reader receives data only when the provider has some of its own: it always does
        once a request was measured (the requests in flight, ``http.server.active_requests``,
        are observed in the same scope from the first request on).
        """
        metric = self.metric()
        if metric is None or not data.resource_metrics:
            return data
        first, *others = data.resource_metrics
        scopes = list(first.scope_metrics)
        for i, scope in enumerate(scopes):
            if scope.scope.name == SCOPE:
                scopes[i] = ScopeMetrics(scope.scope, [*scope.metrics, metric], scope.schema_url)
                break
        else:
            scopes.append(ScopeMetrics(InstrumentationScope(SCOPE), [metric], ""))
        resource = ResourceMetrics(first.resource, scopes, first.schema_url)
        return MetricsData([resource, *others])


def attributes(method: str, scheme: str, status: int, route: str | None) -> dict[str, str | int]:
    """The semantic conventions' attributes of one request's duration."""
    found: dict[str, str | int] = {"http.request.method": method, "url.scheme": scheme}
    if status:
        found["http.response.status_code"] = status
    if route is not None:
        found["http.route"] = route
    return found


class PrometheusReader(PrometheusMetricReader):
    """The SDK's Prometheus reader, whose every collection includes ``durations``."""

    def __init__(self, durations: RequestDurations, **options: Any) -> None:
        super().__init__(**options)
        self.durations = durations

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        super()._receive_metrics(self.durations.added_to(metrics_data), timeout_millis, **kwargs)


class PeriodicReader(PeriodicExportingMetricReader):
    """The SDK's periodic exporting reader (OTLP), whose every export includes
    ``durations``."""

    def __init__(self, durations: RequestDurations, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        self.durations = durations

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        super()._receive_metrics(self.durations.added_to(metrics_data), timeout_millis, **kwargs)
