"""The synchronous twin: ``from securecache.sync import SecureCache``.

Same shape as the async API, same code underneath: every call runs the async
implementation on one event loop owned by a background thread and waits for its result. So
there is one copy of the caching logic, and batching and single-flight work across the threads
of a sync application too (their gets meet on the shared loop).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

from opentelemetry import metrics, trace

from securecache import client
from securecache.models import Page, Score, ScoreUpdate, Security
from securecache.settings import Settings
from securecache.store import ScoreWrite

T = TypeVar("T")

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


class Securities:
    """Sync twin of :class:`securecache.client.Securities`."""

    def __init__(self, inner: client.Securities, loop: _LoopThread) -> None:
        self._inner = inner
        self._loop = loop

    def get(self, security_id: str) -> Security | None:
        return self._loop.run(self._inner.get(security_id))

    def get_many(self, security_ids: Iterable[str]) -> dict[str, Security]:
        return self._loop.run(self._inner.get_many(security_ids))

    def list(self, limit: int = 50, after: str | None = None) -> Page[Security]:
        return self._loop.run(self._inner.list(limit=limit, after=after))


class Scores:
    """Sync twin of :class:`securecache.client.Scores`."""

    def __init__(self, inner: client.Scores, loop: _LoopThread) -> None:
        self._inner = inner
        self._loop = loop

    def get(self, security_id: str) -> Score | None:
        return self._loop.run(self._inner.get(security_id))

    def get_many(self, security_ids: Iterable[str]) -> dict[str, Score]:
        return self._loop.run(self._inner.get_many(security_ids))

    def put(self, security_id: str, update: ScoreUpdate, *, if_version: int | None = None) -> Score:
        return self._loop.run(self._inner.put(security_id, update, if_version=if_version))

    def upsert(
        self, security_id: str, update: ScoreUpdate, *, if_version: int | None = None
    ) -> ScoreWrite:
        return self._loop.run(self._inner.upsert(security_id, update, if_version=if_version))

    def upsert_many(
        self,
        updates: Mapping[str, ScoreUpdate],
        *,
        if_versions: Mapping[str, int | None] | None = None,
    ) -> dict[str, ScoreWrite]:
        return self._loop.run(self._inner.upsert_many(updates, if_versions=if_versions))


class SecureCache:
    """Sync twin of :class:`securecache.SecureCache`: plain methods, plain ``with``."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._loop = _LoopThread()
        try:
            # Built on the loop's thread, so pools and futures belong to that loop.
            self._inner = self._loop.run(_build(settings, tracer_provider, meter_provider))
        except BaseException:
            self._loop.stop()
            raise
        self.settings = self._inner.settings
        self.securities = Securities(self._inner.securities, self._loop)
        self.scores = Scores(self._inner.scores, self._loop)
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

    def invalidate(self, security_id: str) -> None:
        self._loop.run(self._inner.invalidate(security_id))

    def health(self) -> client.Health:
        return self._loop.run(self._inner.health())


async def _build(
    settings: Settings | None,
    tracer_provider: trace.TracerProvider | None,
    meter_provider: metrics.MeterProvider | None,
) -> client.SecureCache:
    return client.SecureCache(
        settings, tracer_provider=tracer_provider, meter_provider=meter_provider
    )
