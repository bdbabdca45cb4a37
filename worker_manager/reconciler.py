"""Redis and Docker brought back into agreement, at start-up and every few seconds after.

The container labels (worker id, manager id, key prefix) let the manager rebuild its view from
Docker alone. Only this manager's containers (by label) and this manager's live set are touched,
so several managers can share one Redis. For each worker:

- live record, running container: adopted (its Redis ACL user re-created if Redis lost it);
- STARTING record whose create was cut short (no container, or one not yet recorded or started):
  the create is finished by the provisioner, whose every step is idempotent (the container is
  found by name, never created twice);
- live record whose container ended while nobody watched: STOPPED/FAILED from its exit code
  (``oom`` when Docker says it was OOM-killed);
- live record whose container is gone: FAILED with ``reason=container_lost``;
- terminal record whose container is still there (a crash between the transition and the
  teardown): the container is removed;
- container without a record (the record expired or Redis lost its data): removed as an orphan,
  unless it is a warm-pool container nobody has taken yet (the pool repairs those).

Every "gone" verdict is confirmed by name against Docker right before it is acted on, so a
create finishing concurrently is never mistaken for a loss.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import docker.errors
from docker import DockerClient

from worker_manager.acl import WorkerAcl
from worker_manager.config import Settings
from worker_manager.containers import LABEL_POOL, LABEL_WORKER, ContainerRuntime
from worker_manager.logs import get_logger
from worker_manager.models import WorkerStatus
from worker_manager.outages import OUTAGE_ERRORS
from worker_manager.provisioner import Provisioner
from worker_manager.records import WorkerStore

log = get_logger(__name__)

EnsureGroups = Callable[[], Awaitable[None]]


@dataclass(slots=True)
class Report:
    adopted: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # containers of terminal records
    orphans: list[str] = field(default_factory=list)
    users_restored: list[str] = field(default_factory=list)

    def changed(self) -> bool:
        return any(
            (self.resumed, self.ended, self.lost, self.removed, self.orphans, self.users_restored)
        )


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        store: WorkerStore,
        docker: DockerClient,
        containers: ContainerRuntime,
        provisioner: Provisioner,
        acl: WorkerAcl,
        ensure_groups: EnsureGroups,
    ) -> None:
        self._settings = settings
        self._store = store
        self._docker = docker
        self._containers = containers
        self._provisioner = provisioner
        self._acl = acl
        self._ensure_groups = ensure_groups
        self._lock = asyncio.Lock()
        self.runs = 0

    async def periodic(self) -> None:
        """One periodic pass (the supervisor runs one per interval; the first pass runs in
        ``Manager.start_up``). An outage waits for the next round; anything else is reported
        by the supervisor."""
        try:
            await self.reconcile()
        except OUTAGE_ERRORS as exc:
            log.warning("reconciliation skipped: a dependency is unavailable", error=str(exc))

    async def reconcile(self) -> Report:
        async with self._lock:
            report = await self._reconcile()
        self.runs += 1
        if report.changed():
            log.info(
                "reconciled Redis with Docker",
                adopted=len(report.adopted),
                resumed=report.resumed,
                ended=report.ended,
                lost=report.lost,
                removed=report.removed,
                orphans=report.orphans,
                users_restored=len(report.users_restored),
            )
        return report

    async def _reconcile(self) -> Report:
        report = Report()
        # Records first, containers second: a container that appears in between is one whose
        # record already exists, never a false orphan.
        live = set(await self._store.live_ids())
        found = {
            str((c.get("Labels") or {}).get(LABEL_WORKER, "")): c
            for c in await self._containers.find_all()
        }
        found.pop("", None)
        for worker_id, container in found.items():
            live.discard(worker_id)
            await self._with_container(worker_id, container, report)
        for worker_id in sorted(live):
            await self._without_container(worker_id, report)
        return report

    async def _with_container(
        self, worker_id: str, container: dict[str, Any], report: Report
    ) -> None:
        if self._provisioner.is_active(worker_id):
            return
        record = await self._store.get(worker_id)
        if record is None and LABEL_POOL in (container.get("Labels") or {}):
            return  # a warm-pool container nobody has taken: the pool's own (pool.py)
        if record is None:
            await self._provisioner.teardown(worker_id)
            report.orphans.append(worker_id)
            return
        status = record.get("status", "")
        if status not in (WorkerStatus.STARTING, WorkerStatus.RUNNING):
            exit_code = await self._provisioner.teardown(worker_id)
            if exit_code is not None and not record.get("exit_code"):
                await self._store.update(worker_id, {"exit_code": str(exit_code)})
            report.removed.append(worker_id)
            return
        state = str(container.get("State", ""))
        if state in ("exited", "dead"):
            await self._ended_unseen(worker_id, report)
            return
        if status == WorkerStatus.STARTING and (
            state == "created" or record.get("container_id") != container.get("Id")
        ):
            # Created, or started but not yet recorded, when the create was cut short.
            self._provisioner.start(worker_id)
            report.resumed.append(worker_id)
            return
        if self._acl.enabled and not await self._acl.exists(worker_id):
            await self._acl.create(worker_id)
            report.users_restored.append(worker_id)
        report.adopted.append(worker_id)

    async def _without_container(self, worker_id: str, report: Report) -> None:
        if self._provisioner.is_active(worker_id):
            return
        record = await self._store.get(worker_id)
        if record is None:
            return  # expired: the watcher drops it from the live set
        status = record.get("status")
        if status not in (WorkerStatus.STARTING, WorkerStatus.RUNNING):
            return
        if await self._inspect(worker_id) is not None:
            return  # created since we listed: next round
        if status == WorkerStatus.STARTING and not record.get("container_id"):
            self._provisioner.start(worker_id)
            report.resumed.append(worker_id)
            return
        result = await self._store.transition(worker_id, WorkerStatus.FAILED, "container_lost")
        if result.changed:
            await self._provisioner.teardown(worker_id)
            report.lost.append(worker_id)

    async def _ended_unseen(self, worker_id: str, report: Report) -> None:
        """The container ended while no events were read (the manager was down)."""
        attrs = await self._inspect(worker_id)
        state = (attrs or {}).get("State") or {}
        exit_code = int(state.get("ExitCode", 0) or 0)
        if state.get("OOMKilled"):
            to, reason = WorkerStatus.FAILED, "oom"
        elif exit_code == 0:
            to, reason = WorkerStatus.STOPPED, "exited"
        else:
            to, reason = WorkerStatus.FAILED, f"exited with code {exit_code}"
        result = await self._store.transition(
            worker_id, to, reason, fields={"exit_code": str(exit_code)}
        )
        await self._provisioner.teardown(worker_id)
        if result.changed:
            report.ended.append(worker_id)

    async def _inspect(self, worker_id: str) -> dict[str, Any] | None:
        name = self._containers.name(worker_id)

        def inspect() -> dict[str, Any] | None:
            try:
                attrs: dict[str, Any] = self._docker.api.inspect_container(name)
            except docker.errors.NotFound:
                return None
            return attrs

        return await asyncio.to_thread(inspect)

    async def after_redis_restart(self) -> None:
        """Redis came back, possibly without its ACL users or consumer groups: restore them.

        ACL users are not part of Redis' data files (unless an ACL file is saved), so a Redis
        restarted with its data still loses them; the passwords derive from
        ``WM_WORKER_SECRET``, so the users come back as they were and the wrappers' reconnects
        succeed.
        """
        await self._ensure_groups()
        restored = 0
        for worker_id in await self._store.live_ids():
            if self._acl.enabled and not await self._acl.exists(worker_id):
                await self._acl.create(worker_id)
                restored += 1
        log.info("state restored after a Redis restart", users_restored=restored)
