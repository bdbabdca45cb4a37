"""Following a stream in a benchmark: what each entry says, as it arrives, until enough came."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from redis.asyncio import Redis

T = TypeVar("T")
#: One entry (its id, its fields) and when it was read (``time.time()``) -> a sample, or None
#: for an entry that is not one.
Pick = Callable[[str, dict[str, str], float], "T | None"]


async def collect(
    redis: Redis, stream: str, after: str, count: int, timeout: float, pick: Pick[T], what: str
) -> list[T]:
    """``count`` samples from the entries of ``stream`` after ``after``, within ``timeout``;
    ``TimeoutError`` naming ``what`` when fewer came."""
    found: list[T] = []
    last = after
    deadline = time.monotonic() + timeout
    while len(found) < count and time.monotonic() < deadline:
        response = await redis.xread({stream: last}, count=1000, block=1000)
        now = time.time()
        for _s, entries in response or []:
            for entry_id, fields in entries:
                last = str(entry_id)
                sample = pick(last, fields, now)
                if sample is not None:
                    found.append(sample)
    if len(found) < count:
        raise TimeoutError(f"only {len(found)} of {count} {what} reached {stream}")
    return found
