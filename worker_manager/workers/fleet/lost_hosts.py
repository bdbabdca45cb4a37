"""Judging a dead manager's workers (SPEC §3 ``host_lost``): from Redis alone, by the survivors.

Only a worker's own manager watches it, so when that manager is gone (its presence key expired:
killed, its host lost, or cut off from Redis) nobody would. Every live manager therefore looks,
once per watch interval, at the managers that announced themselves (``<prefix>:managers``) and
have no presence key, and at their live workers' heartbeats:

- a heartbeat is there: the manager died, the host did not; the worker stays as it is (its
  manager adopts it when it returns, or a survivor judges it the round its heartbeats stop);
- no heartbeat (RUNNING or STARTING alike: no create finishes while its manager is gone): FAILED
  ``host_lost``, with its lifecycle entry; its slot and its owner's quota are freed and its Redis
  user is removed, so a wrapper that comes back cannot speak for it.

No Docker call is made: the host may be unreachable. Several survivors may judge the same worker
at once; the transition is one Lua step that also checks, at that moment, that the owner's
presence key and the worker's heartbeat are both still absent, so exactly one of them acts and a
manager that came back in between is never overruled. What the owner finds when it returns
(records ended, containers still there) its reconciler removes and reports (``fenced``).

A survivor that has itself just lost Redis (an outage, a failover, a restart) judges nothing for
a while: the presence keys and heartbeats it would miss may be its own view's fault, and the
other managers and the wrappers need a presence TTL and a heartbeat TTL to show up again.

A dead manager with no live and no suspended worker left, in any namespace, is dropped from the
managers set. Its suspended workers are left SUSPENDED: their volumes are on its host, which may
return.
:func:`lost_workers` is the rule, a plain function of what a round read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker_manager.contract.kinds import WorkerStatus
from worker_manager.contract.reasons import Ended
from worker_manager.core.keys import Keys
from worker_manager.core.logs import get_logger
from worker_manager.settings import Settings
from worker_manager.workers.state.heartbeats import Observed, observe
from worker_manager.workers.transitions.lifecycle import Lifecycle, Outcome

log = get_logger(__name__)

# KEYS: presence, the manager's live and suspended sets of every namespace, managers
# ARGV: manager id
_FORGET = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 2, #KEYS - 1 do
  if redis.call('SCARD', KEYS[i]) > 0 then return 0 end
end
return redis.call('SREM', KEYS[#KEYS], ARGV[1])
"""


def dead_managers(ids: Sequence[str], presence: Sequence[object], me: str) -> list[str]:
    """The announced managers (but this one) whose presence key is gone."""
    return [m for m, value in zip(ids, presence, strict=True) if value is None and m != me]


def lost_workers(observed: Sequence[Observed]) -> list[str]:
    """Which of a dead manager's live workers its host took with it: those with a live record
    and no heartbeat key at all (an invalid one is still a sign of life)."""
    return [
        seen.worker_id
        for seen in observed
        if seen.status in (WorkerStatus.STARTING, WorkerStatus.RUNNING)
        and seen.beat is None
        and seen.problem is None
    ]


class LostHosts:
    """One round per watch interval (:meth:`round`), run by the supervisor of every manager."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        raw_redis: Redis,
        lifecycle: Lifecycle,
        *,
        observe: Callable[[str], None] = lambda _reason: None,
        namespaces: Callable[[], Sequence[Keys]] | None = None,
    ) -> None:
        """``namespaces``: the keys of every namespace the managers serve (the fleet's and each
        tenant's): a dead manager is forgotten only when none of them holds a worker of it."""
        self._settings = settings
        self._namespaces = namespaces or (lambda: [settings.keys])
        self._redis = redis
        self._raw = raw_redis  # heartbeats are the workers' bytes
        self._lifecycle = lifecycle
        self._observe = observe  # the metrics' count of workers ended by a manager, by reason
        self._forget = redis.register_script(_FORGET)
        self._run_id: str | None = None
        self._outage = False
        #: Until then nothing is judged (this manager's own view of Redis was just broken).
        self._quiet_until = time.monotonic() + self.settle_seconds

    @property
    def settle_seconds(self) -> float:
        """How long after its own outage a manager waits: the others' presence refreshes and
        the wrappers' heartbeats must have had their chance to come back."""
        s = self._settings
        return s.presence_ttl_seconds + s.heartbeat_ttl_seconds + 2 * s.heartbeat_interval_seconds

    async def round(self) -> None:
        """Judge the workers of every dead manager once; an outage waits for the next round."""
        try:
            await self._notice_outage_end()
            if time.monotonic() < self._quiet_until:
                return
            await self._judge_all()
        except (RedisError, OSError) as exc:
            self._outage = True
            log.warning("judging dead managers' workers skipped: Redis unavailable", error=str(exc))

    async def _notice_outage_end(self) -> None:
        info: dict[str, Any] = await self._redis.info("server")
        run_id = str(info.get("run_id", ""))
        if self._outage or (self._run_id is not None and run_id != self._run_id):
            # Back after an outage, or a different Redis (a restart, a failover): wait.
            self._quiet_until = time.monotonic() + self.settle_seconds
        self._run_id, self._outage = run_id, False

    async def _judge_all(self) -> None:
        keys = self._settings.keys
        ids = sorted(await self._redis.smembers(keys.managers))
        if not ids:
            return
        presence = await self._redis.mget([keys.manager(m) for m in ids])
        for manager_id in dead_managers(ids, presence, self._settings.manager_id):
            await self._judge(manager_id)

    async def _judge(self, manager_id: str) -> None:
        keys = self._settings.keys
        workers = sorted(await self._redis.smembers(keys.live(manager_id)))
        observed = await observe(self._raw, keys, workers, time.time())
        gone = [s.worker_id for s in observed if s.record is None or not s.record.text("status")]
        if gone:  # records expired or removed: nothing left to judge
            await self._redis.srem(keys.live(manager_id), *gone)
        for worker_id in lost_workers(observed):
            ended = await self._lifecycle.end(
                worker_id,
                Outcome(Ended.HOST_LOST),
                on_this_host=False,
                only_if_owner_gone=True,
                by=f"lost-hosts judge {self._settings.manager_id} (manager {manager_id} gone)",
            )
            if ended:
                self._observe(Ended.HOST_LOST)
                log.warning(
                    "worker judged lost with its host: its manager is gone and its heartbeats "
                    "stopped",
                    worker_id=worker_id,
                    manager_id=manager_id,
                )
        sets = [
            key
            for namespace in self._namespaces()
            for key in (namespace.live(manager_id), namespace.suspended(manager_id))
        ]
        removed = await self._forget(
            keys=[keys.manager(manager_id), *sets, keys.managers],
            args=[manager_id],
        )
        if int(removed) == 1:  # the script answers SREM's count: 1 when it forgot the manager
            log.info(
                "dead manager forgotten: nothing of it is left to judge", manager_id=manager_id
            )
