"""What both APIs share: lifecycle, problem details, conditional GETs, bodies and probes.

Every error leaves as ``application/problem+json`` (RFC 9457) with ``type``, ``title``,
``status``, ``detail`` and ``instance``; a 422 also lists ``invalid_params``. The library's
typed errors map to statuses here, in one place, so both APIs answer alike:

- 422 ``urn:securecache:problem:invalid-request``: ``ValidationError`` or a bad parameter
  (id, limit, cursor, ids, If-Match, body field), each named in ``invalid_params``.
- 400 ``urn:securecache:problem:malformed-json``: a body that is not JSON.
- 404 ``urn:securecache:problem:not-found``: no such record, or ``NotFoundError`` (a score
  for an unknown security).
- 412 ``urn:securecache:problem:version-mismatch``: ``ConflictError`` (a stale If-Match).
- 503 ``urn:securecache:problem:unavailable`` with ``Retry-After``: ``UnavailableError``.
- 500 ``about:blank`` saying the service is misconfigured: ``PermissionDeniedError`` (the
  database role may not do what the API does, e.g. the internal API run as the reader),
  logged at ERROR once, without a traceback: the deployment is at fault, not the request.
- ``about:blank`` (the title is the status phrase) for plain HTTP failures: 404 unknown
  route, 405 wrong method, 401 no or bad token, 413 body too large, 415 not JSON, and 500
  for anything unforeseen, which says no more than that it was logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import http
import logging
import math
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final
from urllib.parse import quote

import orjson
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.util.http import get_excluded_urls
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, ExceptionHandler, Receive, Scope, Send

from securecache import (
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    SecureCache,
    Settings,
    UnavailableError,
    ValidationError,
    __version__,
    codec,
)
from securecache.models import validate_id
from servers.telemetry import Tracing, tracing_from_env

log = logging.getLogger("securecache.servers")

JSON: Final = "application/json"
PROBLEM_JSON: Final = "application/problem+json"
PROBLEM_TYPE: Final = "urn:securecache:problem:"
INVALID_REQUEST: Final = PROBLEM_TYPE + "invalid-request"
MALFORMED_JSON: Final = PROBLEM_TYPE + "malformed-json"
NOT_FOUND: Final = PROBLEM_TYPE + "not-found"
VERSION_MISMATCH: Final = PROBLEM_TYPE + "version-mismatch"
UNAVAILABLE: Final = PROBLEM_TYPE + "unavailable"
ABOUT_BLANK: Final = "about:blank"

READY_TIMEOUT_SECONDS: Final = 2.0
"""Longest a readiness probe waits for PostgreSQL: probes time out, so answer before they do."""

Endpoint = Callable[[Request], Awaitable[Response]]


class Problem(Exception):
    """An HTTP error answered on purpose, rendered as RFC 9457 problem details."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type_: str = ABOUT_BLANK,
        title: str | None = None,
        invalid_params: Sequence[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None,
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = type_
        # For about:blank, RFC 9457 wants the title to be the status phrase.
        self.title = title or http.HTTPStatus(status).phrase
        self.invalid_params = list(invalid_params)
        self.headers = dict(headers or {})
        self.extensions = dict(extensions or {})


def invalid(name: str, reason: str) -> Problem:
    """A 422 naming the one parameter (path, query, header or body field) that was wrong."""
    return Problem(
        422,
        reason,
        type_=INVALID_REQUEST,
        title="Invalid request",
        invalid_params=[(name, reason)],
    )


def not_found(detail: str, **extensions: Any) -> Problem:
    return Problem(404, detail, type_=NOT_FOUND, title="Not found", extensions=extensions)


def problem_for(exc: Exception) -> Problem:
    """The problem an exception is answered with; anything unforeseen is a bare 500."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, HTTPException):
        detail = {
            404: "no such resource",
            405: "this resource does not support that method",
        }.get(exc.status_code, str(exc.detail))
        return Problem(exc.status_code, detail, headers=exc.headers)
    if isinstance(exc, ValidationError):
        return invalid(exc.field or "body", str(exc))
    if isinstance(exc, NotFoundError):
        return not_found(str(exc), security_id=exc.security_id)
    if isinstance(exc, ConflictError):
        extensions = {} if exc.actual is None else {"current_version": exc.actual}
        return Problem(
            412,
            str(exc),
            type_=VERSION_MISMATCH,
            title="Version mismatch",
            extensions=extensions,
        )
    if isinstance(exc, UnavailableError):
        retry_after = max(1, math.ceil(exc.retry_after))
        return Problem(
            503,
            str(exc),
            type_=UNAVAILABLE,
            title="Service unavailable",
            headers={"Retry-After": str(retry_after)},
        )
    if isinstance(exc, PermissionDeniedError):
        # The role's grants are the operators' business: the client learns nothing of them.
        return Problem(500, "the service is misconfigured and cannot do this; it has been logged")
    return Problem(500, "an unexpected error occurred; it has been logged")


_PATH_SAFE: Final = "/:@!$&'()*+,;=-._~"
_TEXT_MAX: Final = 500
"""Longest detail or reason sent: messages may quote input, which must not echo back whole."""


def _clip(text: str) -> str:
    return text if len(text) <= _TEXT_MAX else text[: _TEXT_MAX - 1] + "\u2026"


def problem_response(request: Request, problem: Problem) -> Response:
    body: dict[str, Any] = {
        "type": problem.type,
        "title": problem.title,
        "status": problem.status,
        "detail": _clip(problem.detail),
        # Re-encoded: the decoded path may hold characters a URI reference may not.
        "instance": quote(request.url.path, safe=_PATH_SAFE),
        **problem.extensions,
    }
    if problem.invalid_params:
        body["invalid_params"] = [
            {"name": _clip(n), "reason": _clip(r)} for n, r in problem.invalid_params
        ]
    headers = {**problem.headers, "Cache-Control": "no-store"}
    return Response(
        orjson.dumps(body), status_code=problem.status, media_type=PROBLEM_JSON, headers=headers
    )


def _on_error(request: Request, exc: Exception) -> Response:
    return problem_response(request, problem_for(exc))


def _on_misconfigured(request: Request, exc: Exception) -> Response:
    # Answered here, not re-raised as an unexpected error is: this record is the only one,
    # and a traceback would point at code that did nothing wrong.
    log.error("%s %s: the service is misconfigured: %s", request.method, request.url.path, exc)
    return problem_response(request, problem_for(exc))


def _on_unexpected(request: Request, exc: Exception) -> Response:
    # Starlette re-raises after this response, so the server logs the traceback once; the
    # client sees no internals.
    return problem_response(request, problem_for(RuntimeError()))


EXCEPTION_HANDLERS: Final[Mapping[Any, ExceptionHandler]] = {
    Problem: _on_error,
    HTTPException: _on_error,
    ValidationError: _on_error,
    NotFoundError: _on_error,
    ConflictError: _on_error,
    UnavailableError: _on_error,
    PermissionDeniedError: _on_misconfigured,
    Exception: _on_unexpected,
}


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """JSON through the library's one converter, so HTTP and Redis share a wire format."""
    return Response(codec.dumps(data), status_code=status, media_type=JSON, headers=headers)


# ---- conditional requests -------------------------------------------------------------------

_ENTITY_TAG = re.compile(r'(?:W/)?"[\x21\x23-\x7e\x80-\xff]*"')
_LIST_SEPARATOR = re.compile(r"\s*(?:,[\s,]*|\Z)")


def entity_tags(value: str) -> tuple[str, ...] | None:
    """The entity tags of an If-Match or If-None-Match value, ``("*",)`` for any, or None
    when it is not a valid list (RFC 9110 8.8.3: a tag may itself contain commas; a list may
    be empty, and then matches nothing)."""
    value = value.strip()
    if value == "*":
        return ("*",)
    tags: list[str] = []
    pos = len(value) - len(value.lstrip(" \t,"))  # empty list elements are allowed
    while pos < len(value):
        tag = _ENTITY_TAG.match(value, pos)
        if tag is None:
            return None
        tags.append(tag.group())
        separator = _LIST_SEPARATOR.match(value, tag.end())
        if separator is None:
            return None
        pos = separator.end()
    return tuple(tags)


def version_etag(version: int) -> str:
    """A record's strong entity tag: its row version, which changes with every write."""
    return f'"{version}"'


def body_etag(body: bytes) -> str:
    """A page's entity tag: a digest of exactly what was sent."""
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def none_match(header: str | None, etag: str) -> bool:
    """If-None-Match by weak comparison (RFC 9110 13.1.2): does the client hold this one?"""
    tags = None if header is None else entity_tags(header)
    if tags is None:
        return False  # no condition, or one we cannot read: answer in full
    return "*" in tags or etag in {t.removeprefix("W/") for t in tags}


def representation(request: Request, body: bytes, etag: str, cache_control: str) -> Response:
    """200 with the body, or 304 when If-None-Match already names it; both carry the tags."""
    headers = {"ETag": etag, "Cache-Control": cache_control}
    if none_match(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=JSON, headers=headers)


# ---- request bodies and parameters ----------------------------------------------------------


async def read_json(request: Request, limit: int) -> Any:
    """The decoded JSON body: 415 unless JSON, 413 past ``limit`` bytes, 400 unless valid.

    The limit holds while reading, so a client that lies in Content-Length, or sends none,
    cannot make the server buffer more than ``limit`` bytes.
    """
    content_type = request.headers.get("content-type", "")
    media_type, _, params = content_type.partition(";")
    charset = re.search(r"charset\s*=\s*\"?([^\s;\"]+)", params, re.IGNORECASE)
    if media_type.strip().lower() != JSON or (
        charset is not None and charset.group(1).lower() not in {"utf-8", "utf8"}
    ):
        raise Problem(415, f"send the body as {JSON} (UTF-8)")
    too_large = Problem(413, f"the body exceeds {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Problem(
            400,
            f"the body is not valid JSON: {exc.msg}",
            type_=MALFORMED_JSON,
            title="Malformed JSON",
        ) from None


def query_int(request: Request, name: str, *, default: int, low: int, high: int) -> int:
    """An integer query parameter within ``[low, high]``; digits only, no signs or spaces."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6) or not low <= int(raw) <= high:
        raise invalid(name, f"{name} must be an integer from {low} to {high}, got {raw!r:.40}")
    return int(raw)


def cache_of(request: Request) -> SecureCache:
    """The application's SecureCache; a request outside the lifespan is told to retry."""
    cache = getattr(request.app.state, "cache", None)
    if not isinstance(cache, SecureCache):
        raise UnavailableError("the server is starting or stopping")
    return cache


# ---- probes and schema ----------------------------------------------------------------------


async def healthz(_request: Request) -> Response:
    """Liveness: the process answers. Deliberately touches no dependency, so a database
    outage makes pods unready (taken out of service) rather than restarted."""
    return Response(b'{"status":"ok"}', media_type=JSON, headers={"Cache-Control": "no-store"})


async def readyz(request: Request) -> Response:
    """Readiness: PostgreSQL must answer; Redis is reported, never required."""
    cache = getattr(request.app.state, "cache", None)
    database, redis = "unavailable", "unknown"
    if isinstance(cache, SecureCache):
        try:
            health = await asyncio.wait_for(cache.health(), READY_TIMEOUT_SECONDS)
        except TimeoutError:
            pass
        else:
            database = "ok" if health.database else "unavailable"
            redis = health.redis
    ready = database == "ok"
    body = {"status": "ready" if ready else "unavailable", "database": database, "redis": redis}
    headers = {"Cache-Control": "no-store"}
    if not ready:
        headers["Retry-After"] = "1"
    return Response(
        orjson.dumps(body), status_code=200 if ready else 503, media_type=JSON, headers=headers
    )


def openapi_endpoint(spec: Mapping[str, Any]) -> Endpoint:
    body = orjson.dumps(spec)

    async def openapi(_request: Request) -> Response:
        return Response(body, media_type=JSON)

    return openapi


# ---- the application ------------------------------------------------------------------------


def settings_from_env() -> Settings:
    """Settings for a server process: the change listener is on unless turned off.

    The design keeps the listener off in the library (a plain import should open no extra
    connection) and on in the servers, whose caches must follow changes made elsewhere.
    """
    settings = Settings.from_env()
    if "SECURECACHE_LISTEN_CHANGES" not in os.environ:
        settings = settings.with_changes(listen_changes=True)
    return settings


def _span_details(
    routes: Sequence[BaseRoute],
) -> Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]:
    """Name request spans after the route template (``GET /securities/{id}``), not the path,
    so span names stay few however many ids are asked for."""

    def details(scope: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        method = str(scope.get("method", "HTTP"))
        for route in routes:
            if isinstance(route, Route) and route.matches(scope)[0] is Match.FULL:
                return f"{method} {route.path}", {"http.route": route.path}
        return method, {}

    return details


class _CurrentTracing:
    """The tracer provider requests are traced with: the caller's, or the one the lifespan
    built, for as long as it runs (None before and after: such requests go untraced)."""

    def __init__(self, provider: trace.TracerProvider | None) -> None:
        self.provider = provider


class _RequestSpans:
    """ASGI middleware: OpenTelemetry's server spans, from the provider current at the time.

    OpenTelemetryMiddleware takes its provider when it is built, which Starlette does before
    the lifespan has made one; so it is built here, for each new provider, on its first
    request.
    """

    def __init__(
        self, app: ASGIApp, *, current: _CurrentTracing, routes: Sequence[BaseRoute]
    ) -> None:
        self.app = app
        self._current = current
        self._excluded_urls = get_excluded_urls("ASGI")
        self._span_details = _span_details(routes)
        self._traced: tuple[trace.TracerProvider, ASGIApp] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        provider = self._current.provider
        if provider is None or scope["type"] not in {"http", "websocket"}:
            await self.app(scope, receive, send)
            return
        if self._traced is None or self._traced[0] is not provider:
            middleware = OpenTelemetryMiddleware(
                self.app,
                tracer_provider=provider,
                excluded_urls=self._excluded_urls,
                default_span_details=self._span_details,
            )
            self._traced = (provider, middleware)
        await self._traced[1](scope, receive, send)


def build_app(
    *,
    routes: Sequence[BaseRoute],
    openapi: Mapping[str, Any],
    settings: Settings | None,
    tracer_provider: trace.TracerProvider | None,
    default_service_name: str,
    on_startup: Callable[[Starlette, Settings], None] | None = None,
) -> Starlette:
    """A Starlette app whose lifespan opens a SecureCache and closes it after the last request.

    ``settings`` None reads the environment at startup, not here, so importing a server module
    needs no configuration. ``on_startup`` checks the settings (and may keep derived state on
    ``app.state``); it runs at once for settings given here, so mistakes surface early.

    ``tracer_provider`` None builds one from ``OTEL_*`` when the lifespan starts and shuts it
    down (its spans flushed) when the lifespan ends: an OTLP exporter runs a thread, which
    importing a module or creating an app must not start. A provider given is the caller's:
    it is flushed at the end, never shut down.
    """
    current = _CurrentTracing(tracer_provider)
    all_routes: list[BaseRoute] = [
        *routes,
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi_endpoint(openapi), methods=["GET"]),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        resolved = settings if settings is not None else settings_from_env()
        if on_startup is not None:
            on_startup(app, resolved)
        if tracer_provider is None:
            tracing = tracing_from_env(default_service_name)
            log.info("%s", tracing.description)
        else:
            tracing = Tracing(tracer_provider, "tracing with the provider the caller gave")
        current.provider = tracing.provider
        try:
            async with SecureCache(resolved, tracer_provider=tracing.provider) as cache:
                app.state.cache = cache
                try:
                    yield
                finally:
                    # Requests still arriving after this get a 503 instead of a closed pool.
                    app.state.cache = None
        finally:
            # In a thread: exporting may wait on the collector, and other apps share the loop.
            if tracer_provider is None:
                current.provider = None
                await asyncio.to_thread(tracing.shutdown)
            else:
                await asyncio.to_thread(tracing.flush)

    app = Starlette(
        routes=all_routes,
        middleware=[
            Middleware(
                _RequestSpans,
                current=current,
                routes=all_routes,
            )
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    # A strict API: /securities/ is not /securities, and says so with a 404, not a redirect.
    app.router.redirect_slashes = False
    if settings is not None and on_startup is not None:
        on_startup(app, settings)
    return app


# ---- OpenAPI building blocks ----------------------------------------------------------------
# The documents are plain data kept beside the handlers they describe; these pieces are the
# parts both APIs share. Schemathesis checks in the tests that the servers do what they say.

ID_SCHEMA: Final[dict[str, Any]] = {
    "type": "string",
    "pattern": "^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$",
    "minLength": 1,
    "maxLength": 64,
    "description": "1-64 characters of [A-Za-z0-9._:-], starting with a letter or digit.",
    "examples": ["SEC000001"],
}
VERSION_SCHEMA: Final[dict[str, Any]] = {"type": "integer", "minimum": 1}
SCORE_VALUE_SCHEMA: Final[dict[str, Any]] = {"type": "number", "minimum": 0, "maximum": 10}
TEXT_SCHEMA: Final[dict[str, Any]] = {"type": "string", "minLength": 1, "maxLength": 256}

SCHEMAS: Final[dict[str, Any]] = {
    "Security": {
        "type": "object",
        "properties": {
            "id": {"$ref": "#/components/schemas/Id"},
            "name": TEXT_SCHEMA,
            "symbol": TEXT_SCHEMA,
            "exchange": TEXT_SCHEMA,
            "version": VERSION_SCHEMA,
            "updated_at": {"type": "string", "format": "date-time"},
        },
        "required": ["id", "name", "symbol", "exchange", "version", "updated_at"],
        "additionalProperties": False,
    },
    "Score": {
        "type": "object",
        "properties": {
            "security_id": {"$ref": "#/components/schemas/Id"},
            "growth": SCORE_VALUE_SCHEMA,
            "value": SCORE_VALUE_SCHEMA,
            "quality": SCORE_VALUE_SCHEMA,
            "momentum": SCORE_VALUE_SCHEMA,
            "version": VERSION_SCHEMA,
            "updated_at": {"type": "string", "format": "date-time"},
        },
        "required": [
            "security_id",
            "growth",
            "value",
            "quality",
            "momentum",
            "version",
            "updated_at",
        ],
        "additionalProperties": False,
    },
    "Id": ID_SCHEMA,
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details.",
        "properties": {
            "type": {"type": "string", "format": "uri"},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string"},
            "instance": {"type": "string", "format": "uri-reference"},
            "invalid_params": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "reason": {"type": "string"}},
                    "required": ["name", "reason"],
                },
            },
            "security_id": {"type": "string"},
            "current_version": VERSION_SCHEMA,
        },
        "required": ["type", "title", "status", "detail", "instance"],
    },
    "Health": {
        "type": "object",
        "properties": {
            "status": {"enum": ["ready", "unavailable"]},
            "database": {"enum": ["ok", "unavailable"]},
            "redis": {"enum": ["ok", "degraded", "disabled", "unknown"]},
        },
        "required": ["status", "database", "redis"],
    },
}


