"""Workers that sleep and wake (SPEC §8): suspend, resume, and what wakes them.

**Suspend** (a ``suspend`` command, or an idle worker with ``WM_IDLE_ACTION=suspend``): one Lua
step (``WorkerStore.suspend``) moves a RUNNING worker to SUSPENDED, off the live set (it no
longer counts against ``WM_MAX_WORKERS``) onto this manager's suspended set (at most
``WM_MAX_SUSPENDED``), with ``suspended_at``; then its container, Redis user and egress grant go
(``Lifecycle.put_to_sleep``) and its volumes stay: the workspace, the agent's home (Claude's
sessions) and the wrapper's private files (the session id, the spend).

**Resume** (a ``resume`` command, or any input pushed to a suspended worker): SUSPENDED ->
STARTING back onto the live set (within ``WM_MAX_WORKERS``), then the provisioner starts it as
it would a create: the same image, its repository already checked out (the record keeps the
commit), the same volumes; its first heartbeat makes it RUNNING and the wrapper reads the inputs
that waited, in order. Claude Code resumes its session (``--resume``), whose transcript is on
the home volume.

**Waking** (:meth:`Sleep.round`, every watch interval): for each suspended worker, whether its
input stream holds an entry its wrapper's group has not been given yet (the newest entry id
against the group's ``last-delivered-id``: metadata, not the data plane); such a worker is
resumed (``reason`` ``input``). A worker suspended longer than
``WM_WORKSPACE_RETENTION_DAYS`` is deleted instead (STOPPED ``retention``, its volumes with it).
The decisions are :func:`wants_waking` and :func:`expired`, plain functions.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker_base.config import WRAPPER_GROUP
from worker_manager.contract.kinds import WorkerStatus
from worker_manager.contract.reasons import Ended, Moved, Slept
from worker_manager.contract.tenants import workers_refused
from worker_manager.core.clock import unix_or_none
from worker_manager.core.errors import CommandError, ErrorCode
from worker_manager.core.logs import get_logger
from worker_manager.settings import Settings
from worker_manager.workers.state.records import SleepOutcome, SleepResult, WorkerStore
from worker_manager.workers.transitions.lifecycle import Lifecycle, Outcome
from worker_manager.workers.transitions.provisioner import Provisioner

log = get_logger(__name__)


def _stream_id(text: object) -> tuple[int, int]:
    try:
        ms, _, seq = str(text).partition("-")
        return int(ms), int(seq or 0)
    except ValueError:
        return 0, 0


def wants_waking(newest: object, last_delivered: object) -> bool:
    """An input waits for the wrapper: the stream's newest entry is past what its group has
    been given (no group yet: any entry waits)."""
    if not newest:
        return False
    if not last_delivered:
        return True
    return _stream_id(newest) > _stream_id(last_delivered)


def expired(suspended_at: str | None, now: float, retention_days: float) -> bool:
    moment = unix_or_none(suspended_at)
    return moment is not None and now - moment > retention_days * 86_400


class Sleep:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        store: WorkerStore,
        lifecycle: Lifecycle,
        provisioner: Provisioner,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._keys = settings.keys
        self._store = store
        self._lifecycle = lifecycle
        self._provisioner = provisioner

    async def suspend(self, worker_id: str, reason: Slept) -> SleepOutcome:
        outcome = await self._store.suspend(worker_id, reason)
        if outcome.result is SleepResult.SUSPENDED:
            log.info("worker suspended", worker_id=worker_id, reason=str(reason))
            await self._lifecycle.put_to_sleep(worker_id)
        return outcome

    async def resume(self, worker_id: str, reason: Moved) -> SleepOutcome:
        outcome = await self._store.resume(worker_id, reason)
        if outcome.result is SleepResult.RESUMED:
            log.info("worker resumed", worker_id=worker_id, reason=str(reason))
            self._provisioner.start(worker_id)
        return outcome

    async def suspend_or_refuse(self, worker_id: str) -> None:
        """The ``suspend`` command: CommandError when it cannot be done."""
        outcome = await self.suspend(worker_id, Slept.SUSPENDED)
        if outcome.result is SleepResult.CAPACITY:
            raise CommandError(
                ErrorCode.CAPACITY_EXCEEDED,
                f"this manager keeps its maximum of {self._settings.max_suspended} suspended "
                "workers; delete or resume one first",
                retry_after=self._settings.capacity_retry_after_seconds,
            )
        if (
            outcome.result is SleepResult.WRONG_STATUS
            and outcome.status is not WorkerStatus.SUSPENDED
        ):
            raise CommandError(
                ErrorCode.CONFLICT,
                f"worker {worker_id} is {outcome.status or 'gone'}: only a RUNNING worker "
                "can be suspended",
            )

    async def resume_or_refuse(self, worker_id: str) -> None:
        """The ``resume`` command: CommandError when it cannot be done."""
        outcome = await self.resume(worker_id, Moved.RESUME)
        tenant = self._store.tenant
        if outcome.result is SleepResult.QUOTA and tenant is not None:
            raise CommandError(ErrorCode.QUOTA_EXCEEDED, workers_refused(tenant.name, tenant.quota))
        if outcome.result is SleepResult.CAPACITY:
            raise CommandError(
                ErrorCode.CAPACITY_EXCEEDED,
                f"this manager runs its maximum of {self._settings.max_workers} live workers; "
                "delete one or retry later",
                retry_after=self._settings.capacity_retry_after_seconds,
            )
        if outcome.result is SleepResult.WRONG_STATUS and outcome.status not in (
            WorkerStatus.STARTING,
            WorkerStatus.RUNNING,
        ):
            raise CommandError(
                ErrorCode.CONFLICT,
                f"worker {worker_id} is {outcome.status or 'gone'}: only a SUSPENDED worker "
                "can be resumed",
            )

    async def round(self) -> None:
        """Wake the suspended workers an input waits for; delete the ones kept too long."""
        try:
            ids = await self._store.suspended_ids()
            if not ids:
                return
            found = await self._look(ids)
        except RedisError as exc:
            log.warning("suspended workers not checked: Redis", error=str(exc))
            return
        now = time.time()
        for worker_id, (status, suspended_at, newest, delivered) in zip(ids, found, strict=True):
            if status != WorkerStatus.SUSPENDED:
                await self._redis.srem(self._store.suspended_key, worker_id)
            elif expired(suspended_at, now, self._settings.workspace_retention_days):
                await self._lifecycle.end(
                    worker_id,
                    Outcome(Ended.RETENTION),
                    allowed_from=(WorkerStatus.SUSPENDED,),
                )
            elif wants_waking(newest, delivered):
                outcome = await self.resume(worker_id, Moved.INPUT)
                if outcome.result in (SleepResult.CAPACITY, SleepResult.QUOTA):
                    log.info(
                        "an input waits, but there is no room to resume",
                        worker_id=worker_id,
                        limit=str(outcome.result),
                    )

    async def _look(self, ids: Sequence[str]) -> list[tuple[str, str, str, str]]:
        """(status, suspended_at, newest input id, the group's last-delivered id) of each."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for worker_id in ids:
                pipe.hmget(self._keys.worker(worker_id), "status", "suspended_at")
                pipe.xrevrange(self._keys.input(worker_id), count=1)
                pipe.xinfo_groups(self._keys.input(worker_id))
            results = await pipe.execute(raise_on_error=False)
        found = []
        for i in range(len(ids)):
            fields, newest, groups = results[3 * i : 3 * i + 3]
            status, suspended_at = fields if isinstance(fields, list) else (None, None)
            newest_id = newest[0][0] if isinstance(newest, list) and newest else ""
            delivered = ""
            if isinstance(groups, list):
                for group in groups:
                    if isinstance(group, dict) and group.get("name") == WRAPPER_GROUP:
                        delivered = str(group.get("last-delivered-id") or "")
            found.append((str(status or ""), str(suspended_at or ""), str(newest_id), delivered))
        return found
