"""Reading the library's OpenTelemetry counters back in tests (an in-memory meter reader)."""

from __future__ import annotations

from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint


def counter_totals(
    reader: InMemoryMetricReader, name: str, by: str | None = None
) -> dict[str, int]:
    """The sum of counter ``name``'s points so far, by the value of attribute ``by`` ("" for a
    point without it, or for every point when ``by`` is None)."""
    totals: dict[str, int] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != name:
                    continue
                for point in metric.data.data_points:
                    assert isinstance(point, NumberDataPoint)
                    key = str((point.attributes or {}).get(by, "")) if by else ""
                    totals[key] = totals.get(key, 0) + int(point.value)
    return totals


def counter_total(reader: InMemoryMetricReader, name: str) -> int:
    """The sum of all of counter ``name``'s points so far."""
    return sum(counter_totals(reader, name).values())
