"""Removing one test's keys from the Redis all tests of a session share."""

from __future__ import annotations

import redis.asyncio


async def delete_prefix(client: redis.asyncio.Redis, prefix: str, *, batch: int = 500) -> int:
    """UNLINK every key that starts with ``prefix``; return how many were removed."""
    removed = 0
    pending: list[str] = []
    async for key in client.scan_iter(match=f"{prefix}*", count=batch):
        pending.append(key)
        if len(pending) >= batch:
            removed += int(await client.unlink(*pending))
            pending.clear()
    if pending:
        removed += int(await client.unlink(*pending))
    return removed
