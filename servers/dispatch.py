"""Direct dispatch: the APIs' own routes served without Starlette's per-request layers.

Starlette passes every request through its exception middleware (a Request made, the app and
``send`` wrapped), its router and the route's handler, before our :class:`PathEndpoint` runs
the operation; for a cached read, those layers cost more than the read itself. This
middleware, placed inside the telemetry middleware and outside Starlette's, does what they do
for a request that one of our routes serves: the same routes tried in the same order with
Starlette's own matching, the scope given the same ``route`` and path parameters, the
operation run, an exception answered by the same handler
(:data:`servers.problems.EXCEPTION_HANDLERS`; a synchronous one runs on the event loop, where
Starlette would hand it to a thread: ours only build a response). Anything else (no route, a
method the path does not serve, a WebSocket) goes on to Starlette, which answers it as it
always did; an exception without a handler of its own goes up to Starlette's outermost
middleware, as it would have. ``tests/test_dispatch.py`` holds both apps to the same answers.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from starlette.requests import Request
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from servers.routes import PathEndpoint

Handler = Callable[..., Any]
"""An exception handler as Starlette takes it: (request, exception) to a response, or to an
awaitable of one."""


class DirectDispatch:
    """ASGI middleware over Starlette's exception middleware (see the module docstring)."""

    def __init__(
        self, app: ASGIApp, *, routes: Sequence[Route], handlers: Mapping[Any, Handler]
    ) -> None:
        self.app = app
        # Each route with the operations of its path by method (None: not one of ours).
        self._routes = tuple(
            (route, route.endpoint.operations if isinstance(route.endpoint, PathEndpoint) else None)
            for route in routes
        )
        # What Starlette's exception middleware is given: every handler but the one for
        # Exception (or 500), which the outermost middleware runs for an unhandled error.
        self._handlers = {k: v for k, v in handlers.items() if k not in (Exception, 500)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route, operations in self._routes:
                match, child = route.matches(scope)
                if match is Match.NONE:
                    continue
                operation = (
                    operations.get(scope["method"])
                    if match is Match.FULL and operations is not None
                    else None
                )
                if operation is None:
                    break  # Starlette answers: a 405, or a route of its own
                scope.update(child)
                scope["route"] = route
                request = Request(scope, receive, send)
                try:
                    response = await operation(request)
                except Exception as exc:
                    handler = self._handler(exc)
                    if handler is None:
                        raise
                    response = handler(request, exc)
                    if inspect.isawaitable(response):
                        response = await response
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _handler(self, exc: Exception) -> Handler | None:
        """The handler Starlette's exception middleware would pick: the nearest class."""
        for kind in type(exc).__mro__:
            handler = self._handlers.get(kind)
            if handler is not None:
                return handler
        return None
