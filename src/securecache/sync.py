"""The synchronous twin: ``from securecache.sync import SecureCache``.

Same shape as the async API, same code underneath: every call runs the async
implementation on one event loop owned by a background thread and waits for its result. So
there is one copy of the caching logic, and batching and single-flight work across the threads
of a sync application too (their gets meet on the shared loop). Each sync method is declared
in one line by :func:`_twin` from its async original, whose signature and docstring it takes.

The one exception is the hit path of ``get`` and ``get_many``, which runs on the caller's
thread: the near cache, then one blocking ``MGET``, decoded by the policy's own rules
(:meth:`securecache.readthrough.ReadThrough.servable`). A hop to the loop thread and back
costs more than the read itself; whatever the hit path cannot serve (a miss, Redis failing or
recovering) goes through the loop as before.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from types import TracebackType
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace

from securecache import client
from securecache.cache import REDIS_FAILURES, SyncReader, connect_sync
from securecache.models import Health, Score, Security, validate_id, validate_ids
from securecache.nearcache import MISSING
from securecache.readthrough import CacheBackend, R, ReadThrough
from securecache.settings import Settings
from securecache.telemetry import SOURCE

log = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")
Inner = TypeVar("Inner")

__all__ = ["Scores", "SecureCache", "Securities"]


class _LoopThread:
    """An event loop running in a daemon thread, and a way to call into it."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="securecache-loop", daemon=True
        )
        self._thread.start()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("the sync API cannot be called from its own event loop")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


class _Twin(Generic[Inner]):
    """A sync view of an async object: its methods run on the loop thread."""

    def __init__(self, inner: Inner, loop: _LoopThread) -> None:
        self._inner = inner
        self._loop = loop


