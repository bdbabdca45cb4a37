"""The worker's Redis relay refuses what Redis's ACLs cannot: ``HELLO``.

Redis lets every user run ``AUTH`` and ``HELLO`` whatever its ACL rules say (they are how a
connection logs in, so ``-hello`` is accepted and has no effect), and ``HELLO`` takes a
``SETNAME``: a worker's user, which may not ``CLIENT SETNAME``, could still name its connection
like a manager's (``HELLO 2 AUTH <user> <password> SETNAME wm:<manager>:consumer``). The wrapper
speaks RESP2 and never sends ``HELLO``, so the relay reads the requests it carries to Redis (RESP
arrays of bulk strings: all a client library writes) and passes each one on as it came, except a
``HELLO``, which goes on as ``HELLO 4``: Redis answers that with its own ``NOPROTO`` error, in its
place among the replies (a pipeline's order holds), and a client that tried RESP3 falls back to
RESP2 and ``AUTH``. Anything else (an inline command, a malformed request) ends the connection,
read by the same rules Redis reads it by, so the two never disagree on where a request ends.
Replies are copied as bytes.
"""

from __future__ import annotations

import asyncio

from worker_base.relays import CHUNK, pipe

#: Redis's own limits: arguments of one request, bytes of one argument (proto-max-bulk-len).
MAX_ARGUMENTS = 1024 * 1024
MAX_BULK = 512 * 1024 * 1024
#: No command's name is longer (a longer first argument is not a command).
MAX_NAME = 64
#: What a HELLO is sent on as: a protocol version Redis refuses with NOPROTO.
REFUSED_HELLO = b"*2\r\n$5\r\nHELLO\r\n$1\r\n4\r\n"


class BadRequest(Exception):
    """Not a request the wrapper would send: the connection ends."""


def header(line: bytes, kind: bytes, limit: int) -> int:
    """The number in a ``*<n>\\r\\n`` or ``$<n>\\r\\n`` line, refused unless plain digits up to
    ``limit`` (so the line's first ``\\r`` is its end, as Redis reads it)."""
    digits = line[1:-2]
    if line[:1] != kind or not digits.isdigit() or len(digits) > 10 or int(digits) > limit:
        raise BadRequest(f"not a {kind.decode()} header: {line[:20]!r}")
    return int(digits)


def is_hello(name: bytes) -> bool:
    return name.upper() == b"HELLO"


async def forward_requests(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy requests from ``reader`` to ``writer`` until EOF, each ``HELLO`` made ``HELLO 4``;
    raises :class:`BadRequest` at anything that is not a RESP array of bulk strings."""
    while True:
        try:
            first = await reader.readuntil(b"\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise BadRequest("a request cut off") from exc
            return
        count = header(first, b"*", MAX_ARGUMENTS)
        if count == 0:
            continue  # Redis ignores an empty request
        name_line = await reader.readuntil(b"\r\n")
        size = header(name_line, b"$", MAX_NAME)
        name = await reader.readexactly(size + 2)
        if is_hello(name[:-2]):
            for _ in range(count - 1):
                await _copy_bulk(reader, None)
            writer.write(REFUSED_HELLO)
        else:
            writer.write(first + name_line + name)
            for _ in range(count - 1):
                await _copy_bulk(reader, writer)
        await writer.drain()


async def _copy_bulk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None) -> None:
    """One ``$<n>\\r\\n<n bytes>\\r\\n`` argument, copied to ``writer`` (or dropped) in chunks."""
    line = await reader.readuntil(b"\r\n")
    remaining = header(line, b"$", MAX_BULK) + 2
    if writer is not None:
        writer.write(line)
    while remaining:
        data = await reader.read(min(CHUNK, remaining))
        if not data:
            raise BadRequest("a request cut off")
        remaining -= len(data)
        if writer is not None:
            writer.write(data)
            await writer.drain()


async def relay(
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    redis: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    """Requests from ``client`` to ``redis`` through :func:`forward_requests`, replies back as
    bytes; closes both ends when either side is done."""

    async def requests() -> None:
        try:
            await forward_requests(client[0], redis[1])
            if redis[1].can_write_eof():
                redis[1].write_eof()
        except (BadRequest, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            redis[1].close()
            client[1].close()
        except (ConnectionError, OSError):
            pass

    try:
        await asyncio.gather(requests(), pipe(redis[0], client[1]))
    finally:
        for _, writer in (client, redis):
            writer.close()
