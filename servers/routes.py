"""Route declarations: each operation stated once, and served and documented from that.

An API is an :class:`Api` whose handlers are declared with a decorator; the handler's
signature says what the operation takes and its docstring what it does::

    @API.get("/securities/{id}", replies=[Reply(200, "The security.", body=Security), ...])
    async def get_security(
        cache: SecureCache, security_id: Annotated[str, PathParam(IDENTIFIER, name="id")]
    ) -> Response:
        \"\"\"One security.\"\"\"

From that one :class:`Operation` the server parses the request (authentication first, then
every parameter, each error named in one 422, then the body) before the handler runs, and
:mod:`servers.openapi` writes the operation's part of the document: its parameters with
their schemas, its body, and every response it can give, including the errors the
declaration implies (401 with authentication, 422 with parameters, 400/413/415 with a body).

Arguments annotated ``Request`` or ``SecureCache`` are given the request and the
application's cache (a 503 outside the lifespan). Each path is one Starlette ``Route`` to a
:class:`PathEndpoint`, which dispatches on the method (HEAD by GET, as Starlette's
``HTTPEndpoint`` does), so a method the path does not have is a 405 listing those it has in
Allow.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Annotated, Any, Final, Protocol, TypeVar

import attrs
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from securecache import SecureCache, UnavailableError
from servers.params import JSON, JsonBody, Param, read_json, structure
from servers.problems import PROBLEM_JSON, ProblemDetails, invalid
from servers.schemas import Schema
from servers.settings import ServerSettings

Handler = Callable[..., Awaitable[Response]]
H = TypeVar("H", bound=Handler)


# -- responses ------------------------------------------------------------------------------


@attrs.frozen
class ResponseHeader:
    """A header a response always carries."""

    description: str
    schema: Schema = attrs.field(factory=lambda: {"type": "string"})


NO_STORE: Final = ResponseHeader("`no-store`: errors and probes are never cached.")
RETRY_AFTER: Final = ResponseHeader(
    "Seconds to wait before retrying.", {"type": "integer", "minimum": 1}
)
ETAG: Final = ResponseHeader("The entity tag, for If-None-Match (and If-Match on scores).")


@attrs.frozen
class Reply:
    """A response an operation can give: its status, its body's type and its headers."""

    status: int
    description: str
    body: Any = None
    """The body's Python type (its JSON Schema is generated from it); None for no body."""
    media_type: str = JSON
    headers: Mapping[str, ResponseHeader] = attrs.field(factory=dict)


def failure(status: int, description: str, **headers: ResponseHeader) -> Reply:
    """An error response: problem details, never cached, plus any headers it always has."""
    return Reply(
        status,
        description,
        body=ProblemDetails,
        media_type=PROBLEM_JSON,
        headers={"Cache-Control": NO_STORE, **headers},
    )


UNAVAILABLE: Final = failure(
    503,
    "PostgreSQL could not serve the request; retry after `Retry-After` seconds.",
    **{"Retry-After": RETRY_AFTER},
)
INVALID: Final = failure(422, "A parameter is invalid; `invalid_params` names it.")
BODY_FAILURES: Final = (
    failure(400, "The body is not JSON."),
    failure(413, "The body is too large."),
    failure(415, "The body is not `application/json` (UTF-8)."),
)


# -- authentication -------------------------------------------------------------------------


class Auth(Protocol):
    """How an operation's caller proves who it is: checked before the request is read."""

    scheme_name: str
    scheme: Schema
    """The OpenAPI security scheme."""
    refused: Reply
    """The response to a request without valid credentials."""

    def refusals(self, method: str) -> list[Reply]:
        """Every refusal an operation of ``method`` may answer (401, and 403 for a scope)."""

    def check(self, request: Request) -> None:
        """Return if the request may proceed; raise the :attr:`refused` problem otherwise."""

    def start(self, app: Starlette, server: ServerSettings) -> None:
        """Take the credentials the app accepts; refuse to start without any."""


# -- operations -----------------------------------------------------------------------------


