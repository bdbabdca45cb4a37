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

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker_base.heartbeat import HeartbeatInvalid, parse_heartbeat
from worker_manager.clock import unix_from_iso
from worker_manager.config import Settings
from worker_manager.logs import get_logger
from worker_manager.models import WorkerStatus
from worker_manager.records import LIVE, WorkerStore

log = get_logger(__name__)

Teardown = Callable[[str], Awaitable[int | None]]
Cancel = Callable[[str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Verdict:
    worker_id: str
    reason: str  # "idle" or "ttl"


class Evictor:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        store: WorkerStore,
        teardown: Teardown,
        cancel: Cancel,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._store = store
        self._teardown = teardown
        self._cancel = cancel
        self.evicted = 0
        #: Called with the reason of each eviction (the manager passes its metrics' counter).
        self.observe: Callable[[str], None] = lambda _reason: None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.sweep()
            except (RedisError, OSError) as exc:
                log.warning("eviction sweep failed; retrying next round", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._settings.eviction_interval_seconds)

    async def sweep(self) -> list[Verdict]:
        """Judge every live worker of this manager once; stop those past their time."""
        verdicts = await self.judge(time.time())
        for verdict in verdicts:
            await self._evict(verdict)
        return verdicts

    async def judge(self, now: float) -> list[Verdict]:
        ids = await self._store.live_ids()
        if not ids:
            return []
        keys = self._settings.keys
        async with self._redis.pipeline(transaction=False) as pipe:
            for worker_id in ids:
                pipe.hmget(
                    keys.worker(worker_id),
                    "status",
                    "created_at",
                    "started_at",
                    "last_activity_at",
                    "idle_timeout_seconds",
                )
                pipe.get(keys.heartbeat(worker_id))
            results = await pipe.execute()
        verdicts: list[Verdict] = []
        for i, worker_id in enumerate(ids):
            status, created, started, last_activity, own_timeout = results[2 * i]
            beat: str | None = results[2 * i + 1]
            reason = self._reason(now, status, created, started, last_activity, own_timeout, beat)
            if reason:
                verdicts.append(Verdict(worker_id, reason))
        return verdicts

    def _reason(
        self,
        now: float,
        status: str | None,
        created: str | None,
        started: str | None,
        last_activity: str | None,
        own_timeout: str | None,
        beat: str | None,
    ) -> str:
        if status not in (WorkerStatus.STARTING, WorkerStatus.RUNNING) or not created:
            return ""
        lifetime = self._settings.max_lifetime_seconds
        if lifetime is not None and now - unix_from_iso(created) > lifetime:
            return "ttl"
        if status != WorkerStatus.RUNNING:
            return ""  # a STARTING worker is the watcher's (start timeout), not idle
        if beat is None:
            return ""  # no heartbeat: the watcher decides (heartbeat_lost), not us
        try:
            activity = parse_heartbeat(beat, now).activity
        except HeartbeatInvalid:
            return ""  # the watcher fails it (heartbeat_invalid)
        seen = [activity] + [unix_from_iso(t) for t in (last_activity, started) if t]
        timeout = self._idle_timeout(own_timeout)
        if seen and now - max(seen) > timeout:
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
        result = await self._store.transition(
            verdict.worker_id, WorkerStatus.STOPPED, verdict.reason, allowed_from=allowed
        )
        if not result.changed:
            return
        self.evicted += 1
        self.observe(verdict.reason)
        log.info("worker evicted", worker_id=verdict.worker_id, reason=verdict.reason)
        await self._cancel(verdict.worker_id)
        exit_code = await self._teardown(verdict.worker_id)
        if exit_code is not None:
            await self._store.update(verdict.worker_id, {"exit_code": str(exit_code)})
