"""Liveness and readiness probes, for orchestrators (``GET /healthz``, ``GET /readyz``).

Liveness touches no dependency, so a database outage takes pods out of service (unready)
rather than restarting them. Readiness needs PostgreSQL, the source of truth; Redis only
makes reads faster, so it is reported ("degraded" while away) and never required.
"""

from __future__ import annotations

import asyncio
from typing import Final, Literal

import attrs
from starlette.requests import Request
from starlette.responses import Response

from securecache import SecureCache, codec
from servers.params import JSON
from servers.routes import NO_STORE, RETRY_AFTER, Reply, declare

READY_TIMEOUT_SECONDS: Final = 2.0
"""Longest a readiness probe waits for PostgreSQL: probes time out, so answer before they do."""

RedisState = Literal["ok", "degraded", "disabled", "unknown"]
"""What readiness says of Redis: the library's states, or unknown when it could not ask."""


@attrs.frozen
class Liveness:
    """The process answers."""

    status: Literal["ok"]


@attrs.frozen
class Readiness:
    """Whether the process can serve, and the state of what it serves from."""

    status: Literal["ready", "unavailable"]
    database: Literal["ok", "unavailable"]
    redis: RedisState


_HEADERS: Final = {"Cache-Control": "no-store"}
_REDIS_STATES: Final[dict[str, RedisState]] = {
    "ok": "ok",
    "degraded": "degraded",
    "disabled": "disabled",
}


async def healthz() -> Response:
    """Liveness: the process answers (no dependency is checked)."""
    return Response(codec.dumps(Liveness(status="ok")), media_type=JSON, headers=_HEADERS)


async def readyz(request: Request) -> Response:
    """Readiness: PostgreSQL answers; Redis is reported, not required."""
    cache = getattr(request.app.state, "cache", None)
    database: Literal["ok", "unavailable"] = "unavailable"
    redis: RedisState = "unknown"
    if isinstance(cache, SecureCache):
        try:
            health = await asyncio.wait_for(cache.health(), READY_TIMEOUT_SECONDS)
        except TimeoutError:
            pass
        else:
            database = "ok" if health.database else "unavailable"
            redis = _REDIS_STATES.get(health.redis, "unknown")
    ready = database == "ok"
    body = Readiness(status="ready" if ready else "unavailable", database=database, redis=redis)
    headers = dict(_HEADERS) if ready else {**_HEADERS, "Retry-After": "1"}
    return Response(
        codec.dumps(body), status_code=200 if ready else 503, media_type=JSON, headers=headers
    )


OPERATIONS: Final = (
    declare(
        "GET",
        "/healthz",
        healthz,
        replies=[Reply(200, "Alive.", body=Liveness, headers={"Cache-Control": NO_STORE})],
    ),
    declare(
        "GET",
        "/readyz",
        readyz,
        replies=[
            Reply(200, "Ready to serve.", body=Readiness, headers={"Cache-Control": NO_STORE}),
            Reply(
                503,
                "PostgreSQL does not answer.",
                body=Readiness,
                headers={"Cache-Control": NO_STORE, "Retry-After": RETRY_AFTER},
            ),
        ],
    ),
)