def header(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "required": True, "schema": schema or {"type": "string"}}


ETAG_HEADER: Final = header("The entity tag, for If-None-Match (and If-Match on scores).")
RETRY_AFTER_HEADER: Final = header(
    "Seconds to wait before retrying.", {"type": "integer", "minimum": 1}
)
NO_STORE_HEADER: Final = header("`no-store`: errors and probes are never cached.")


def problem(description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    """A documented error response: problem+json, plus any headers it always carries."""
    return {
        "description": description,
        "headers": {"Cache-Control": NO_STORE_HEADER, **headers},
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {JSON: {"schema": schema}}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


UNAVAILABLE_RESPONSE: Final = problem(
    "PostgreSQL could not serve the request; retry after `Retry-After` seconds.",
    **{"Retry-After": RETRY_AFTER_HEADER},
)
INVALID_RESPONSE: Final = problem("A parameter is invalid; `invalid_params` names it.")


def openapi_document(
    *,
    title: str,
    description: str,
    paths: dict[str, Any],
    security_schemes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An OpenAPI 3.1 document: the API's own paths plus the probes and the schema itself.

    With ``security_schemes`` every operation requires one of them, except the probes and
    this document, which orchestrators and tools read without credentials.
    """
    open_access: dict[str, Any] = {"security": []} if security_schemes else {}
    probes = {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness: the process answers (no dependency is checked).",
                **open_access,
                "responses": {
                    "200": {
                        "description": "Alive.",
                        "headers": {"Cache-Control": NO_STORE_HEADER},
                        "content": json_content(
                            {
                                "type": "object",
                                "properties": {"status": {"const": "ok"}},
                                "required": ["status"],
                            }
                        ),
                    }
                },
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Readiness: PostgreSQL answers; Redis is reported, not required.",
                **open_access,
                "responses": {
                    "200": {
                        "description": "Ready to serve.",
                        "headers": {"Cache-Control": NO_STORE_HEADER},
                        "content": json_content(ref("Health")),
                    },
                    "503": {
                        "description": "PostgreSQL does not answer.",
                        "headers": {
                            "Cache-Control": NO_STORE_HEADER,
                            "Retry-After": RETRY_AFTER_HEADER,
                        },
                        "content": json_content(ref("Health")),
                    },
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                **open_access,
                "responses": {"200": {"description": "OpenAPI 3.1.", "content": json_content({})}},
            }
        },
    }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": __version__, "description": description},
        "paths": {**paths, **probes},
        "components": {"schemas": SCHEMAS},
    }
    if security_schemes:
        document["components"]["securitySchemes"] = security_schemes
        document["security"] = [{name: []} for name in security_schemes]
    return document


class Methods:
    """One endpoint for several methods of a path, so that a 405 lists all of them in Allow.

    An ASGI class rather than a function: Starlette routes functions for GET alone, and this
    one must see every method to answer 405 itself.
    """

    def __init__(self, **handlers: Endpoint) -> None:
        if "GET" in handlers:
            handlers.setdefault("HEAD", handlers["GET"])
        self._handlers = handlers
        self._allow = ", ".join(handlers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        handler = self._handlers.get(request.method)
        if handler is None:
            raise HTTPException(405, headers={"Allow": self._allow})
        response = await handler(request)
        await response(scope, receive, send)


def id_param(request: Request, name: str) -> str:
    """A path parameter that must be a well-formed id (422 naming it otherwise)."""
    return validate_id(request.path_params[name], name)
