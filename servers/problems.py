"""Errors as RFC 9457 problem details, and the exception handlers that send them.

Every error leaves as ``application/problem+json`` with ``type``, ``title``, ``status``,
``detail`` and ``instance``; a 422 also lists ``invalid_params``. The library's typed errors
map to statuses here, in one place, so both APIs answer alike:

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

The body is :class:`ProblemDetails`, so the OpenAPI documents describe exactly what is sent.
"""

from __future__ import annotations

import http
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import quote

import attrs
import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ExceptionHandler

from securecache import (
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
    ValidationError,
    codec,
)
from servers.schemas import VERSION, facts, ref

log = logging.getLogger("securecache.servers")

PROBLEM_JSON: Final = "application/problem+json"
PROBLEM_TYPE: Final = "urn:securecache:problem:"
INVALID_REQUEST: Final = PROBLEM_TYPE + "invalid-request"
MALFORMED_JSON: Final = PROBLEM_TYPE + "malformed-json"
NOT_FOUND: Final = PROBLEM_TYPE + "not-found"
VERSION_MISMATCH: Final = PROBLEM_TYPE + "version-mismatch"
UNAVAILABLE: Final = PROBLEM_TYPE + "unavailable"
ABOUT_BLANK: Final = "about:blank"

TEXT_MAX: Final = 500
"""Longest detail or reason sent: messages may quote input, which must not echo back whole."""
_PATH_SAFE: Final = "/:@!$&'()*+,;=-._~"


@attrs.frozen
class InvalidParam:
    """One parameter (path, query, header or body field) that was wrong, and why."""

    name: str
    reason: str


@attrs.frozen
class ProblemDetails:
    """RFC 9457 problem details."""

    type: str = attrs.field(metadata=facts(format="uri"))
    title: str
    status: int = attrs.field(metadata=facts(minimum=400, maximum=599))
    detail: str
    instance: str = attrs.field(metadata=facts(format="uri-reference"))
    invalid_params: list[InvalidParam] | None = None
    security_id: str | None = attrs.field(default=None, metadata=facts(**ref("Id")))
    """The security a 404 on a write is about."""
    current_version: int | None = attrs.field(default=None, metadata=facts(**VERSION))
    """The version a 412 found."""


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
        security_id: str | None = None,
        current_version: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = type_
        # For about:blank, RFC 9457 wants the title to be the status phrase.
        self.title = title or http.HTTPStatus(status).phrase
        self.invalid_params = list(invalid_params)
        self.headers = dict(headers or {})
        self.security_id = security_id
        self.current_version = current_version


def invalid(params: Sequence[tuple[str, str]]) -> Problem:
    """A 422 naming each parameter (path, query, header or body field) that was wrong."""
    detail = params[0][1] if len(params) == 1 else f"{len(params)} parameters are invalid"
    return Problem(
        422, detail, type_=INVALID_REQUEST, title="Invalid request", invalid_params=params
    )


def not_found(detail: str, *, security_id: str | None = None) -> Problem:
    return Problem(404, detail, type_=NOT_FOUND, title="Not found", security_id=security_id)


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
        return invalid([(exc.field or "body", str(exc))])
    if isinstance(exc, NotFoundError):
        return not_found(str(exc), security_id=exc.security_id)
    if isinstance(exc, ConflictError):
        return Problem(
            412,
            str(exc),
            type_=VERSION_MISMATCH,
            title="Version mismatch",
            current_version=exc.actual,
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


def _clip(text: str) -> str:
    return text if len(text) <= TEXT_MAX else text[: TEXT_MAX - 1] + "\u2026"


def problem_response(request: Request, problem: Problem) -> Response:
    details = ProblemDetails(
        type=problem.type,
        title=problem.title,
        status=problem.status,
        detail=_clip(problem.detail),
        # Re-encoded: the decoded path may hold characters a URI reference may not.
        instance=quote(request.url.path, safe=_PATH_SAFE),
        invalid_params=[InvalidParam(_clip(n), _clip(r)) for n, r in problem.invalid_params]
        or None,
        security_id=problem.security_id,
        current_version=problem.current_version,
    )
    body = {k: v for k, v in codec.converter.unstructure(details).items() if v is not None}
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
