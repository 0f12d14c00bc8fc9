"""The public API (port 8080): Security and Score records, read-only, no authentication.

Run it with a ``securecache_reader`` database URL and a Redis user confined to the key prefix
(:func:`securecache.ops.acl.setuser_rules`): it can then read and fill the cache but never change
PostgreSQL, whatever a request tries. Responses carry an ETag and a short public max-age, so
browsers and CDNs absorb repeated reads and revalidate with a cheap 304.

``python -m servers public`` (see :mod:`servers.launcher`), or ``uvicorn
servers.public_api:app``.
"""

from __future__ import annotations

from typing import Annotated, Final

from opentelemetry import metrics, trace
from starlette.applications import Starlette
from starlette.responses import Response

from securecache import Page, Score, SecureCache, Security, Settings, codec
from securecache.models import MAX_PAGE
from servers.app import build_app, document
from servers.conditional import IF_NONE_MATCH, body_etag, record_representation, representation
from servers.cursor import CURSOR as CURSOR_KIND
from servers.params import IDENTIFIER, HeaderParam, PathParam, QueryParam, integer
from servers.problems import not_found
from servers.routes import ETAG, UNAVAILABLE, Api, Reply, ResponseHeader, failure
from servers.settings import ServerSettings
from servers.telemetry import PUBLIC_SERVICE_NAME

MAX_AGE_SECONDS: Final = 5
"""Short, because a write through the internal API must show here within seconds."""
CACHE_CONTROL: Final = f"public, max-age={MAX_AGE_SECONDS}"
DEFAULT_LIMIT: Final = 50

API: Final = Api(
    "securecache public API",
    "Read-only Security and Score records. Errors are RFC 9457 problem details.",
)

LIMIT: Final = QueryParam(integer(1, MAX_PAGE), description="How many securities, at most.")
CURSOR: Final = QueryParam(
    CURSOR_KIND,
    description=(
        "The `next_cursor` of the previous page, as given (an opaque token; any other value"
        " is 422). Leave it out for the first page."
    ),
)
CONDITION: Final = HeaderParam(
    IF_NONE_MATCH,
    name="If-None-Match",
    description="Entity tags the client holds; a match answers 304 without a body.",
)
_CACHE_HEADERS: Final = {
    "ETag": ETAG,
    "Cache-Control": ResponseHeader(f"`{CACHE_CONTROL}`"),
}
NOT_MODIFIED: Final = Reply(304, "The client's copy is current.", headers=_CACHE_HEADERS)


@API.get(
    "/securities",
    replies=[
        Reply(
            200,
            "One page; `next_cursor` is null on the last.",
            body=Page[Security],
            headers=_CACHE_HEADERS,
        ),
        NOT_MODIFIED,
        UNAVAILABLE,
    ],
)
async def list_securities(
    cache: SecureCache,
    limit: Annotated[int, LIMIT] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, CURSOR] = None,
    if_none_match: Annotated[str | None, CONDITION] = None,
) -> Response:
    """Securities in id order, one page at a time (keyset pagination)."""
    page = await cache.securities.list(limit, after=cursor)
    body = codec.dumps(Page(items=list(page.items), next_cursor=page.next_cursor))
    return representation(if_none_match, body, body_etag(body), CACHE_CONTROL)


@API.get(
    "/securities/{id}",
    replies=[
        Reply(200, "The security.", body=Security, headers=_CACHE_HEADERS),
        NOT_MODIFIED,
        failure(404, "No such security."),
        UNAVAILABLE,
    ],
)
async def get_security(
    cache: SecureCache,
    security_id: Annotated[str, PathParam(IDENTIFIER, name="id")],
    if_none_match: Annotated[str | None, CONDITION] = None,
) -> Response:
    """One security."""
    security = await cache.securities.get(security_id)
    if security is None:
        raise not_found(f"no security {security_id!r}")
    return record_representation(if_none_match, security, CACHE_CONTROL)


@API.get(
    "/securities/{id}/score",
    replies=[
        Reply(200, "The score.", body=Score, headers=_CACHE_HEADERS),
        NOT_MODIFIED,
        failure(404, "The security has no score, or no such security."),
        UNAVAILABLE,
    ],
)
async def get_score(
    cache: SecureCache,
    security_id: Annotated[str, PathParam(IDENTIFIER, name="id")],
    if_none_match: Annotated[str | None, CONDITION] = None,
) -> Response:
    """The score of one security."""
    score = await cache.scores.get(security_id)
    if score is None:
        raise not_found(f"no score for security {security_id!r}")
    return record_representation(if_none_match, score, CACHE_CONTROL)


OPENAPI: Final = document(API)
"""The document ``GET /openapi.json`` serves."""


def create_app(
    settings: Settings | None = None,
    *,
    server: ServerSettings | None = None,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> Starlette:
    """The public API; ``settings`` / ``server`` None read ``SECURECACHE_*`` at startup."""
    return build_app(
        API,
        settings=settings,
        server=server,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        default_service_name=PUBLIC_SERVICE_NAME,
    )


app = create_app()
"""For ``uvicorn servers.public_api:app``: settings from the environment at startup."""
