"""The OpenAPI 3.1 document of an API, generated from its route declarations.

Nothing here describes a route by hand: each operation's parameters, body and responses come
from its :class:`~servers.routes.Operation` (the same declaration that parses the request),
and every schema from a Python type through :mod:`servers.schemas`. Schemathesis checks in
the tests that the servers do what the documents say, with every check on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response

from securecache import __version__
from servers.params import JSON, Param
from servers.routes import Operation, Reply, declare
from servers.schemas import NAMED, Components, Schema

OPENAPI_VERSION: Final = "3.1.0"


def document(*, title: str, description: str, operations: Sequence[Operation]) -> dict[str, Any]:
    """The document of ``operations``, in the order given.

    With authenticated operations among them, the document requires their schemes by
    default and lets the others (probes, this document) say ``security: []``: orchestrators
    and tools read those without credentials.
    """
    components = Components()
    schemes = {op.auth.scheme_name: op.auth.scheme for op in operations if op.auth is not None}
    paths: dict[str, dict[str, Any]] = {}
    for operation in operations:
        item = _operation(operation, components)
        if schemes and operation.auth is None:
            item["security"] = []
        paths.setdefault(operation.path, {})[operation.method.lower()] = item
    result: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": __version__, "description": description},
        "paths": paths,
        "components": {"schemas": {**NAMED, **components.schemas}},
    }
    if schemes:
        result["components"]["securitySchemes"] = schemes
        result["security"] = [{name: []} for name in schemes]
    return result


def _operation(operation: Operation, components: Components) -> dict[str, Any]:
    item: dict[str, Any] = {"operationId": operation.operation_id, "summary": operation.summary}
    if operation.description:
        item["description"] = operation.description
    if operation.params:
        item["parameters"] = [
            _parameter(operation, argument, param) for argument, param in operation.params
        ]
    if operation.body is not None:
        _, kind, body = operation.body
        request_body: dict[str, Any] = {
            "required": True,
            "content": {JSON: {"schema": components.schema_of(kind)}},
        }
        if body.description:
            request_body["description"] = body.description
        item["requestBody"] = request_body
    item["responses"] = {str(r.status): _reply(r, components) for r in operation.replies}
    return item


def _parameter(operation: Operation, argument: str, param: Param) -> dict[str, Any]:
    schema: Schema = dict(param.kind.schema)
    default = operation.defaults.get(argument)
    if default is not None:
        schema["default"] = default
    result: dict[str, Any] = {
        "name": operation.wire_name(argument, param),
        "in": param.location,
        "required": operation.required(argument, param),
    }
    if param.description:
        result["description"] = param.description
    if param.kind.many:
        result |= {"style": "form", "explode": False}
    result["schema"] = schema
    return result


def _reply(reply: Reply, components: Components) -> dict[str, Any]:
    result: dict[str, Any] = {"description": reply.description}
    if reply.headers:
        result["headers"] = {
            name: {"description": h.description, "required": True, "schema": h.schema}
            for name, h in reply.headers.items()
        }
    if reply.body is not None:
        result["content"] = {reply.media_type: {"schema": components.schema_of(reply.body)}}
    return result


async def openapi(request: Request) -> Response:
    """This document."""
    body: bytes = request.app.state.openapi
    return Response(body, media_type=JSON)


OPERATION: Final = declare(
    "GET", "/openapi.json", openapi, replies=[Reply(200, "OpenAPI 3.1.", body=Any)]
)
"""``GET /openapi.json``: the document of the app that serves it."""
