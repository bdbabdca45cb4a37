"""``fork``, ``snapshot``, ``list_snapshots``, ``delete_snapshot`` and a create's
``from_snapshot`` (SPEC §10), carried out against Redis and the Engine.

What may be copied and what a copy is are decided in ``snapshots.plan``; the volumes are copied
by ``snapshots.copies``; here the steps meet the records:

* **fork**: the source must be RUNNING between inputs or SUSPENDED (else ``conflict``); room for
  every copy first (else ``capacity_exceeded``, nothing made); its home and workspace copied
  into each copy's volumes in one container; the source checked again (an input that came
  meanwhile may have torn the copy: the copies are removed, ``conflict``); then each copy's
  record and spec, and its start, like a create whose repository is already checked out;
* **snapshot**: the same copy into volumes of the snapshot's own, and its record;
* **a create from a snapshot**: the snapshot's saved create overlaid with the create's own
  fields, its volumes copied into the new worker's before its record is written.

A worker's volumes are on its manager's host: a fork or snapshot of another manager's worker is
forwarded there (``commands.routing``), as is nothing else: snapshots of this host are used here.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from redis.asyncio import Redis

from worker_manager.commands.routing import Router
from worker_manager.contract.commands import (
    CreateCommand,
    DeleteSnapshotCommand,
    ForkCommand,
    ListSnapshotsCommand,
    SnapshotCommand,
)
from worker_manager.contract.create_spec import load_spec
from worker_manager.contract.kinds import WorkerStatus
from worker_manager.contract.labels import LABEL_MANAGER, LABEL_PREFIX, LABEL_SNAPSHOT
from worker_manager.contract.reasons import Ended
from worker_manager.contract.record import WorkerRecord
from worker_manager.contract.reply import Reply
from worker_manager.core import docker_client
from worker_manager.core.clock import iso_now
from worker_manager.core.errors import CommandError, ErrorCode, InvalidCommand
from worker_manager.core.logs import get_logger
from worker_manager.settings import Settings
from worker_manager.snapshots import plan
from worker_manager.snapshots.copies import CopyFailed, StateCopier, Target, Volume
from worker_manager.snapshots.store import Snapshot, SnapshotStore
from worker_manager.tenants.quotas import Quotas
from worker_manager.workers.state.records import CreateResult, Limit, WorkerStore
from worker_manager.workers.transitions.lifecycle import Lifecycle, Outcome
from worker_manager.workers.transitions.provisioner import Provisioner
from worker_manager.workspaces.volumes import WorkerVolumes

log = get_logger(__name__)

#: How long a source that looks busy is watched for the acknowledgement of its last input.
ACK_GRACE_SECONDS = 2.0


class Forks:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        store: WorkerStore,
        snapshots: SnapshotStore,
        copier: StateCopier,
        volumes: WorkerVolumes,
        provisioner: Provisioner,
        lifecycle: Lifecycle,
        router: Router | None = None,
        quotas: Quotas | None = None,
    ) -> None:
        """``quotas``: the tenant's (SPEC §11): a fork's copies count as its creates do."""
        self._quotas = quotas
        self._settings = settings
        self._redis = redis
        self._store = store
        self.snapshots = snapshots
        self._copier = copier
        self._volumes = volumes
        self._provisioner = provisioner
        self._lifecycle = lifecycle
        self._router = router

    # --- the source -----------------------------------------------------------------------
    async def _idle(self, worker_id: str) -> bool:
        """Nothing in the wrapper's hands: no input unacknowledged, none waiting."""
        key = self._settings.keys.input(worker_id)
        try:
            groups = await self._redis.xinfo_groups(key)
        except Exception:  # no stream yet: it never had an input
            return True
        last = await self._redis.xrevrange(key, count=1)
        return plan.idle_inputs(groups, last[0][0] if last else None)

    async def _settled(self, worker_id: str) -> bool:
        """Idle, or idle within :data:`ACK_GRACE_SECONDS`: the wrapper acknowledges an input
        just after its ``done`` is written, so "retry after its done" holds at once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ACK_GRACE_SECONDS
        while not await self._idle(worker_id):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def _source(self, worker_id: str) -> WorkerRecord:
        record = await self._store.get(worker_id)
        if record is None:
            raise CommandError(ErrorCode.NOT_FOUND, f"no worker {worker_id}")
        busy = record.status is WorkerStatus.RUNNING and not await self._settled(worker_id)
        problem = plan.copy_problem(record.status, busy)
        if problem is not None:
            raise CommandError(ErrorCode.CONFLICT, f"worker {worker_id} {problem}")
        return record

    async def _still_idle(self, record: WorkerRecord) -> bool:
        if record.status is not WorkerStatus.RUNNING:
            now = await self._store.get(record.worker_id)
            return now is not None and now.status is record.status
        return await self._idle(record.worker_id)

    def _source_volumes(self, worker_id: str) -> tuple[str, str]:
        return self._volumes.name(worker_id, "home"), self._volumes.name(worker_id, "workspace")

    def _worker_target(self, worker_id: str) -> Target:
        return Target(
            home=Volume(
                self._volumes.name(worker_id, "home"), self._volumes.labels(worker_id, "home")
            ),
            workspace=Volume(
                self._volumes.name(worker_id, "workspace"),
                self._volumes.labels(worker_id, "workspace"),
            ),
        )

    async def _forward(self, cmd: ForkCommand | SnapshotCommand, owner: str) -> Reply:
        extra = (
            {
                "count": str(cmd.count),
                **({"worker_ids": _json(cmd.worker_ids)} if cmd.worker_ids else {}),
            }
            if isinstance(cmd, ForkCommand)
            else {"name": cmd.name}
        )
        answer = await self._router.forward(cmd, owner, extra) if self._router else None
        if answer is not None:
            return answer
        raise CommandError(
            ErrorCode.CONFLICT,
            f"worker {cmd.worker_id} belongs to manager {owner}, which is gone: its volumes are "
            "on that manager's host",
        )

    # --- fork -----------------------------------------------------------------------------
    async def fork(self, cmd: ForkCommand) -> Reply:
        record = await self._store.get(cmd.worker_id)
        owner = record.manager_id if record is not None else ""
        if record is not None and owner and owner != self._settings.manager_id:
            return await self._forward(cmd, owner)
        ids = plan.copy_ids(await self._store.id_seed(cmd.request_id), cmd.count, cmd.worker_ids)
        done = await self._store.get_many(ids)
        if all(r is not None and r.text("forked_from") == cmd.worker_id for r in done.values()):
            return self._fork_reply(cmd, ids)  # a redelivery of a fork that was carried out
        record = await self._source(cmd.worker_id)
        spec = await self._store.spec(cmd.worker_id)
        if spec is None:
            raise CommandError(ErrorCode.NOT_FOUND, f"worker {cmd.worker_id} has no saved create")
        if self._quotas is not None:
            await self._quotas.check_budget()
        free = self._settings.max_workers - await self._store.host_live()
        if cmd.count > free:
            raise CommandError(
                ErrorCode.CAPACITY_EXCEEDED,
                f"a fork into {cmd.count} copies needs {cmd.count} free slots; this manager has "
                f"{max(free, 0)} (WM_MAX_WORKERS={self._settings.max_workers}); none was made",
                retry_after=self._settings.capacity_retry_after_seconds,
            )
        targets = [self._worker_target(worker_id) for worker_id in ids]
        started = time.monotonic()
        await self._copy(self._source_volumes(cmd.worker_id), targets, cmd.worker_id)
        if not await self._still_idle(record):
            await self._drop(targets)
            raise CommandError(
                ErrorCode.CONFLICT,
                f"worker {cmd.worker_id} took an input while it was copied: retry after its done",
            )
        budget = plan.budget_left(spec.get("max_cost_usd"), record.cost_usd)
        made: list[str] = []
        for i, worker_id in enumerate(ids):
            outcome = await self._store.create(
                worker_id,
                request_id=f"{cmd.request_id}.{i}",
                fields=plan.copy_fields(record, forked_from=cmd.worker_id),
                spec=plan.copy_spec(spec, worker_id, f"{cmd.request_id}.{i}", budget),
                prompt=None,
                max_live=self._settings.max_workers,
            )
            if outcome.result is not CreateResult.CREATED:
                for created in made:
                    await self._lifecycle.end(
                        created, Outcome(Ended.DELETED), wait=True, by="a fork cut short"
                    )
                await self._drop(targets)
                if outcome.limit is Limit.TENANT and self._quotas is not None:
                    raise self._quotas.workers_refused()
                raise CommandError(
                    ErrorCode.CAPACITY_EXCEEDED
                    if outcome.result is CreateResult.CAPACITY
                    else ErrorCode.CONFLICT,
                    f"copy {worker_id} could not be made ({outcome.result.value}); none was made",
                )
            made.append(worker_id)
        for worker_id in made:
            self._provisioner.start(worker_id)
        log.info(
            "worker forked",
            worker_id=cmd.worker_id,
            copies=len(made),
            seconds=round(time.monotonic() - started, 2),
        )
        return self._fork_reply(cmd, ids)

    def _fork_reply(self, cmd: ForkCommand, ids: list[str]) -> Reply:
        return Reply(
            request_id=cmd.request_id,
            command="fork",
            ok=True,
            worker_id=cmd.worker_id,
            worker_ids=ids,
        )

    async def _copy(
        self, source: tuple[str, str], targets: list[Target], forked_from: str | None
    ) -> int:
        try:
            return await docker_client.call(
                self._copier.copy, source, targets, forked_from=forked_from
            )
        except CopyFailed as exc:
            raise CommandError(ErrorCode.INTERNAL, f"the copy failed: {exc}") from None

    async def drop_volumes(self, worker_id: str) -> None:
        """A worker's copied volumes, when its create did not happen after all."""
        await self._drop([self._worker_target(worker_id)])

    async def _drop(self, targets: list[Target]) -> None:
        for target in targets:
            for volume in (target.home, target.workspace):
                await docker_client.call(self._copier.remove_volume, volume.name)

    # --- snapshots ------------------------------------------------------------------------
    def _snapshot_target(self, name: str) -> Target:
        def volume(part: str) -> Volume:
            return Volume(
                self._settings.keys.snapshot_volume(name, part),
                {
                    LABEL_SNAPSHOT: name,
                    LABEL_MANAGER: self._settings.manager_id,
                    LABEL_PREFIX: self._settings.keys.prefix,
                },
            )

        return Target(home=volume("home"), workspace=volume("workspace"))

    async def snapshot(self, cmd: SnapshotCommand) -> Reply:
        record = await self._store.get(cmd.worker_id)
        owner = record.manager_id if record is not None else ""
        if record is not None and owner and owner != self._settings.manager_id:
            return await self._forward(cmd, owner)
        existing = await self.snapshots.get(cmd.name)
        if existing is not None:
            # The same request carried out again (a crash after the save): the same answer.
            replayed = existing.spec.get("snapshot_request_id") == cmd.request_id
            if existing.worker_id == cmd.worker_id and replayed:
                return self._snapshot_reply(cmd, existing)
            raise CommandError(
                ErrorCode.CONFLICT, f"a snapshot named {cmd.name!r} exists; delete it first"
            )
        record = await self._source(cmd.worker_id)
        spec = await self._store.spec(cmd.worker_id)
        if spec is None:
            raise CommandError(ErrorCode.NOT_FOUND, f"worker {cmd.worker_id} has no saved create")
        target = self._snapshot_target(cmd.name)
        size = await self._copy(self._source_volumes(cmd.worker_id), [target], None)
        if not await self._still_idle(record):
            await self._drop([target])
            raise CommandError(
                ErrorCode.CONFLICT,
                f"worker {cmd.worker_id} took an input while it was copied: retry after its done",
            )
        snapshot = Snapshot(
            name=cmd.name,
            worker_id=cmd.worker_id,
            agent_type=record.text("agent_type"),
            manager_id=self._settings.manager_id,
            created_at=iso_now(),
            last_used_at="",
            size_bytes=size,
            image_hash=record.text("image_hash"),
            spec={**spec, "snapshot_request_id": cmd.request_id},
            fields=plan.copy_fields(record),
        )
        if not await self.snapshots.save(snapshot):
            await self._drop([target])
            raise CommandError(
                ErrorCode.CONFLICT, f"a snapshot named {cmd.name!r} exists; delete it first"
            )
        log.info("snapshot taken", worker_id=cmd.worker_id, name=cmd.name, size_bytes=size)
        return self._snapshot_reply(cmd, snapshot)

    def _snapshot_reply(self, cmd: SnapshotCommand, snapshot: Snapshot) -> Reply:
        return Reply(
            request_id=cmd.request_id,
            command="snapshot",
            ok=True,
            worker_id=cmd.worker_id,
            snapshot=snapshot.public(),
        )

    async def list_snapshots(self, cmd: ListSnapshotsCommand) -> Reply:
        found = await self.snapshots.all()
        hosts = {s.manager_id for s in found}
        live = {m for m in hosts if await self._redis.exists(self._settings.keys.manager(m))}
        # A snapshot lives on its host: one whose manager is gone went with it (or comes back).
        return Reply(
            request_id=cmd.request_id,
            command="list_snapshots",
            ok=True,
            snapshots=[{**s.public(), "host_live": s.manager_id in live} for s in found],
        )

    async def delete_snapshot(self, cmd: DeleteSnapshotCommand) -> Reply:
        snapshot = await self.snapshots.get(cmd.name)
        if snapshot is None:
            raise CommandError(ErrorCode.NOT_FOUND, f"no snapshot named {cmd.name!r}")
        if snapshot.manager_id != self._settings.manager_id:
            raise CommandError(
                ErrorCode.CONFLICT,
                f"snapshot {cmd.name!r} is on manager {snapshot.manager_id}'s host: delete it "
                "through that manager's stream",
            )
        await self.remove(snapshot)
        return Reply(request_id=cmd.request_id, command="delete_snapshot", ok=True)

    async def remove(self, snapshot: Snapshot) -> None:
        """Its record first (nothing starts from it any more), then its volumes."""
        await self.snapshots.delete(snapshot.name)
        await self._drop([self._snapshot_target(snapshot.name)])
        log.info("snapshot removed", name=snapshot.name)

    # --- a create from a snapshot -----------------------------------------------------------
    async def from_snapshot(self, cmd: CreateCommand) -> tuple[CreateCommand, dict[str, str]]:
        """The create as it starts from its snapshot (the snapshot's saved create, overlaid with
        the create's own fields), and the record fields it starts with."""
        assert cmd.from_snapshot is not None
        snapshot = await self.snapshots.get(cmd.from_snapshot)
        if snapshot is None:
            raise CommandError(ErrorCode.NOT_FOUND, f"no snapshot named {cmd.from_snapshot!r}")
        if snapshot.agent_type != cmd.agent_type.value:
            raise InvalidCommand(
                f"field 'agent_type': snapshot {snapshot.name!r} is of a {snapshot.agent_type} "
                f"worker, not {cmd.agent_type.value}",
                field="agent_type",
            )
        if snapshot.manager_id != self._settings.manager_id:
            # A live host's manager is handed the create (``commands.dispatcher``): this one's
            # is gone, and the snapshot's volumes with it, unless it comes back.
            raise CommandError(
                ErrorCode.CONFLICT,
                f"snapshot {snapshot.name!r} is on manager {snapshot.manager_id}'s host, which is "
                "gone: the snapshot went with it (it is back if that manager returns)",
            )
        saved = load_spec({k: v for k, v in snapshot.spec.items() if k != "snapshot_request_id"})
        own = {name: getattr(cmd, name) for name in plan.CREATE_OWN if name in cmd.model_fields_set}
        merged = saved.model_copy(
            update={
                **own,
                "request_id": cmd.request_id,
                "reply_to": cmd.reply_to,
                "worker_id": cmd.worker_id,
                "prompt": cmd.prompt,
                "from_snapshot": cmd.from_snapshot,
            }
        )
        fields = {
            k: v
            for k, v in snapshot.fields.items()
            if k in ("workspace_base", "mirror", "repository_url")
        }
        fields["snapshot"] = snapshot.name
        return merged, fields

    async def copy_snapshot(self, name: str, worker_id: str) -> None:
        """Its volumes into the new worker's, before the worker's record is written."""
        snapshot = await self.snapshots.get(name)
        if snapshot is None:
            raise CommandError(ErrorCode.NOT_FOUND, f"no snapshot named {name!r}")
        target = self._snapshot_target(name)
        await self._copy(
            (target.home.name, target.workspace.name),
            [self._worker_target(worker_id)],
            snapshot.worker_id,
        )
        await self.snapshots.touch(name, time.time())


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
