"""Byte relays between two stream connections (the Redis socket of each worker).

Plain asyncio streams: the relay understands nothing it carries, so it cannot be confused by
it; each direction is copied until its reader ends, then the other side's write half is closed.
"""

from __future__ import annotations

import asyncio

CHUNK = 64 * 1024


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` into ``writer`` until EOF; backpressure through ``drain``."""
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