@attrs.frozen
class Operation:
    """One method on one path, as declared: what it takes, what it answers, who may call."""

    method: str
    path: str
    handler: Handler
    operation_id: str
    summary: str
    description: str | None
    params: tuple[tuple[str, Param], ...]
    """(argument name, declaration), in signature order."""
    defaults: Mapping[str, Any]
    """Arguments given when their optional parameter is absent."""
    body: tuple[str, Any, JsonBody] | None
    """(argument name, type, declaration)."""
    injected: tuple[tuple[str, type], ...]
    replies: tuple[Reply, ...]
    auth: Auth | None

    _plan: tuple[tuple[str, Param, str, bool], ...] = attrs.field(
        init=False,
        repr=False,
        eq=False,
        default=attrs.Factory(
            lambda self: tuple(
                (a, p, self.wire_name(a, p), self.required(a, p)) for a, p in self.params
            ),
            takes_self=True,
        ),
    )
    """(argument, declaration, wire name, required) per parameter: worked out once."""

    def wire_name(self, argument: str, param: Param) -> str:
        return param.name or argument

    def required(self, argument: str, param: Param) -> bool:
        return param.location == "path" or argument not in self.defaults

    async def __call__(self, request: Request) -> Response:
        """Authenticate, parse every parameter, then the body, then run the handler."""
        if self.auth is not None:
            self.auth.check(request)
        arguments: dict[str, Any] = {}
        problems: list[tuple[str, str]] = []
        for argument, param, name, required in self._plan:
            raw = param.read(request, name)
            if raw is None:
                if required:
                    problems.append((name, f"{name} is required"))
                else:
                    arguments[argument] = self.defaults[argument]
                continue
            try:
                arguments[argument] = param.kind.parse(raw, name)
            except ValueError as exc:
                problems.append((name, str(exc)))
        if problems:
            raise invalid(problems)
        if self.body is not None:
            argument, kind, body = self.body
            arguments[argument] = structure(await read_json(request, body.limit), kind)
        for argument, kind in self.injected:
            arguments[argument] = request if kind is Request else cache_of(request)
        return await self.handler(**arguments)


def cache_of(request: Request) -> SecureCache:
    """The application's SecureCache; a request outside the lifespan is told to retry."""
    try:
        # State's item access: one dictionary look-up, where its attribute access first
        # fails the usual look-up (a few hundred nanoseconds a request).
        cache = request.scope["app"].state["cache"]
    except KeyError:
        cache = None
    if not isinstance(cache, SecureCache):
        raise UnavailableError("the server is starting or stopping")
    return cache


_TEMPLATE_NAME: Final = re.compile(r"{([^}:]+)(?::[^}]*)?}")
_INJECTABLE: Final = (Request, SecureCache)


def declare(
    method: str,
    path: str,
    handler: Handler,
    *,
    replies: Sequence[Reply] = (),
    auth: Auth | None = None,
) -> Operation:
    """The :class:`Operation` a handler declares; a mistake in it fails at import."""
    hints = typing.get_type_hints(handler, include_extras=True)
    params: list[tuple[str, Param]] = []
    defaults: dict[str, Any] = {}
    body: tuple[str, Any, JsonBody] | None = None
    injected: list[tuple[str, type]] = []
    for argument, parameter in inspect.signature(handler).parameters.items():
        hint = hints[argument]
        if typing.get_origin(hint) is Annotated:
            kind, *meta = typing.get_args(hint)
            declaration = next(m for m in meta if isinstance(m, Param | JsonBody))
            if isinstance(declaration, JsonBody):
                body = (argument, kind, declaration)
                continue
            params.append((argument, declaration))
            if parameter.default is not inspect.Parameter.empty:
                defaults[argument] = parameter.default
        elif hint in _INJECTABLE:
            injected.append((argument, hint))
        else:
            raise TypeError(f"{handler.__name__}({argument}): declare it with Annotated")
    in_path = {p.name or a for a, p in params if p.location == "path"}
    if in_path != set(_TEMPLATE_NAME.findall(path)):
        raise TypeError(f"{handler.__name__}: path parameters do not match {path}")
    implied = [
        *(auth.refusals(method) if auth is not None else []),
        *([INVALID] if params or body else []),
        *(BODY_FAILURES if body else ()),
    ]
    declared = {r.status for r in replies}
    summary, _, description = inspect.cleandoc(handler.__doc__ or "").partition("\n\n")
    head, *rest = handler.__name__.split("_")
    return Operation(
        method=method,
        path=path,
        handler=handler,
        operation_id=head + "".join(word.title() for word in rest),
        summary=" ".join(summary.split()),
        description=" ".join(description.split()) or None,
        params=tuple(params),
        defaults=defaults,
        body=body,
        injected=tuple(injected),
        replies=tuple(
            sorted(
                [*replies, *(r for r in implied if r.status not in declared)],
                key=lambda r: r.status,
            )
        ),
        auth=auth,
    )