def _twin(
    method: Callable[Concatenate[Inner, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[_Twin[Inner], P], T]:
    """The sync method of an async one: same parameters, same docstring, plain result."""

    @functools.wraps(method)
    def call(self: _Twin[Inner], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._loop.run(method(self._inner, *args, **kwargs))

    return call


class _Reads(_Twin[Inner], Generic[Inner, R]):
    """``get`` and ``get_many``, their hits served on the caller's thread.

    The call's span is the caller's: it is opened on this thread (a child of the caller's
    current span), and what runs on the loop for the rest carries it along, so one call is
    one span whichever thread served it.
    """

    def __init__(
        self, inner: Inner, loop: _LoopThread, reads: ReadThrough[R], reader: SyncReader | None
    ) -> None:
        super().__init__(inner, loop)
        self._reads: ReadThrough[R] = reads
        self._reader: SyncReader | None = reader

    def get(self, security_id: str) -> R | None:
        """The record of ``security_id``, or None if there is none."""
        reads = self._reads
        hit = reads.recall(security_id)
        if hit is not MISSING:
            return hit  # type: ignore[no-any-return]
        id_ = validate_id(security_id)
        with reads.telemetry.call_span(f"securecache {reads.namespace}.get") as span:
            hits, _, missed = self._hits([id_])
            if hits:
                record: R | None = hits[0][1]
                span.set_attribute(SOURCE, "redis" if record is not None else "absent")
                return record
            load = _load(reads, id_, missed)  # decided on the loop: the registry lives there
            record, source = self._loop.run(_carried(load, otel_context.get_current()))
            span.set_attribute(SOURCE, source)
            return record

    def get_many(self, security_ids: Iterable[str]) -> dict[str, R]:
        """The records among ``security_ids`` that exist, keyed by id."""
        reads = self._reads
        remembered, rest = reads.remembered(list(dict.fromkeys(validate_ids(security_ids))))
        found = {i: r for i, r in remembered.items() if r is not None}
        if not rest:
            return found
        with reads.telemetry.call_span(f"securecache {reads.namespace}.get_many") as span:
            span.set_attribute("securecache.ids", len(rest))
            hits, rest, missed = self._hits(rest)
            found.update((i, r) for i, r in hits if r is not None)
            if rest:
                load = reads.load_many(rest, missed=missed)
                found.update(self._loop.run(_carried(load, otel_context.get_current())))
            return found

    def _hits(self, ids: Sequence[str]) -> tuple[list[tuple[str, R | None]], list[str], bool]:
        """What one blocking MGET can serve of ``ids`` (a record, or None when known absent),
        the other ids, and whether Redis answered (then those others are known misses)."""
        reads = self._reads
        if self._reader is None:
            return [], list(ids), False
        near = reads.near
        ticket = near.ticket() if near is not None else 0
        raws = self._reader.entries(reads.keys.values(reads.kind, ids))  # ids validated
        if raws is None:
            return [], list(ids), False
        hits, rest = reads.servable(ids, raws)
        if hits and reads.keeps:  # the near cache and the audit belong to the loop
            self._loop.loop.call_soon_threadsafe(reads.keep, hits, ticket)
        return hits, rest, True


def _sync_reader(inner: client.SecureCache, loop: _LoopThread) -> SyncReader | None:
    """The caller-thread hit path's Redis client; None (every read through the loop) if it
    cannot be made, e.g. a cluster client that cannot reach any node at start-up."""
    s, cache = inner.settings, inner._cache
    if cache is None or not s.redis_url:
        return None
    try:
        redis_client = connect_sync(
            s.redis_url,
            cluster=s.redis_cluster,
            timeout=s.redis_timeout_seconds,
            max_connections=s.redis_max_connections,
        )
    except REDIS_FAILURES as exc:
        log.warning(
            "sync twin: no Redis client for its hit path (%s); reads go through its loop", exc
        )
        return None

    def failed() -> None:
        loop.loop.call_soon_threadsafe(cache.note_failure)

    return SyncReader(redis_client, cache, inner._telemetry, on_failure=failed)


async def _load(reads: ReadThrough[R], id_: str, missed: bool) -> tuple[R | None, str]:
    return await reads.load(id_, missed=missed)


async def _carried(awaitable: Awaitable[T], context: otel_context.Context) -> T:
    """Await ``awaitable`` on the loop within ``context``, the caller's OpenTelemetry context
    (taken on the caller's thread)."""
    token = otel_context.attach(context)
    try:
        return await awaitable
    finally:
        otel_context.detach(token)


class Securities(_Reads[client.Securities, Security]):
    """Sync twin of :class:`securecache.client.Securities`."""

    list = _twin(client.Securities.list)


class Scores(_Reads[client.Scores, Score]):
    """Sync twin of :class:`securecache.client.Scores`."""

    put = _twin(client.Scores.put)
    upsert = _twin(client.Scores.upsert)
    upsert_many = _twin(client.Scores.upsert_many)


class SecureCache(_Twin[client.SecureCache]):
    """Sync twin of :class:`securecache.SecureCache`: plain methods, plain ``with``."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        wrap_redis: Callable[[CacheBackend], CacheBackend] | None = None,
    ) -> None:
        loop = _LoopThread()
        try:
            # Built on the loop's thread, so pools and futures belong to that loop.
            inner = loop.run(_build(settings, tracer_provider, meter_provider, wrap_redis))
        except BaseException:
            loop.stop()
            raise
        super().__init__(inner, loop)
        self.settings = inner.settings
        # The seam (wrap_redis) must see every Redis call: with it, hits go through the loop.
        self._reader = (
            _sync_reader(inner, loop) if inner._cache is not None and wrap_redis is None else None
        )
        security_reads, score_reads = inner._reads
        self.securities = Securities(inner.securities, loop, security_reads, self._reader)
        self.scores = Scores(inner.scores, loop, score_reads, self._reader)
        self._closed = False

    def open(self) -> Self:
        self._loop.run(self._inner.open())
        return self

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._loop.run(self._inner.aclose())
        finally:
            if self._reader is not None:
                self._reader.close()
            self._loop.stop()

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    invalidate = _twin(client.SecureCache.invalidate)

    def health(self) -> Health:
        return self._loop.run(self._inner.health())


async def _build(
    settings: Settings | None,
    tracer_provider: trace.TracerProvider | None,
    meter_provider: metrics.MeterProvider | None,
    wrap_redis: Callable[[CacheBackend], CacheBackend] | None,
) -> client.SecureCache:
    return client.SecureCache(
        settings,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        wrap_redis=wrap_redis,
    )
