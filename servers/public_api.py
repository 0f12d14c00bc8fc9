"""The public API (port 8080): Security and Score records, read-only, no authentication.

Run it with a ``securecache_reader`` database URL and a Redis user confined to the key prefix
(:func:`securecache.acl.setuser_rules`): it can then read and fill the cache but never change
PostgreSQL, whatever a request tries. Responses carry an ETag and a short public max-age, so
browsers and CDNs absorb repeated reads and revalidate with a cheap 304.

``uvicorn servers.public_api:app`` or ``python -m servers.public_api``.
"""

from __future__ import annotations

from typing import Any, Final

from opentelemetry import trace
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from securecache import Settings, codec
from securecache.models import MAX_PAGE
from servers.common import (
    ETAG_HEADER,
    INVALID_RESPONSE,
    UNAVAILABLE_RESPONSE,
    body_etag,
    build_app,
    cache_of,
    header,
    id_param,
    json_content,
    not_found,
    openapi_document,
    problem,
    query_int,
    ref,
    representation,
    version_etag,
)
from servers.telemetry import PUBLIC_SERVICE_NAME

MAX_AGE_SECONDS: Final = 5
"""Short, because a write through the internal API must show here within seconds."""
CACHE_CONTROL: Final = f"public, max-age={MAX_AGE_SECONDS}"
DEFAULT_LIMIT: Final = 50


async def list_securities(request: Request) -> Response:
    """One page of securities in id order; ``next_cursor`` fetches the next."""
    limit = query_int(request, "limit", default=DEFAULT_LIMIT, low=1, high=MAX_PAGE)
    page = await cache_of(request).securities.list(limit, after=request.query_params.get("cursor"))
    body = codec.dumps({"items": list(page.items), "next_cursor": page.next_cursor})
    return representation(request, body, body_etag(body), CACHE_CONTROL)


async def get_security(request: Request) -> Response:
    security_id = id_param(request, "id")
    security = await cache_of(request).securities.get(security_id)
    if security is None:
        raise not_found(f"no security {security_id!r}")
    return representation(
        request, codec.dumps(security), version_etag(security.version), CACHE_CONTROL
    )


async def get_score(request: Request) -> Response:
    security_id = id_param(request, "id")
    score = await cache_of(request).scores.get(security_id)
    if score is None:
        raise not_found(f"no score for security {security_id!r}")
    return representation(request, codec.dumps(score), version_etag(score.version), CACHE_CONTROL)


ROUTES: Final = [
    Route("/securities", list_securities, methods=["GET"]),
    Route("/securities/{id}", get_security, methods=["GET"]),
    Route("/securities/{id}/score", get_score, methods=["GET"]),
]

_CACHE_HEADERS: Final = {
    "ETag": ETAG_HEADER,
    "Cache-Control": header(f"`{CACHE_CONTROL}`"),
}
_ID: Final = {"name": "id", "in": "path", "required": True, "schema": ref("Id")}
_IF_NONE_MATCH: Final = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": "Entity tags the client holds; a match answers 304 without a body.",
    "schema": {"type": "string"},
}
_NOT_MODIFIED: Final = {"description": "The client's copy is current.", "headers": _CACHE_HEADERS}


def _record(summary: str, schema: str, absent: str) -> dict[str, Any]:
    return {
        "get": {
            "operationId": f"get{schema}",
            "summary": summary,
            "parameters": [_ID, _IF_NONE_MATCH],
            "responses": {
                "200": {
                    "description": f"The {schema.lower()}.",
                    "headers": _CACHE_HEADERS,
                    "content": json_content(ref(schema)),
                },
                "304": _NOT_MODIFIED,
                "404": problem(absent),
                "422": INVALID_RESPONSE,
                "503": UNAVAILABLE_RESPONSE,
            },
        }
    }


OPENAPI: Final = openapi_document(
    title="securecache public API",
    description="Read-only Security and Score records. Errors are RFC 9457 problem details.",
    paths={
        "/securities": {
            "get": {
                "operationId": "listSecurities",
                "summary": "Securities in id order, one page at a time (keyset pagination).",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_PAGE,
                            "default": DEFAULT_LIMIT,
                        },
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "description": (
                            "The `next_cursor` of the previous page, as given: an opaque"
                            " token (format `securecache-cursor`); any other value is 422."
                        ),
                        "schema": {
                            "type": "string",
                            "format": "securecache-cursor",
                        },
                    },
                    _IF_NONE_MATCH,
                ],
                "responses": {
                    "200": {
                        "description": "One page; `next_cursor` is null on the last.",
                        "headers": _CACHE_HEADERS,
                        "content": json_content(
                            {
                                "type": "object",
                                "properties": {
                                    "items": {"type": "array", "items": ref("Security")},
                                    "next_cursor": {"type": ["string", "null"]},
                                },
                                "required": ["items", "next_cursor"],
                                "additionalProperties": False,
                            }
                        ),
                    },
                    "304": _NOT_MODIFIED,
                    "422": INVALID_RESPONSE,
                    "503": UNAVAILABLE_RESPONSE,
                },
            }
        },
        "/securities/{id}": _record("One security.", "Security", "No such security."),
        "/securities/{id}/score": _record(
            "The score of one security.", "Score", "The security has no score, or no such security."
        ),
    },
)


def create_app(
    settings: Settings | None = None, *, tracer_provider: trace.TracerProvider | None = None
) -> Starlette:
    """The public API; ``settings`` None reads ``SECURECACHE_*`` at startup."""
    return build_app(
        routes=ROUTES,
        openapi=OPENAPI,
        settings=settings,
        tracer_provider=tracer_provider,
        default_service_name=PUBLIC_SERVICE_NAME,
    )


app = create_app()


if __name__ == "__main__":
    from servers.run import main_one

    main_one(app, default_port=8080)
