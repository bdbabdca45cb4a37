"""Removing one test's keys from the Redis all tests of a session share."""

from __future__ import annotations

import redis.asyncio


async def delete_prefix(client: redis.asyncio.Redis, prefix: str, *, batch: int = 500) -> int:
    """UNLINK every key that starts with ``prefix``; return how many were removed."""
    await remember_image_hashes(client, prefix)
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


#: Image hashes recorded by tests whose keys were already deleted (see ``delete_prefix``).
_SEEN_IMAGE_HASHES: set[str] = set()


async def remember_image_hashes(client: redis.asyncio.Redis, prefix: str) -> None:
    """Keep the test's recorded image hashes for the session-end image sweep."""
    _SEEN_IMAGE_HASHES.update(await client.zrange(f"{prefix}:images", 0, -1))


def session_image_hashes(server: object) -> set[str]:
    """Every image hash this session's managers recorded: remembered ones plus those left."""
    hashes = set(_SEEN_IMAGE_HASHES)
    client_factory = getattr(server, "client", None)
    if client_factory is not None and getattr(server, "running", True):
        try:
            client = client_factory(retries=0)
            for key in client.scan_iter(match="*:images", count=500):
                if client.type(key) == "zset":
                    hashes.update(client.zrange(key, 0, -1))
        except Exception:  # the server may be down after a crash test; remembered ones remain
            pass
    return hashes
