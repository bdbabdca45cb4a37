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
  teardown): the container is removed; when the record says ``host_lost`` (the other managers
  judged this one's host lost while it was gone or cut off), it is reported as ``fenced``: the
  verdict stands, nothing judged is resurrected;
- container without a record (the record expired or Redis lost its data): removed as an orphan,
  unless it is a warm-pool container nobody has taken yet (the pool repairs those);
- SUSPENDED record whose container is still there (a crash during the suspend): the container
  is removed, its volumes kept;
- volumes of workers that are neither live, nor suspended, nor have a container here: removed;
- service containers (SPEC §9) of a worker that ended or sleeps: removed (their volumes are the
  worker's); one that exited unseen while its worker ran: reported (``service_exits``).

Every "gone" verdict is confirmed by name against Docker right before it is acted on, so a
create finishing concurrently is never mistaken for a loss. The verdicts themselves are
:func:`reconcile_steps`, a plain function of the two listings.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import docker.errors
from docker import DockerClient

from worker_manager.contract.kinds import WorkerStatus
from worker_manager.contract.labels import (
    LABEL_POOL,
    LABEL_SERVICE,
    LABEL_SERVICE_OF,
    LABEL_WORKER,
)
from worker_manager.contract.reasons import Ended, parse_end_reason
from worker_manager.contract.record import WorkerRecord
from worker_manager.core import docker_client
from worker_manager.core.clock import unix_or_none
from worker_manager.core.logs import get_logger
from worker_manager.core.outages import OUTAGE_ERRORS
from worker_manager.egress.grants import BUILD_GRANT_PREFIX
from worker_manager.services.runtime import ServiceRuntime
from worker_manager.settings import Settings
from worker_manager.workers.resources.acl import WorkerAcl
from worker_manager.workers.resources.containers import ContainerRuntime
from worker_manager.workers.resources.containment import Containment
from worker_manager.workers.state.records import WorkerStore
from worker_manager.workers.transitions.lifecycle import Lifecycle, Outcome, outcome_of
from worker_manager.workers.transitions.provisioner import Provisioner
from worker_manager.workers.watching.service_exits import service_ended

log = get_logger(__name__)

EnsureGroups = Callable[[], Awaitable[None]]

#: What the reconciler does for one worker:
#: - ``adopt``: live record, running container (its Redis user is restored if Redis lost it);
#: - ``resume``: a STARTING create cut short: the provisioner finishes it;
#: - ``ended_unseen``: live record, container exited while nobody watched;
#: - ``finish``: ended record whose container is still there: remove it;
#: - ``orphan``: a container without a record: remove it;
#: - ``sleep``: a SUSPENDED record whose container is still there: remove it, keep the volumes;
#: - ``resume_if_absent`` / ``lost_if_absent``: a live record without a container, acted on
#:   only once Docker confirms that no container of that name exists.
Step = Literal[
    "adopt",
    "resume",
    "ended_unseen",
    "finish",
    "orphan",
    "sleep",
    "resume_if_absent",
    "lost_if_absent",
]


@dataclass(frozen=True, slots=True)
class Found:
    """One of this manager's containers, as listed."""

    worker_id: str
    container_id: str
    state: str
    pooled: bool


def reconcile_steps(
    live: Collection[str],
    found: Mapping[str, Found],
    records: Mapping[str, WorkerRecord | None],
    busy: Collection[str],
) -> list[tuple[str, Step]]:
    """What to do for each worker, from this manager's live set, its containers, their records
    and the workers this process is provisioning (``busy``: left alone)."""
    steps: list[tuple[str, Step]] = []
    for worker_id, container in sorted(found.items()):
        record = records.get(worker_id)
        if worker_id in busy or (record is None and container.pooled):
            continue  # being created here; or a warm-pool container nobody took (pool.py's)
        if record is None:
            steps.append((worker_id, "orphan"))
        elif record.status is WorkerStatus.SUSPENDED:
            steps.append((worker_id, "sleep"))
        elif not record.is_live:
            steps.append((worker_id, "finish"))
        elif container.state in ("exited", "dead"):
            steps.append((worker_id, "ended_unseen"))
        elif record.status is WorkerStatus.STARTING and (
            container.state == "created" or record.container_id != container.container_id
        ):
            steps.append((worker_id, "resume"))  # created, or started but not yet recorded
        else:
            steps.append((worker_id, "adopt"))
    for worker_id in sorted(set(live) - set(found)):
        record = records.get(worker_id)
        if worker_id in busy or record is None or not record.is_live:
            continue  # expired (the watcher drops it from the live set) or ended
        if record.status is WorkerStatus.STARTING and not record.container_id:
            steps.append((worker_id, "resume_if_absent"))
        else:
            steps.append((worker_id, "lost_if_absent"))
    return steps


@dataclass(slots=True)
class Report:
    adopted: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # containers of terminal records
    #: Containers of workers judged ``host_lost`` by the others while this manager was away.
    fenced: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    users_restored: list[str] = field(default_factory=list)
    grants_revoked: list[str] = field(default_factory=list)
    volumes_removed: list[str] = field(default_factory=list)
    #: Workers whose services' containers were removed (the worker ended or is suspended).
    services_removed: list[str] = field(default_factory=list)

    def changed(self) -> bool:
        return any(
            (
                self.resumed,
                self.ended,
                self.lost,
                self.removed,
                self.fenced,
                self.orphans,
                self.users_restored,
                self.grants_revoked,
                self.volumes_removed,
                self.services_removed,
            )
        )


#: What the reconciler does with one service's container: ``remove`` it (its worker ended or
#: sleeps: a teardown cut short), or report that it ``exited`` unseen (its worker runs on).
ServiceStep = Literal["remove", "exited"]


@dataclass(frozen=True, slots=True)
class FoundService:
    """One of this manager's service containers, as listed."""

    worker_id: str
    name: str
    state: str
    exit_code: int | None


_EXITED = re.compile(r"^Exited \((\d+)\)")


def exit_code_of(status: str) -> int | None:
    """The exit code in a listing's ``Status`` (``Exited (1) 3 seconds ago``)."""
    match = _EXITED.match(status)
    return int(match.group(1)) if match else None


def service_steps(
    found: Sequence[FoundService],
    records: Mapping[str, WorkerRecord | None],
    busy: Collection[str],
) -> list[tuple[FoundService, ServiceStep]]:
    """What to do with each service container: a STARTING worker's are its create's (which
    replaces a stopped one), a RUNNING worker's running ones are in order."""
    steps: list[tuple[FoundService, ServiceStep]] = []
    for service in found:
        if service.worker_id in busy:
            continue
        record = records.get(service.worker_id)
        if record is None or not record.is_live:
            steps.append((service, "remove"))
        elif record.status is WorkerStatus.RUNNING and service.state in ("exited", "dead"):
            steps.append((service, "exited"))
    return steps


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        store: WorkerStore,
        docker: DockerClient,
        containers: ContainerRuntime,
        provisioner: Provisioner,
        lifecycle: Lifecycle,
        acl: WorkerAcl,
        ensure_groups: EnsureGroups,
        containment: Containment,
        *,
        services: ServiceRuntime | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._docker = docker
        self._containers = containers
        self._provisioner = provisioner
        self._lifecycle = lifecycle
        self._acl = acl
        self._ensure_groups = ensure_groups
        self._containment = containment
        self._services = services
        self._lock = asyncio.Lock()
        self.runs = 0
        #: The newest pass that changed something (what an operator or a test asks after).
        self.last_change: Report | None = None

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
            self.last_change = report
            log.info(
                "reconciled Redis with Docker",
                adopted=len(report.adopted),
                resumed=report.resumed,
                ended=report.ended,
                lost=report.lost,
                removed=report.removed,
                fenced=report.fenced,
                orphans=report.orphans,
                users_restored=len(report.users_restored),
                grants_revoked=len(report.grants_revoked),
                volumes_removed=report.volumes_removed,
                services_removed=report.services_removed,
            )
        return report

    async def _reconcile(self) -> Report:
        # Records first, containers second: a container that appears in between is one whose
        # record already exists, never a false orphan.
        live = set(await self._store.live_ids())
        found: dict[str, Found] = {}
        for c in await self._containers.find_all():
            labels = c.get("Labels") or {}
            worker_id = str(labels.get(LABEL_WORKER, ""))
            if worker_id:
                found[worker_id] = Found(
                    worker_id, str(c.get("Id", "")), str(c.get("State", "")), LABEL_POOL in labels
                )
        records = await self._store.get_many(sorted(live | set(found)))
        busy = {w for w in live | set(found) if self._provisioner.is_active(w)}
        report = Report()
        for worker_id, step in reconcile_steps(live, found, records, busy):
            await self._carry_out(worker_id, step, report)
        await self._sweep_services(report)
        await self._sweep_grants(live | set(found), report)
        # A suspended worker has no container, and its volumes are all it has.
        suspended = set(await self._store.suspended_ids())
        await self._sweep_volumes(live | set(found) | suspended, report)
        await self._sweep_mirrors(live | suspended, report)
        return report

    async def _sweep_services(self, report: Report) -> None:
        """Service containers left by a teardown cut short are removed; one that exited unseen
        while its worker ran is reported (``service_exits``)."""
        if self._services is None:
            return
        found = [
            FoundService(
                str(labels.get(LABEL_SERVICE_OF, "")),
                str(labels.get(LABEL_SERVICE, "")),
                str(c.get("State", "")),
                exit_code_of(str(c.get("Status", ""))),
            )
            for c in await self._services.listed()
            if (labels := c.get("Labels") or {}).get(LABEL_SERVICE_OF)
        ]
        if not found:
            return
        ids = sorted({s.worker_id for s in found})
        records = await self._store.get_many(ids)
        busy = {w for w in ids if self._provisioner.is_active(w)}
        for service, step in service_steps(found, records, busy):
            if step == "remove":
                if service.worker_id not in report.services_removed:
                    await self._services.remove(service.worker_id)
                    report.services_removed.append(service.worker_id)
            else:
                await service_ended(self._store, service.worker_id, service.name, service.exit_code)

    async def _sweep_volumes(self, known: set[str], report: Report) -> None:
        """Remove this manager's worker volumes whose worker is neither live nor has a
        container here (a teardown cut short). A volume younger than a minute may belong to a
        container being created right now."""
        now = time.time()
        for volume in await self._containers.listed_volumes():
            worker_id = str((volume.get("Labels") or {}).get(LABEL_WORKER, ""))
            if not worker_id or worker_id in known or self._provisioner.is_active(worker_id):
                continue
            created = unix_or_none(str(volume.get("CreatedAt", "")))
            if created is None or now - created < 60:
                continue
            await self._containers.remove_volumes(worker_id)
            if worker_id not in report.volumes_removed:
                report.volumes_removed.append(worker_id)

    async def _sweep_grants(self, known: set[str], report: Report) -> None:
        """Revoke egress grants of this key prefix whose worker is neither live nor has a
        container here (a teardown cut short): their sockets and gateway token go. A grant
        younger than a minute may belong to a container being created right now."""
        if not self._containment.enabled:
            return
        for grant in await self._containment.client.grants():
            owner = grant.owner or grant.worker_id
            if grant.key_prefix != self._settings.keys.prefix or owner in known:
                continue
            if grant.worker_id.startswith(BUILD_GRANT_PREFIX):
                continue  # an image build's, removed with its build (or its sweep at start)
            if grant.age_seconds < 60 or self._provisioner.is_active(owner):
                continue
            await self._containment.release(grant.worker_id)
            report.grants_revoked.append(grant.worker_id)

    async def _sweep_mirrors(self, owners: set[str], report: Report) -> None:
        """Remove repository mirrors no live or suspended worker of this manager refers to and
        no checkout used within the workspace retention (their ``mirror-used`` key expired)."""
        mirrors = await docker_client.call(self._containers.volumes.mirrors)
        if not mirrors:
            return
        records = await self._store.get_many(sorted(owners))
        referred = {r.text("mirror") for r in records.values() if r is not None}
        for mirror in mirrors:
            name = str(mirror.get("Name", ""))
            if not name or name in referred:
                continue
            if await self._store.exists(self._settings.keys.mirror_used(name)):
                continue
            await docker_client.call(self._containers.volumes.remove_mirror, name)
            report.volumes_removed.append(name)

    async def _carry_out(self, worker_id: str, step: Step, report: Report) -> None:
        if self._provisioner.is_active(worker_id):
            return  # a create started here since the listing
        if step in ("resume_if_absent", "lost_if_absent") and await self._inspect(worker_id):
            return  # created since we listed: next round
        if step in ("resume", "resume_if_absent"):
            self._provisioner.start(worker_id)
            report.resumed.append(worker_id)
        elif step == "orphan":
            await self._lifecycle.finish(worker_id)
            report.orphans.append(worker_id)
        elif step == "finish":
            await self._lifecycle.finish(worker_id)
            fenced = parse_end_reason(await self._store.field(worker_id, "reason") or "")
            (report.fenced if fenced is Ended.HOST_LOST else report.removed).append(worker_id)
            if fenced is Ended.HOST_LOST:
                log.warning(
                    "fenced: the other managers judged this worker lost with its host while "
                    "this manager was away; its container and Redis user are removed",
                    worker_id=worker_id,
                )
        elif step == "sleep":
            await self._lifecycle.put_to_sleep(worker_id)
            report.removed.append(worker_id)
        elif step == "ended_unseen":
            if await self._lifecycle.end(
                worker_id,
                await self._ended_outcome(worker_id),
                wait=True,
                by="reconciler (its container had ended unseen)",
            ):
                report.ended.append(worker_id)
        elif step == "lost_if_absent":
            if await self._lifecycle.end(worker_id, Outcome(Ended.CONTAINER_LOST), wait=True):
                report.lost.append(worker_id)
        else:  # adopt
            if await self._restore_user(worker_id):
                report.users_restored.append(worker_id)
            report.adopted.append(worker_id)

    async def _restore_user(self, worker_id: str) -> bool:
        """Re-create the worker's Redis user if Redis lost it; True when it had to."""
        if not self._acl.enabled or await self._acl.exists(worker_id):
            return False
        await self._acl.create(worker_id)
        return True

    async def _ended_outcome(self, worker_id: str) -> Outcome:
        """The container ended while no events were read (the manager was down)."""
        state = ((await self._inspect(worker_id)) or {}).get("State") or {}
        return outcome_of(int(state.get("ExitCode", 0) or 0), bool(state.get("OOMKilled")))

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
            restored += await self._restore_user(worker_id)
        log.info("state restored after a Redis restart", users_restored=restored)
