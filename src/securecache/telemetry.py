"""Tracing and metrics through the OpenTelemetry API only.

The library never installs an SDK: until the application does (the servers do), every span
and counter here is a no-op costing a few attribute look-ups. Applications may pass their own
providers, which tests use to capture spans in memory.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Final

from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from securecache._version import __version__

INSTRUMENTATION: Final = "securecache"
SOURCE: Final = "securecache.source"
"""Span attribute: where a single get's value came from (redis, postgres or absent)."""


NO_SPAN: Final[AbstractContextManager[trace.Span]] = nullcontext(trace.INVALID_SPAN)
"""What a span costs while no SDK is installed: nothing (a shared, reusable no-op)."""


def _unsampled_parent() -> bool:
    """True inside a span that was not sampled: a child would not be either (OpenTelemetry's
    default, parent-based sampling, and the servers' "no exporter" provider, which samples
    nothing), so none is started. A sampler that keeps children of dropped parents would
    lose the library's spans under those parents."""
    context = trace.get_current_span().get_span_context()
    return context.is_valid and not context.trace_flags.sampled


class Tally:
    """A counter kept in process and reported when metrics are collected (an OpenTelemetry
    observable counter, cumulative).

    A synchronous SDK counter costs 3.5-5.5 us an ``add`` (measured with ``timeit``), as much
    as a whole near-cache hit; here an ``add`` is a dictionary update under a lock (the sync
    twin counts from its callers' threads). Same ``add(amount, attributes)`` as a counter.
    """

    def __init__(self, meter: metrics.Meter, name: str, *, unit: str, description: str) -> None:
        self.name = name
        self._counts: dict[tuple[tuple[str, str], ...], int] = {}
        self._lock = threading.Lock()
        self._ticks = itertools.count()
        self._ticks_observed = 0
        """How many values of ``_ticks`` :meth:`_observe` itself took (one a collection)."""
        self.tick: Callable[[], object] = self._ticks.__next__
        """``add(1)`` without attributes, for the hottest counts (a near-cache hit): the
        count's own ``__next__``, so no lock and no Python frame (one step under the GIL)."""
        meter.create_observable_counter(
            name, callbacks=[self._observe], unit=unit, description=description
        )

    def add(self, amount: int, attributes: Mapping[str, str] | None = None) -> None:
        key = tuple(attributes.items()) if attributes else ()
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + amount

    def _observe(self, _options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        with self._lock:
            counts = dict(self._counts)
            # The count's next value is the ticks so far plus the values taken here before.
            ticks = next(self._ticks) - self._ticks_observed
            self._ticks_observed += 1
        if ticks:
            counts[()] = counts.get((), 0) + ticks
        return [metrics.Observation(total, dict(key)) for key, total in counts.items()]


class Telemetry:
    """The tracer and the counters of one SecureCache instance."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.tracer = trace.get_tracer(INSTRUMENTATION, __version__, tracer_provider)
        self._provider = tracer_provider
        self._tracing = False
        self._next_check = 0.0
        meter = metrics.get_meter(INSTRUMENTATION, __version__, meter_provider)
        self.hits = Tally(
            meter, "securecache.cache.hits", unit="{entry}", description="Values served from Redis"
        )
        self.misses = Tally(
            meter,
            "securecache.cache.misses",
            unit="{entry}",
            description="Values not found in Redis",
        )
        self.fills = Tally(
            meter, "securecache.cache.fills", unit="{entry}", description="Values written to Redis"
        )
        self.cas_rejections = Tally(
            meter,
            "securecache.cache.cas_rejections",
            unit="{entry}",
            description="Cache writes refused because a newer version or no lease was there",
        )
        self.lease_waits = Tally(
            meter,
            "securecache.cache.lease_waits",
            unit="{entry}",
            description="Misses that waited for another process's fill (by outcome)",
        )
        self.near_hits = Tally(
            meter, "securecache.near.hits", unit="{entry}", description="Values served from memory"
        )
        self.near_misses = Tally(
            meter,
            "securecache.near.misses",
            unit="{entry}",
            description="Near-cache look-ups missed",
        )
        self.near_evictions = Tally(
            meter,
            "securecache.near.evictions",
            unit="{entry}",
            description="Near-cache entries evicted for room (least recently used)",
        )
        self.corrupt = Tally(
            meter,
            "securecache.cache.corrupt",
            unit="{entry}",
            description="Untrusted entries ignored",
        )
        self.redis_errors = Tally(
            meter,
            "securecache.redis.errors",
            unit="{error}",
            description="Failed Redis round trips",
        )
        self.audit_checked = Tally(
            meter,
            "securecache.audit.checked",
            unit="{entry}",
            description="Cache hits the consistency audit compared with PostgreSQL",
        )
        self.audit_inconsistent = Tally(
            meter,
            "securecache.audit.inconsistent",
            unit="{entry}",
            description="Audited entries that disagreed with PostgreSQL (by kind); dropped",
        )
        self.db_queries = Tally(
            meter, "securecache.db.queries", unit="{query}", description="PostgreSQL statements run"
        )

    def tracing(self) -> bool:
        """False while no SDK is installed: spans would be no-ops, so none is started.

        An SDK installed later is picked up within a second: the global provider is looked
        up again at most once a second (the look-up reads the environment, which costs more
        than the rest of a hit), and once it is real it stays so (OpenTelemetry sets the
        global provider once).
        """
        if self._tracing:
            return True
        now = time.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + 1.0
        provider = self._provider if self._provider is not None else trace.get_tracer_provider()
        self._tracing = not isinstance(
            provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider
        )
        return self._tracing

    def client_span(
        self, name: str, system: str, operation: str
    ) -> AbstractContextManager[trace.Span]:
        """A child span for one round trip to Redis or PostgreSQL."""
        if not self.tracing() or _unsampled_parent():
            return NO_SPAN
        return self._client_span(name, system, operation)

    def call_span(self, name: str) -> AbstractContextManager[trace.Span]:
        """The span of one public library call."""
        if not self.tracing() or _unsampled_parent():
            return NO_SPAN
        return self._call_span(name)

    @contextmanager
    def _client_span(self, name: str, system: str, operation: str) -> Iterator[trace.Span]:
        with self.tracer.start_as_current_span(
            name,
            kind=SpanKind.CLIENT,
            attributes={"db.system.name": system, "db.operation.name": operation},
            record_exception=True,
        ) as span:
            yield span

    @contextmanager
    def _call_span(self, name: str) -> Iterator[trace.Span]:
        with self.tracer.start_as_current_span(name, record_exception=True) as span:
            try:
                yield span
            except BaseException as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
