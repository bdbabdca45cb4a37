"""This manager's presence key: alive, how much room it has, how many pooled workers are ready.

Its expiry is how the other managers learn that this one died (``commands.routing``), and its
value is what placement across managers reads (``workers.fleet.placement``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker_manager.core.clock import iso_now
from worker_manager.core.logs import get_logger
from worker_manager.settings import Settings

log = get_logger(__name__)


class Presence:
    """This manager's presence key, refreshed while it runs; its expiry means the manager died."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        offer: Callable[[], Awaitable[dict[str, int]]] | None = None,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._key = settings.keys.manager(settings.manager_id)
        self._offer = offer

    async def beat(self) -> None:
        """The key (its expiry means the manager died) says when, how much room it has and how
        many warm-pool workers are ready (``placement.py``)."""
        value: dict[str, object] = {"at": iso_now()}
        if self._offer is not None:
            value.update(await self._offer())
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key, json.dumps(value), ex=self._settings.presence_ttl_seconds)
            pipe.sadd(self._settings.keys.managers, self._settings.manager_id)
            await pipe.execute()

    @property
    def interval(self) -> float:
        return self._settings.presence_ttl_seconds / 3

    async def refresh(self) -> None:
        """One round (the supervisor runs one per interval); an outage waits for the next."""
        try:
            await self.beat()
        except (RedisError, OSError) as exc:
            log.warning("presence refresh failed", error=str(exc))

    async def leave(self) -> None:
        """At a clean stop: the others need not wait for the key to expire."""
        with contextlib.suppress(RedisError, OSError):
            await self._redis.delete(self._key)
