"""Replies that survive a failover: a state change's writes on N replicas before its reply.

Redis replicates asynchronously: a primary that dies right after answering may take the last
writes with it, and a producer may hold a reply ("RUNNING", "STOPPED") whose record the promoted
replica never saw. ``WAIT n timeout`` blocks until n replicas have acknowledged the calling
connection's writes, but the manager's writes go over several pooled connections. Replication
is one ordered stream, though, so :func:`replicated` writes one small marker and waits for it on
the same connection: once the replicas hold the marker they hold everything written before it,
on every connection.

What it costs is one replica round trip per state change (figure 10b); status and list, which
write nothing, never wait.
"""

from __future__ import annotations

from redis.asyncio import Redis


async def replicated(redis: Redis, marker: str, replicas: int, timeout_ms: int) -> int:
    """How many replicas hold every write made before this call (at most ``replicas``; fewer
    when ``timeout_ms`` passed first). ``replicas=0`` returns 0 without a round trip."""
    if replicas <= 0:
        return 0
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(marker, "1", px=60_000)
        pipe.execute_command("WAIT", replicas, timeout_ms)
        _, acknowledged = await pipe.execute()
    return int(acknowledged)
