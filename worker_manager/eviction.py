"""Idle eviction and maximum lifetime: capacity is given back by workers nobody uses.

Activity is what the wrapper says it is: the value of its heartbeat key is the time of its last
activity (an input received, or a run still in progress, which refreshes it on every beat). A
busy worker therefore never looks idle, however long its run. The value is read from the
heartbeat itself, not only from ``last_activity_at`` (which the watcher copies on its own tick),
so an input that arrived a moment ago always counts.

A RUNNING worker idle for longer than its idle timeout (the create's ``idle_timeout_seconds``,
capped by the operator, else ``WM_IDLE_TIMEOUT_SECONDS``) is STOPPED with ``reason=idle``; any
live worker older than ``WM_MAX_LIFETIME_SECONDS`` is STOPPED with ``reason=ttl``. The status
changes first (one Lua transition, so a concurrent delete or die wins or loses cleanly), then
the container goes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker_manager.clock import unix_or_none
from worker_manager.config import Settings
from worker_manager.heartbeats import Observed, observe
from worker_manager.logs import get_logger
from worker_manager.models import WorkerStatus
from worker_manager.records import LIVE, WorkerStore

log = get_logger(__name__)

#: ``Provisioner.end``: the transition, then the container and Redis user in the background.
End = Callable[..., Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class Verdict:
    worker_id: str
    reason: str  # "idle" or "ttl"


class Evictor:
    def __init__(
        self,
        settings: Settings,
        raw_redis: Redis,
        store: WorkerStore,
        end: End,
    ) -> None:
        self._settings = settings
        self._raw = raw_redis  # does not decode: heartbeats are the workers' bytes
        self._store = store
        self._end = end
        self.evicted = 0
        #: Called with the reason of each eviction (the manager passes its metrics' counter).
        self.observe: Callable[[str], None] = lambda _reason: None

    async def sweep(self) -> list[Verdict]:
        """Judge every live worker of this manager once; stop those past their time. Outages
        are logged and wait for the next round (the supervisor runs one per interval)."""
        try:
            verdicts = await self.judge(time.time())
            for verdict in verdicts:
                await self._evict(verdict)
        except (RedisError, OSError) as exc:
            log.warning("eviction sweep failed; retrying next round", error=str(exc))
            return []
        return verdicts

    async def judge(self, now: float) -> list[Verdict]:
        ids = await self._store.live_ids()
        verdicts: list[Verdict] = []
        for seen in await observe(self._raw, self._settings.keys, ids, now):
            reason = self._reason(now, seen)
            if reason:
                verdicts.append(Verdict(seen.worker_id, reason))
        return verdicts

    def _reason(self, now: float, seen: Observed) -> str:
        """``idle``, ``ttl`` or nothing; a record or heartbeat it cannot read is the watcher's
        to judge (``heartbeat_invalid``), never a reason to fail the sweep."""
        record = seen.record
        created = unix_or_none(record.get("created_at"))
        if seen.status not in (WorkerStatus.STARTING, WorkerStatus.RUNNING) or created is None:
            return ""
        lifetime = self._settings.max_lifetime_seconds
        if lifetime is not None and now - created > lifetime:
            return "ttl"
        if seen.status != WorkerStatus.RUNNING or seen.beat is None:
            return ""  # STARTING, lost or invalid: the watcher decides, not us
        seen_at = [seen.beat.activity] + [
            t
            for t in (unix_or_none(record.get(f)) for f in ("last_activity_at", "started_at"))
            if t
        ]
        if now - max(seen_at) > self._idle_timeout(record.get("idle_timeout_seconds")):
            return "idle"
        return ""

    def _idle_timeout(self, own: str | None) -> float:
        if own:
            with contextlib.suppress(ValueError):
                return min(float(own), self._settings.max_idle_timeout_seconds)
        return self._settings.idle_timeout_seconds

    async def _evict(self, verdict: Verdict) -> None:
        # Idle applies to RUNNING only: a worker that went elsewhere meanwhile is left alone.
        allowed = WorkerStatus.RUNNING.value if verdict.reason == "idle" else LIVE
        if not await self._end(
            verdict.worker_id, WorkerStatus.STOPPED, verdict.reason, allowed_from=allowed
        ):
            return
        self.evicted += 1
        self.observe(verdict.reason)
