"""Loopback relays inside a contained worker: ``127.0.0.1:<port>`` to a mounted Unix socket.

A contained worker has no network (``--network none``) but its loopback. The egress proxy and
the LLM gateway reach it as Unix sockets bind-mounted from the host (``/run/wm``), which only
the wrapper's user may connect to; most HTTP clients (Claude Code, git, curl, pip) take a proxy
or a base URL only as a TCP address, so the wrapper listens on loopback ports and copies bytes
to those sockets. It understands none of them: the proxy and the gateway, outside the container,
decide what goes through.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("worker_base")

CHUNK = 64 * 1024


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` into ``writer`` until EOF, then half-close it; backpressure through
    ``drain``. Understands nothing it carries (the egress service's relays use it too)."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    """Both directions at once; closes both ends when both are done."""
    try:
        await asyncio.gather(pipe(a[0], b[1]), pipe(b[0], a[1]))
    finally:
        for _, writer in (a, b):
            # Not awaited: the handler's task may be collected once both ends are gone.
            writer.close()


class LoopbackRelays:
    def __init__(self, relays: tuple[tuple[int, str], ...]) -> None:
        self._relays = relays
        self._servers: list[asyncio.AbstractServer] = []

    async def start(self) -> None:
        for port, path in self._relays:
            self._servers.append(await asyncio.start_server(self._handler(path), "127.0.0.1", port))
            log.info("relaying 127.0.0.1:%d to %s", port, path)

    def _handler(
        self, path: str
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                up_reader, up_writer = await asyncio.open_unix_connection(path)
            except OSError as exc:
                log.warning("relay to %s failed: %s", path, exc)
                writer.close()
                return
            await splice((reader, writer), (up_reader, up_writer))

        return handle

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()
