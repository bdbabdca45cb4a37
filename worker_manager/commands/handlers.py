"""What each command does (SPEC §1–§3). Reads answer from Redis alone; a create is answered as
soon as it is accepted and provisioned in the background; a delete answers once the container is
gone. Handlers raise :class:`CommandError` for answers with ``ok=false``.
"""

from __future__ import annotations

import json
import uuid

from worker_manager.commands.forks import Forks
from worker_manager.commands.routing import Router
from worker_manager.contract.commands import (
    CreateCommand,
    DeleteCommand,
    GrantCommand,
    ListCommand,
    ResumeCommand,
    SuspendCommand,
    TeamPostCommand,
    format_cursor,
)
from worker_manager.contract.create_spec import spec_of
from worker_manager.contract.kinds import ENDABLE_STATUSES, Module, Shape, WorkerStatus
from worker_manager.contract.reasons import Ended
from worker_manager.contract.reply import Reply
from worker_manager.core.errors import CommandError, ErrorCode, InvalidCommand
from worker_manager.core.logs import get_logger
from worker_manager.environments import catalogue
from worker_manager.services.plan import STARTING as SERVICE_STARTING
from worker_manager.services.resolve import resolve as resolve_services
from worker_manager.settings import Settings
from worker_manager.teams.board import TeamBoards
from worker_manager.tenants.quotas import Quotas
from worker_manager.workers.resources.grants import WorkerGrants
from worker_manager.workers.resources.pool import WarmPool
from worker_manager.workers.state.records import CreateResult, Limit, WorkerStore
from worker_manager.workers.transitions.lifecycle import Lifecycle, Outcome
from worker_manager.workers.transitions.provisioner import Provisioner
from worker_manager.workers.transitions.sleep import Sleep

#: worker ids the manager chooses derive from the request id, so a create delivered twice (or
#: resumed after a crash) names the same worker instead of starting a second one.
log = get_logger(__name__)

WORKER_ID_NAMESPACE = uuid.UUID("6f1c2a4e-5b8d-4e0f-9a7c-3d2b1e0f4a59")


