"""Placement across managers: a full manager lets creates flow to one with room.

Every manager reads the shared command stream, so without this a create lands on whichever
manager reads it first, and a full one can only answer ``capacity_exceeded``. Each manager's
presence key says how much room it has (``{"room": n}``, refreshed with the key); a manager at
capacity stops reading the shared stream while another live manager has room, so the creates go
there instead of bouncing. It goes on reading its own stream (deletes of its workers), and when
every manager is full they all read again and answer ``capacity_exceeded`` with ``retry_after``.
Likewise a manager with no warm-pool worker ready leaves creates to one that has one and room.
The verdict is a plain function over data (:func:`may_take`); :class:`Placement` reads the data
at most once a second.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from worker_manager.settings import Settings

#: How long a verdict is reused: the read loop asks before every read.
CACHE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Offer:
    """What a manager's presence announces: free slots, and ready warm-pool workers."""

    room: int = 0
    pooled: int = 0


def may_take(live: int, max_workers: int, pooled: int, others: list[Offer]) -> bool:
    """Whether this manager should read creates from the shared stream now: not when it is
    full and another has room, nor when it has no warm pool and another has a ready pooled
    worker and room (that one starts a worker in a fraction of the time)."""
    if live >= max_workers:
        return not any(o.room > 0 for o in others)
    return pooled > 0 or not any(o.room > 0 and o.pooled > 0 for o in others)


def offer_of(value: str | None) -> Offer:
    """What a presence value announces (nothing, for a value without it: an older manager)."""
    if not value:
        return Offer()
    try:
        data = json.loads(value)
    except ValueError:
        return Offer()
    if not isinstance(data, dict):
        return Offer()
    room, pooled = data.get("room"), data.get("pooled")
    return Offer(
        room if isinstance(room, int) and room > 0 else 0,
        pooled if isinstance(pooled, int) and pooled > 0 else 0,
    )


class Placement:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        live: Callable[[], Awaitable[int]],
        pooled: Callable[[], int] = lambda: 0,
    ) -> None:
        """``live``: this manager's live workers in every namespace it serves
        (``WorkerStore.host_live``): its capacity is the host's, shared by every tenant."""
        self._settings = settings
        self._redis = redis
        self._live = live
        self._pooled = pooled
        self._verdict: tuple[float, bool] | None = None
        #: Not reading the shared stream right now (for /metrics and tests).
        self.paused = False

    async def offer(self) -> dict[str, int]:
        """For this manager's presence value."""
        live = await self._live()
        return {"room": max(0, self._settings.max_workers - live), "pooled": self._pooled()}

    async def should_take(self) -> bool:
        now = time.monotonic()
        if self._verdict is not None and now - self._verdict[0] < CACHE_SECONDS:
            return self._verdict[1]
        keys = self._settings.keys
        live = await self._live()
        pooled = self._pooled()
        others: list[Offer] = []
        if live >= self._settings.max_workers or pooled == 0:
            ids = sorted(await self._redis.smembers(keys.managers) - {self._settings.manager_id})
            values = await self._redis.mget([keys.manager(i) for i in ids]) if ids else []
            # A dead manager stays in the set until its workers are judged (``lost_hosts``).
            others = [offer_of(v) for v in values if v is not None]
        verdict = may_take(live, self._settings.max_workers, pooled, others)
        self._verdict = (now, verdict)
        self.paused = not verdict
        return verdict
