"""The heartbeat key: proof of life for the manager, and the worker's last activity time.

The manager never reads the data plane; it learns everything from this one key: the first SET
turns the worker RUNNING, its expiry means the wrapper is gone, and its value (the time of the
last activity) drives idle eviction. Activity is an input received or a run in progress, so a
busy worker refreshes the time on every beat and never looks idle, however long a run takes.
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.asyncio import Redis

from worker_base.clock import iso_from_unix
from worker_base.redis_client import REDIS_ERRORS, Backoff

log = logging.getLogger("worker_base")


class Heartbeat:
    def __init__(self, redis: Redis, key: str, *, interval: float, ttl: int) -> None:
        self._redis = redis
        self._key = key
        self._interval = interval
        self._ttl = ttl
        self.last_activity = time.time()
        self.busy = False

    def touch(self) -> None:
        self.last_activity = time.time()

    async def beat(self) -> None:
        if self.busy:
            self.touch()
        # Bounded: a beat stuck on a dead socket must not outlive the key's TTL unnoticed.
        async with asyncio.timeout(max(self._interval, 1.0)):
            await self._redis.set(self._key, iso_from_unix(self.last_activity), ex=self._ttl)

    async def run(self) -> None:
        """Beat every ``interval`` seconds until cancelled; Redis outages are waited out."""
        backoff = Backoff("writing the heartbeat", cap=self._interval)
        while True:
            try:
                await self.beat()
            except REDIS_ERRORS as exc:
                # A refusal (NOPERM) is a deployment bug; it is logged and retried like an outage.
                backoff.failed(exc)
            else:
                backoff.succeeded()
            await asyncio.sleep(self._interval)