class Handlers:
    def __init__(
        self,
        settings: Settings,
        store: WorkerStore,
        provisioner: Provisioner,
        lifecycle: Lifecycle,
        router: Router | None = None,
        pool: WarmPool | None = None,
        sleep: Sleep | None = None,
        forks: Forks | None = None,
        grants: WorkerGrants | None = None,
        teams: TeamBoards | None = None,
        quotas: Quotas | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._provisioner = provisioner
        self._lifecycle = lifecycle
        self._router = router
        self._pool = pool
        self._sleep = sleep
        #: fork, snapshots and creates from them (SPEC §10).
        self._forks = forks
        #: Credentials for one worker (SPEC §11).
        self._grants = grants
        #: Teams' boards (SPEC §12).
        self._teams = teams
        #: The tenant's quotas (SPEC §11); None in the default namespace.
        self._quotas = quotas

    @property
    def forks(self) -> Forks:
        if self._forks is None:
            raise CommandError(ErrorCode.INTERNAL, "this manager does not fork")
        return self._forks

    async def create(self, cmd: CreateCommand) -> Reply:
        problem = self._provisioner.install_problem(cmd.agent_type)
        if problem is not None:
            raise CommandError(ErrorCode.BUILD_FAILED, problem)
        if self._quotas is not None:
            await self._quotas.check_budget()
        started_from: dict[str, str] = {}
        if cmd.from_snapshot is not None:
            # Its shape, workspace and session from the snapshot (SPEC §10), the rest its own.
            cmd, started_from = await self.forks.from_snapshot(cmd)
        # Resolved by the dispatcher already (refusals are dead-lettered there); a no-op then.
        docker = await self._provisioner.docker_problem(cmd.modules)
        if docker is not None:
            raise InvalidCommand(f"field 'modules': DOCKER: {docker}", field="modules")
        environment = catalogue.resolve(cmd.environment, self._settings)
        services = resolve_services(cmd.services, self._settings, cmd.modules)
        # A catalogue environment is part of the pool's shape (``CLAUDE@node20``); an ad hoc
        # spec is in no pool.
        name = environment.name if environment is not None else None
        shape = Shape(cmd.agent_type, tuple(cmd.modules), name)
        adhoc = environment is not None and name is None
        # A create that names its own worker takes the ordinary path; otherwise a ready pooled
        # worker of its shape, if this manager keeps one (the same one on a redelivery).
        pooled = None
        # A pooled container has no services (nor Docker Engine) beside it.
        alone = not services and not (
            Module.DOCKER in cmd.modules and self._settings.docker_module == "rootless"
        )
        alone = alone and cmd.from_snapshot is None
        if cmd.worker_id is None and self._pool is not None and not adhoc and alone:
            pooled = await self._pool.take(shape, cmd.request_id)
        worker_id = cmd.worker_id or pooled or await self._derived_id(cmd.request_id)
        # The grant as granted: the create's, or this deployment's default when it names none
        # (an explicit [] grants nothing). Kept in the spec too, so the container enforces
        # what the record shows even if another manager, with another default, starts it.
        egress = cmd.egress if cmd.egress is not None else list(self._settings.egress_default)
        spec = spec_of(cmd, egress, environment, services)
        owner = cmd.metadata.get("owner", "")
        fields = {
            "agent_type": cmd.agent_type.value,
            "modules": json.dumps([m.value for m in cmd.modules]),
            "metadata": json.dumps(cmd.metadata, separators=(",", ":")),
            "egress": json.dumps(egress, separators=(",", ":")),
        }
        if environment is not None:
            fields["environment"] = environment.label
        if cmd.team is not None:
            fields["team"] = cmd.team
        fields.update(started_from)
        copied = False
        if cmd.from_snapshot is not None and await self._store.get(worker_id) is None:
            await self.forks.copy_snapshot(cmd.from_snapshot, worker_id)
            copied = True
        if services:
            fields["services"] = json.dumps(
                {service.name: SERVICE_STARTING for service in services}, separators=(",", ":")
            )
        if pooled is not None:
            fields["pool"] = str(shape)
        if cmd.idle_timeout_seconds is not None:
            # The operator's maximum caps what a caller may ask for.
            capped = min(cmd.idle_timeout_seconds, self._settings.max_idle_timeout_seconds)
            fields["idle_timeout_seconds"] = f"{capped:g}"
        outcome = await self._store.create(
            worker_id,
            request_id=cmd.request_id,
            fields=fields,
            spec=spec,
            prompt=cmd.prompt,
            max_live=self._settings.max_workers,
            owner=owner,
            max_per_owner=self._settings.max_workers_per_owner,
        )
        if copied and outcome.result is not CreateResult.CREATED:
            await self.forks.drop_volumes(worker_id)
        full = outcome.result is CreateResult.CAPACITY
        if full and pooled is not None and self._pool is not None:
            await self._pool.give_back(shape, pooled, cmd.request_id)
        if full and outcome.limit is Limit.TENANT and self._quotas is not None:
            raise self._quotas.workers_refused()
        if full:
            if outcome.limit is Limit.OWNER:
                message = (
                    f"owner {owner!r} already has its maximum of "
                    f"{self._settings.max_workers_per_owner} live workers; "
                    "delete one or retry later"
                )
            else:
                message = (
                    f"this manager runs its maximum of {self._settings.max_workers} live workers; "
                    "delete one or retry later"
                )
            raise CommandError(
                ErrorCode.CAPACITY_EXCEEDED,
                message,
                retry_after=self._settings.capacity_retry_after_seconds,
            )
        if outcome.result is CreateResult.ELSEWHERE:
            raise CommandError(
                ErrorCode.CONFLICT,
                f"worker id {worker_id} is taken; choose another worker_id or omit it",
            )
        if outcome.result is CreateResult.EXISTS and outcome.request_id != cmd.request_id:
            raise CommandError(
                ErrorCode.CONFLICT,
                f"worker {worker_id} already exists (created by another request); "
                "choose another worker_id or omit it",
            )
        if outcome.status is WorkerStatus.STARTING:
            self._provisioner.start(worker_id)
        return Reply(
            request_id=cmd.request_id,
            command="create",
            ok=True,
            worker_id=worker_id,
            status=outcome.status.value if outcome.status is not None else None,
        )

    async def _derived_id(self, request_id: str) -> str:
        """The id of a create that names none: the same for every delivery of one request
        (on any manager), from its ``request_id`` and, in a tenant, the tenant's salt."""
        return str(uuid.uuid5(WORKER_ID_NAMESPACE, await self._store.id_seed(request_id)))

    async def delete(self, cmd: DeleteCommand, *, producer: str | None = None) -> Reply:
        """``producer``: the registered producer whose stream it came on (for the evidence)."""
        record = await self._store.get(cmd.worker_id)
        if record is None:
            raise not_found(cmd.worker_id)
        owner = record.manager_id or self._settings.manager_id
        here = owner == self._settings.manager_id
        if not here and self._router is not None:
            # Its container lives on another manager's host: that manager must remove it.
            answer = await self._router.forward(cmd, owner)
            if answer is not None:
                return answer
        if not here:
            log.warning(
                "owning manager is gone: worker deleted in Redis, its container is removed when "
                "the manager returns",
                worker_id=cmd.worker_id,
                owner=owner,
            )
        await self._lifecycle.end(
            cmd.worker_id,
            Outcome(Ended.DELETED),
            allowed_from=ENDABLE_STATUSES,
            wait=True,
            on_this_host=here,
            by=f"delete request {cmd.request_id}"
            + (f" from producer {producer}" if producer else ""),
        )
        record = await self._store.get(cmd.worker_id)
        status = record.status if record is not None else None
        return Reply(
            request_id=cmd.request_id,
            command="delete",
            ok=True,
            worker_id=cmd.worker_id,
            status=status or WorkerStatus.STOPPED.value,
        )

    async def suspend(self, cmd: SuspendCommand) -> Reply:
        return await self._sleep_command(cmd)

    async def resume(self, cmd: ResumeCommand) -> Reply:
        return await self._sleep_command(cmd)

    async def _sleep_command(self, cmd: SuspendCommand | ResumeCommand) -> Reply:
        """Suspend or resume, by the manager whose host holds the worker's container and
        volumes (forwarded there from any other)."""
        record = await self._store.get(cmd.worker_id)
        if record is None:
            raise not_found(cmd.worker_id)
        owner = record.manager_id or self._settings.manager_id
        if owner != self._settings.manager_id:
            answer = await self._router.forward(cmd, owner) if self._router else None
            if answer is not None:
                return answer
            raise CommandError(
                ErrorCode.CONFLICT,
                f"worker {cmd.worker_id} belongs to manager {owner}, which is gone: its "
                "volumes are on that manager's host",
            )
        assert self._sleep is not None, "the manager wires its sleep"
        if isinstance(cmd, SuspendCommand):
            await self._sleep.suspend_or_refuse(cmd.worker_id)
        else:
            suspended = record.status is WorkerStatus.SUSPENDED
            if self._quotas is not None and suspended:  # a resume spends as a create does
                await self._quotas.check_budget()
            await self._sleep.resume_or_refuse(cmd.worker_id)
        record = await self._store.get(cmd.worker_id)
        return Reply(
            request_id=cmd.request_id,
            command=cmd.command,
            ok=True,
            worker_id=cmd.worker_id,
            status=record.text("status") if record is not None else None,
        )

    async def team_post(self, cmd: TeamPostCommand) -> Reply:
        """A post from outside to a team's board, with ``producer`` as its sender (SPEC §12).
        A team with no worker yet may be briefed before they start; its board then expires like
        that of a team whose workers have all ended."""
        if self._teams is None:
            raise CommandError(ErrorCode.INTERNAL, "this manager keeps no team boards")
        entry_id = await self._teams.post(cmd.team, cmd.content)
        return Reply(request_id=cmd.request_id, command="team_post", ok=True, entry_id=entry_id)

    async def grant(self, cmd: GrantCommand) -> Reply:
        """A credential for one live or suspended worker (SPEC §11); Redis enforces it."""
        record = await self._store.get(cmd.worker_id)
        if record is None:
            raise not_found(cmd.worker_id)
        if not (record.is_live or record.status is WorkerStatus.SUSPENDED):
            raise CommandError(
                ErrorCode.CONFLICT,
                f"worker {cmd.worker_id} is {record.text('status')}: only a live or suspended "
                "worker is granted",
            )
        if self._grants is None:
            raise CommandError(ErrorCode.INTERNAL, "this manager mints no grants")
        minted = await self._grants.mint(cmd.worker_id, cmd.access, cmd.ttl_seconds)
        return Reply(
            request_id=cmd.request_id,
            command="grant",
            ok=True,
            worker_id=cmd.worker_id,
            username=minted.username,
            password=minted.password,
            expires_at=minted.expires_iso,
        )

    async def list_workers(self, cmd: ListCommand) -> Reply:
        records, after = await self._store.list_page(cmd.position, cmd.limit)
        return Reply(
            request_id=cmd.request_id,
            command="list",
            ok=True,
            workers=[record.public() for record in records],
            next_cursor=format_cursor(after) if after is not None else None,
        )


def not_found(worker_id: str) -> CommandError:
    """The error of a command naming a worker without a record (a status answered inside
    Redis says the same: ``ReplyBook.answer_status``)."""
    return CommandError(
        ErrorCode.NOT_FOUND,
        f"no worker {worker_id}: it never existed or its record expired after it stopped",
    )
