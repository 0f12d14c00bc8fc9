"""The consistency audit (Meta's Polaris idea): a sampled share of cache hits is checked
against PostgreSQL in the background, so operators can see how often the cache disagrees.

For each sampled hit the audit reads the row as PostgreSQL holds it now. A cache entry may lawfully
trail PostgreSQL for a moment (a write has committed and its write-through is on its way), so
an entry older than the row counts only once the row has been at its version for longer than
the grace period. Everything else that disagrees counts at once: an entry claiming a version
PostgreSQL does not hold (forged, or left over from a restored database), or a record cached
for an id PostgreSQL does not have, or a record at the row's very version whose content is
not the row's (only a Redis user can have written that). Each disagreement is counted by
kind, logged with the id and both versions, and the entry is dropped (the next read fills it
from PostgreSQL).

Off unless ``audit_sample_rate`` is above 0; at 0 nothing extra runs on the hit path.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

from securecache.keys import Kind
from securecache.models import Score, Security
from securecache.telemetry import Telemetry

log = logging.getLogger(__name__)

Versions = Callable[[Kind, Sequence[str]], Awaitable[dict[str, tuple[int, datetime]]]]
"""(kind, ids) -> {id: (version, updated_at)} of the rows that exist (one query)."""
Rows = Callable[[Kind, Sequence[str]], Awaitable[Mapping[str, Security | Score]]]
"""(kind, ids) -> the records of the rows that exist (one query)."""
Drop = Callable[[Kind, Sequence[str]], Awaitable[None]]
"""Drops the cached entries of ids of one kind."""

STALE: Final = "stale"
"""Older than a row that has kept its version for longer than the grace (or "absent" for a
row that exists)."""
NEWER_THAN_DATABASE: Final = "newer_than_database"
"""Claims a version PostgreSQL has never held: forged, or from a restored database."""
ALTERED: Final = "altered"
"""At the row's version, but not the row's content: written into Redis by someone else."""
ROW_MISSING: Final = "row_missing"
"""A record cached for an id PostgreSQL does not have (deleted with nobody listening, or
planted)."""


class Audit:
    """Samples hits and checks them in background tasks (bounded in number)."""

    def __init__(
        self,
        *,
        rate: float,
        grace: float,
        rows: Rows,
        drop: Drop,
        telemetry: Telemetry,
        max_tasks: int = 16,
    ) -> None:
        self._rate = rate
        self._grace = timedelta(seconds=grace)
        self._rows = rows
        self._drop = drop
        self._telemetry = telemetry
        self._max_tasks = max_tasks
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    def sample(self, kind: Kind, hits: Sequence[tuple[str, Security | Score | None]]) -> None:
        """Maybe check some of these hits, as (id, cached record or None); never waits."""
        if self._rate <= 0 or not hits:
            return
        chosen = hits if self._rate >= 1 else [h for h in hits if random.random() < self._rate]
        if not chosen or len(self._tasks) >= self._max_tasks:
            return  # under load the audit skips rather than queue work behind the reads
        task = asyncio.get_running_loop().create_task(self._check(kind, chosen))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _check(self, kind: Kind, hits: Sequence[tuple[str, Security | Score | None]]) -> None:
        attrs = {"securecache.kind": str(kind)}
        try:
            rows = await self._rows(kind, [i for i, _ in hits])
        except Exception as exc:  # the audit must never hurt the reads it watches
            log.debug("audit: could not read versions (%s)", exc)
            return
        self._telemetry.audit_checked.add(len(hits), attrs)
        now = datetime.now(UTC)
        bad: list[str] = []
        for id_, cached in hits:
            row = rows.get(id_)
            settled = row is not None and now - row.updated_at > self._grace
            problem: str | None = None
            if cached is None:
                problem = STALE if settled else None  # "absent", but the row exists
            elif row is None:
                problem = ROW_MISSING
            elif cached.version > row.version:
                problem = NEWER_THAN_DATABASE
            elif cached.version < row.version:
                problem = STALE if settled else None
            elif cached != row:
                problem = ALTERED
            if problem is not None:
                bad.append(id_)
                kind_attrs = {**attrs, "securecache.audit.kind": problem}
                self._telemetry.audit_inconsistent.add(1, kind_attrs)
                log.warning(
                    "audit: %s %s is %s in the cache: cached %s, PostgreSQL %s",
                    kind,
                    id_,
                    problem,
                    "absent" if cached is None else f"version {cached.version}",
                    "has no row" if row is None else f"version {row.version}",
                )
        if bad:
            await self._drop(kind, bad)

    async def aclose(self) -> None:
        """Wait for checks in flight (each is one query and maybe one DEL)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