class Api:
    """The operations of one API, in the order declared, and what its document says of it.

    ``auth`` applies to every operation declared here (not to the probes and the document,
    which the app factory adds).
    """

    def __init__(self, title: str, description: str, *, auth: Auth | None = None) -> None:
        self.title = title
        self.description = description
        self.auth = auth
        self.operations: list[Operation] = []

    def route(self, method: str, path: str, *, replies: Sequence[Reply]) -> Callable[[H], H]:
        def register(handler: H) -> H:
            self.operations.append(declare(method, path, handler, replies=replies, auth=self.auth))
            return handler

        return register

    def get(self, path: str, *, replies: Sequence[Reply]) -> Callable[[H], H]:
        return self.route("GET", path, replies=replies)

    def put(self, path: str, *, replies: Sequence[Reply]) -> Callable[[H], H]:
        return self.route("PUT", path, replies=replies)

    def post(self, path: str, *, replies: Sequence[Reply]) -> Callable[[H], H]:
        return self.route("POST", path, replies=replies)


def starlette_routes(operations: Sequence[Operation]) -> list[Route]:
    """One Route per path, its methods dispatched by a :class:`PathEndpoint`.

    Starlette tries routes in order. A path without parameters that a templated path would
    also match comes before it, so ``/scores/batch`` is never taken for the score of a
    security called ``batch``; then the templated paths, the records every client asks
    for; then the other fixed paths (the list, the probes, the document).
    """
    by_path: dict[str, dict[str, Operation]] = {}
    for operation in operations:
        by_path.setdefault(operation.path, {})[operation.method] = operation
    routes = [Route(path, PathEndpoint(path, methods)) for path, methods in by_path.items()]
    templated = [r for r in routes if r.param_convertors]
    fixed = [r for r in routes if not r.param_convertors]
    shadowed = [r for r in fixed if any(t.path_regex.match(r.path) for t in templated)]
    return [*shadowed, *templated, *(r for r in fixed if r not in shadowed)]


_METHOD_ORDER: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "QUERY")
"""The order Starlette's ``HTTPEndpoint`` lists methods in Allow (kept, so Allow is too)."""


class PathEndpoint:
    """The ASGI app of one path: its operations by method, HEAD answered by GET's, and a 405
    listing the others in Allow.

    What Starlette's ``HTTPEndpoint`` does, decided once per path rather than per request
    (that class finds the methods it allows, by ``getattr``, each time it is called).
    """

    def __init__(self, path: str, operations: Mapping[str, Operation]) -> None:
        self.__name__ = f"Endpoint {path}"
        self.path = path
        by_method = dict(operations)
        if "GET" in by_method and "HEAD" not in by_method:
            by_method["HEAD"] = by_method["GET"]
        self.operations: Mapping[str, Operation] = by_method
        """The operation that serves each method here (HEAD is GET's)."""
        self._allow = {"Allow": ", ".join(m for m in _METHOD_ORDER if m in by_method)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        operation = self.operations.get(scope["method"])
        if operation is None:
            raise HTTPException(status_code=405, headers=self._allow)
        response = await operation(Request(scope, receive, send))
        await response(scope, receive, send)
