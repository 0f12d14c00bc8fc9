"""The synchronous twin: ``from securecache.sync import SecureCache``.

Same shape as the async API, same code underneath: every call runs the async
implementation on one event loop owned by a background thread and waits for its result. So
there is one copy of the caching logic, and batching and single-flight work across the threads
of a sync application too (their gets meet on the shared loop). Each sync method is declared
in one line by :func:`_twin` from its async original, whose signature and docstring it takes.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar

from opentelemetry import metrics, trace

from securecache import client
from securecache.models import Health
from securecache.readthrough import CacheBackend
from securecache.settings import Settings

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


class Securities(_Twin[client.Securities]):
    """Sync twin of :class:`securecache.client.Securities`."""

    get = _twin(client.Securities.get)
    get_many = _twin(client.Securities.get_many)
    list = _twin(client.Securities.list)


class Scores(_Twin[client.Scores]):
    """Sync twin of :class:`securecache.client.Scores`."""

    get = _twin(client.Scores.get)
    get_many = _twin(client.Scores.get_many)
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
        self.securities = Securities(inner.securities, loop)
        self.scores = Scores(inner.scores, loop)
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
