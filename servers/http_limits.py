"""Limits on what a client may make the server hold before a request reaches the app.

uvicorn with httptools accepts headers of any size (a 64 MiB header was answered 200; two of
256 MiB took a process past 1 GB) and waits for headers without end (300 slowloris
connections stayed open past 45 s). A proxy in front may bound both, but the servers must not
depend on one. :class:`BoundedHttpToolsProtocol` is uvicorn's own protocol with three
additions:

- the request line and headers together may not exceed ``max_header_bytes``: the raw bytes
  of an unfinished head are counted as they arrive (so the parser never buffers more than
  that), and a head that arrived whole is measured once parsed; either way beyond is 431;
- they must arrive within ``header_timeout`` of the connection opening, or of the previous
  response on a kept-alive connection, or the connection is closed;
- the errors uvicorn answers itself (malformed requests) are problem+json like every other
  error of the APIs, not text/plain.

WebSocket upgrades are not offered (``ws="none"`` in the server's config): an upgrade request
is an ordinary request, which the app answers with a problem.
"""

from __future__ import annotations

import asyncio
import http
from typing import Any, ClassVar, Final

import attrs
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEADER_BYTES: Final = 16 * 1024
HEADER_TIMEOUT_SECONDS: Final = 10.0


@attrs.frozen
class HttpLimits:
    """How much, and how slowly, a client may send before its request is read."""

    max_header_bytes: int = MAX_HEADER_BYTES
    header_timeout: float = HEADER_TIMEOUT_SECONDS


def problem_bytes(status: int, detail: str) -> bytes:
    """A complete ``Connection: close`` response with an RFC 9457 body."""
    phrase = http.HTTPStatus(status).phrase
    body = orjson.dumps(
        {"type": "about:blank", "title": phrase, "status": status, "detail": detail}
    )
    return (
        f"HTTP/1.1 {status} {phrase}\r\n"
        "content-type: application/problem+json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    ).encode() + body


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with header size and header time bounded."""

    limits: ClassVar[HttpLimits] = HttpLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_bytes = 0
        """Bytes received since the request began, while its head is incomplete."""
        self._head_bytes = 0
        """Size of the parsed request line and headers (checked when the head completes)."""
        self._reading_headers = True
        self._header_timer: asyncio.TimerHandle | None = None

    @classmethod
    def with_limits(cls, limits: HttpLimits) -> type[BoundedHttpToolsProtocol]:
        """This protocol with ``limits`` (uvicorn instantiates the class it is given)."""
        return type(cls.__name__, (cls,), {"limits": limits})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        counting = self._reading_headers
        super().data_received(data)
        if counting and self._reading_headers and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                self._refuse(431, "the request line and headers are too large")

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        # A head that arrived whole in one read was never counted as raw bytes: its parsed
        # size is checked here instead.
        self._reading_headers = False
        self._stop_timer()
        if self._head_bytes > self.limits.max_header_bytes:
            self._refuse(431, "the request line and headers are too large")
            return
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_headers()

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, msg)

    def _await_headers(self) -> None:
        self._reading_headers = True
        self._header_bytes = 0
        self._head_bytes = 0
        self._stop_timer()
        self._header_timer = self.loop.call_later(self.limits.header_timeout, self._too_slow)

    def _stop_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if self._reading_headers and not self.transport.is_closing():
            self.logger.info("closing a connection whose headers did not arrive in time")
            self.transport.close()

    def _refuse(self, status: int, detail: str) -> None:
        self._stop_timer()
        self.logger.info("refused a request: %s", detail)
        self.transport.write(problem_bytes(status, detail))
        self.transport.close()
