"""A TCP fault proxy for the tests: pass bytes through, or cut every connection and refuse
new ones, or hang (accept and swallow), on demand. Loopback only; started per test."""

from __future__ import annotations

import asyncio
import contextlib
import enum


class Mode(enum.Enum):
    PASS = "pass"
    REFUSE = "refuse"
    """Existing connections are cut; new ones are closed at once."""
    HANG = "hang"
    """Connections stay open and nothing is forwarded either way."""


class FaultProxy:
    """``127.0.0.1:<port>`` forwarding to ``target``, with a switchable fault."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode = Mode.PASS
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        """Close every connection now (both sides)."""
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    def set(self, mode: Mode) -> None:
        self.mode = mode
        if mode is Mode.REFUSE:
            self.cut()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.mode is Mode.REFUSE:
            client_w.close()
            return
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        self._writers.update((client_w, server_w))
        await asyncio.gather(
            self._pipe(client_r, server_w), self._pipe(server_r, client_w), return_exceptions=True
        )
        for writer in (client_w, server_w):
            self._writers.discard(writer)
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                while self.mode is Mode.HANG:  # noqa: ASYNC110 - a test tool, polled
                    await asyncio.sleep(0.01)
                writer.write(data)
                await writer.drain()
        writer.close()
