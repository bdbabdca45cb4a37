"""Everything a Redis server holds, as text: to prove a secret is not in it."""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis


async def every_value(redis: Redis) -> list[str]:
    """Every key and every value in the server's current database, whatever its type."""
    found: list[str] = []
    async for key in redis.scan_iter(count=1000):
        found.append(key)
        kind = await redis.type(key)
        value: Any
        if kind == "string":
            value = await redis.get(key)
        elif kind == "hash":
            value = await redis.hgetall(key)
        elif kind == "stream":
            value = await redis.xrange(key)
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            value = await redis.lrange(key, 0, -1)
        elif kind == "set":
            value = sorted(await redis.smembers(key))
        else:
            value = kind
        found.append(json.dumps(value, default=str))
    return found
