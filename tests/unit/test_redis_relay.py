"""The Redis relay's request reader (``egress/redis_relay.py``): requests pass as sent, a HELLO
becomes ``HELLO 4`` (which Redis refuses with NOPROTO), anything not RESP ends the connection."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from worker_manager.egress.redis_relay import REFUSED_HELLO, BadRequest, forward_requests


def req(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None


async def forwarded(sent: bytes) -> bytes:
    reader = asyncio.StreamReader()
    reader.feed_data(sent)
    reader.feed_eof()
    sink = Sink()
    await forward_requests(reader, cast(Any, sink))
    return bytes(sink.data)


async def test_requests_pass_as_sent_and_hello_does_not() -> None:
    big = b"x" * 300_000
    ordinary = req(b"AUTH", b"u", b"p") + req(b"XADD", b"k", b"*", b"content", big) + req(b"PING")
    assert await forwarded(ordinary) == ordinary
    hello = req(b"hello", b"3", b"AUTH", b"u", b"p", b"SETNAME", b"wm:m:consumer")
    assert await forwarded(req(b"PING") + hello + req(b"PING")) == (
        req(b"PING") + REFUSED_HELLO + req(b"PING")
    )
    assert await forwarded(b"*0\r\n" + req(b"PING")) == req(b"PING")


@pytest.mark.parametrize(
    "sent",
    [
        b"HELLO 3 AUTH u p SETNAME x\r\n",  # inline
        b"*1\r\n+PING\r\n",  # not a bulk string
        b"*1\rX\r\n$4\r\nPING\r\n",  # a header Redis would end at its first \r
        b"*-1\r\n",
        b"*1\r\n$100\r\nPING",  # cut off
        req(b"X" * 65),  # no command is named so long
    ],
)
async def test_anything_else_ends_the_connection(sent: bytes) -> None:
    with pytest.raises((BadRequest, asyncio.IncompleteReadError)):
        await forwarded(sent)
