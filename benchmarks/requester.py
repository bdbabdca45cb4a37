"""A command sender for the benchmarks: one reply stream, one request in flight at a time.

The same client code times the manager and the echo consumer, so both pay the same cost.
"""

from __future__ import annotations

import time
import uuid

from redis.asyncio import Redis


class Requester:
    """One client with its own reply stream and one request in flight at a time."""

    def __init__(self, redis: Redis, reply_to: str) -> None:
        self._redis = redis
        self.reply_to = reply_to
        self._last = "0-0"

    async def call(
        self, stream: str, fields: dict[str, str], *, timeout: float = 30.0
    ) -> tuple[float, dict[str, str]]:
        """XADD the command, read the reply: the round trip in seconds, and the reply."""
        request_id = f"bench-{uuid.uuid4().hex}"
        body = {**fields, "request_id": request_id, "reply_to": self.reply_to}
        started = time.perf_counter()
        await self._redis.xadd(stream, body)  # type: ignore[arg-type,unused-ignore]
        deadline = started + timeout
        while (left := deadline - time.perf_counter()) > 0:
            response = await self._redis.xread(
                {self.reply_to: self._last}, count=16, block=max(1, int(min(left, 1.0) * 1000))
            )
            for _stream, entries in response or []:
                for entry_id, reply in entries:
                    self._last = entry_id
                    if reply.get("request_id") == request_id:
                        return time.perf_counter() - started, reply
        raise TimeoutError(f"no reply to {fields.get('command')} on {stream} within {timeout}s")
