"""Reading a stream as a follower: the entries after an id, resumed after a lost connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: What a follower waits out and reconnects after.
RECONNECT_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


async def read_stream(
    redis: Redis, stream: str, after: str, follow: bool
) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """Entries of ``stream`` after ``after``; resumes after the last one on a lost connection.

    ``$`` (only new entries) is resolved to the stream's newest id first, so a reconnect cannot
    skip what arrived meanwhile."""
    last = after
    delay = 0.1
    while True:
        try:
            if last == "$":
                newest = await redis.xrevrange(stream, count=1)
                last = newest[0][0] if newest else "0-0"
            response = await redis.xread({stream: last}, count=500, block=1000 if follow else None)
        except RECONNECT_ERRORS:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        delay = 0.1
        entries = response[0][1] if response else []
        for entry_id, fields in entries:
            last = entry_id
            yield entry_id, fields
        if not entries and not follow:
            return
