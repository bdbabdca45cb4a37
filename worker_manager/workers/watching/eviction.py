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
the container goes. With ``WM_IDLE_ACTION=suspend`` an idle worker is SUSPENDED instead
(``workers.transitions.sleep``: its workspace and session kept), unless ``WM_MAX_SUSPENDED``
are already.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker_manager.contract.kinds import LIVE_STATUSES, WorkerStatus
from worker_manager.contract.reasons import Ended, Slept
from worker_manager.core.logs import get_logger
from worker_manager.settings import FleetSettings, Settings
from worker_manager.workers.state.heartbeats import Observed, observe
from worker_manager.workers.state.records import SleepOutcome, SleepResult, WorkerStore
from worker_manager.workers.transitions.lifecycle import Lifecycle, Outcome

log = get_logger(__name__)

#: How an idle worker is suspended (``workers.transitions.sleep.Sleep.suspend``).
Suspend = Callable[[str, Slept], Awaitable[SleepOutcome]]


@dataclass(frozen=True, slots=True)
class Verdict:
    worker_id: str
    reason: Ended  # IDLE or TTL


def eviction_reason(seen: Observed, now: float, fleet: FleetSettings) -> Ended | None:
    """``idle``, ``ttl`` or None, as a plain function of one observation; a record or
    heartbeat it cannot read is the watcher's to judge (``heartbeat_invalid``), never a reason
    to fail the sweep."""
    record = seen.record
    if record is None or not record.is_live or record.created_at is None:
        return None
    lifetime = fleet.max_lifetime_seconds
    if lifetime is not None and now - record.created_at > lifetime:
        return Ended.TTL
    if record.status is not WorkerStatus.RUNNING or seen.beat is None:
        return None  # STARTING, lost or invalid: the watcher decides, not us
    seen_at = [seen.beat.activity] + [
        t for t in (record.last_activity_at, record.started_at) if t is not None
    ]
    if now - max(seen_at) > idle_timeout(record.idle_timeout_seconds, fleet):
        return Ended.IDLE
    return None


def idle_timeout(own: float | None, fleet: FleetSettings) -> float:
    """The create's own idle timeout, capped by the operator's maximum; else the default."""
    if own is not None:
        return min(own, fleet.max_idle_timeout_seconds)
    return fleet.idle_timeout_seconds


class Evictor:
    def __init__(
        self,
        settings: Settings,
        raw_redis: Redis,
        store: WorkerStore,
        lifecycle: Lifecycle,
        observe: Callable[[str], None] = lambda _reason: None,
        suspend: Suspend | None = None,
    ) -> None:
        self._settings = settings
        self._raw = raw_redis  # does not decode: heartbeats are the workers' bytes
        self._store = store
        self._lifecycle = lifecycle
        self._suspend = suspend
        #: Called with the reason of each eviction (the manager passes its metrics' counter).
        self._observe = observe

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
            reason = eviction_reason(seen, now, self._settings)
            if reason is not None:
                verdicts.append(Verdict(seen.worker_id, reason))
        return verdicts

    async def _evict(self, verdict: Verdict) -> None:
        if (
            verdict.reason is Ended.IDLE
            and self._settings.idle_action == "suspend"
            and self._suspend is not None
        ):
            result = await self._suspend(verdict.worker_id, Slept.IDLE)
            if result.result is SleepResult.SUSPENDED:
                self._observe(Slept.IDLE)
                return
            if result.result is not SleepResult.CAPACITY:
                return  # not RUNNING any more: another verdict came first
            log.info(
                "no room to suspend an idle worker: it is stopped", worker_id=verdict.worker_id
            )
        # Idle applies to RUNNING only: a worker that went elsewhere meanwhile is left alone.
        allowed = (WorkerStatus.RUNNING,) if verdict.reason is Ended.IDLE else LIVE_STATUSES
        ended = await self._lifecycle.end(
            verdict.worker_id, Outcome(verdict.reason), allowed_from=allowed
        )
        if ended:
            self._observe(verdict.reason)
