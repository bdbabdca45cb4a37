"""The slow half of a create, after the reply: image, repository, Redis user, container, services.

A create is answered as soon as its record exists (status STARTING). This module then finds or
builds the image, checks the create's ``repository`` out into the worker's workspace
(``progress``: ``cloning``; ``workspaces.checkout``), creates the worker's ACL user and starts
the container (or hands a pooled one over), then its services (SPEC §9: ready before the
worker's first heartbeat counts, since its ``started_at`` is written only then). Each step is
idempotent (the image by hash, the checkout by its recorded commit, the user by name, the
container and the services by name), so a create interrupted by a crash is finished by running
it again, without a second container.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from docker.types import Mount

from worker_manager.contract.commands import CreateCommand
from worker_manager.contract.create_spec import load_spec
from worker_manager.contract.kinds import AgentType, Module
from worker_manager.contract.reasons import (
    build_failed,
    service_failed,
    start_failed,
    workspace_failed,
)
from worker_manager.core.clock import iso_from_unix, iso_now
from worker_manager.core.logs import get_logger
from worker_manager.core.outages import OUTAGE_ERRORS, ride_out
from worker_manager.docker_engine.sidecar import agent_docker_env
from worker_manager.images.build import BuildFailed
from worker_manager.images.service import ImageRef, ImageService
from worker_manager.services.engine import EngineStarter
from worker_manager.services.plan import ENGINE
from worker_manager.services.starter import (
    OnState,
    Prepared,
    ServiceFailed,
    ServiceStarter,
    ports_of,
)
from worker_manager.settings import Settings
from worker_manager.workers.resources.acl import WorkerAcl
from worker_manager.workers.resources.containers import ContainerRuntime, LaunchSpec
from worker_manager.workers.resources.containment import Containment
from worker_manager.workers.resources.environment import worker_env
from worker_manager.workers.resources.tasks import WorkerTasks
from worker_manager.workers.state.records import WorkerStore
from worker_manager.workers.transitions.create_plan import (
    CreatePlan,
    RepositoryStep,
    plan_create,
    repository_of,
)
from worker_manager.workers.transitions.lifecycle import Lifecycle, Outcome
from worker_manager.workspaces.checkout import CheckedOut, Checkout, WorkspaceFailed

log = get_logger(__name__)


class Provisioner:
    def __init__(
        self,
        settings: Settings,
        store: WorkerStore,
        images: ImageService,
        containers: ContainerRuntime,
        acl: WorkerAcl,
        lifecycle: Lifecycle,
        creates: WorkerTasks,
        containment: Containment,
        checkout: Checkout,
        *,
        services: ServiceStarter | None = None,
        engine: EngineStarter | None = None,
        on_started: Callable[[str], None] = lambda _worker_id: None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._images = images
        self._containers = containers
        self._acl = acl
        self._lifecycle = lifecycle
        #: Creates in flight in this process (shared with the lifecycle, which cancels them).
        self._creates = creates
        self._containment = containment
        self._checkout = checkout
        #: Starts a worker's services (SPEC §9).
        self._services = services
        #: Starts a ``DOCKER`` worker's own Docker Engine (``WM_DOCKER_MODULE=rootless``).
        self._engine = engine
        #: Told when a worker's container has started (the watcher then looks at once).
        self._on_started = on_started

    @property
    def in_progress(self) -> int:
        return len(self._creates)

    def is_active(self, worker_id: str) -> bool:
        """Whether this process is provisioning the worker right now."""
        return worker_id in self._creates

    def start(self, worker_id: str) -> None:
        """Provision in the background (at most once at a time per worker in this process)."""
        self._creates.start(worker_id, lambda: self._provision(worker_id))

    async def close(self) -> None:
        await self._creates.close()

    async def _provision(self, worker_id: str) -> None:
        """Every step is idempotent, so a Redis or Docker outage just means running it again."""
        try:
            await ride_out(
                lambda: self._provision_once(worker_id),
                what="provisioning",
                max_seconds=self._settings.start_timeout_seconds,
            )
        except OUTAGE_ERRORS as exc:
            # Still STARTING: the reconciler resumes it once the outage is over.
            log.warning(
                "provisioning interrupted by an outage", worker_id=worker_id, error=str(exc)
            )

    async def _provision_once(self, worker_id: str) -> None:
        bound = log.bind(worker_id=worker_id)
        try:
            spec = await self._store.spec(worker_id)
            record = await self._store.get(worker_id)
            if spec is None or record is None:
                return  # deleted (or expired) before we got here
            # Validated once, when it was accepted: loaded as saved (``contract.create_spec``).
            command = load_spec(spec)
            plan = plan_create(command, self._settings, record)
            if plan.hand_over and await self._hand_over(worker_id, command, plan):
                return
            await self._store.progress(worker_id, "finding its image")
            image = await self._images.ensure(
                plan.shape.agent_type,
                list(plan.shape.modules),
                self._reporter(worker_id),
                environment=plan.environment,
            )
            if not await self._store.update(
                worker_id, {"image": image.tag, "image_hash": image.hash}
            ):
                return
            workspace = await self._check_out(worker_id, image.tag, command, plan, shared=True)
            if workspace is None:
                return  # failed (the worker ended), or deleted meanwhile
            services = await self._prepare_services(worker_id, plan)
            engine = await self._prepare_engine(worker_id, plan)
            await self._store.progress(worker_id, "starting its container")
            if plan.own_redis_user:
                await self._acl.create(worker_id)
            sockets = await self._containment.admit(worker_id, command) if plan.contained else None
            env = self._env(worker_id, command, workspace.commit)
            if services:
                env.update(self._service_wait_env(services))
            mounts: list[Mount] = []
            if engine is not None and self._engine is not None:
                env.update(agent_docker_env())
                mounts = self._engine.worker_mounts(worker_id, self._containers.name(worker_id))
            started = await self._containers.launch(
                LaunchSpec(
                    worker_id=worker_id,
                    image_tag=image.tag,
                    image_hash=image.hash,
                    env=env,
                    mirror=workspace.mirror,
                    files=plan.files,
                    docker_socket=plan.docker_socket,
                    sockets=sockets,
                    extra_mounts=tuple(mounts),
                )
            )
            fields = {"container_id": started.container_id, "ip_address": started.ip_address}
            beside = bool(services) or engine is not None
            if not beside:
                # Its first heartbeat makes it RUNNING from now on; with services (its engine
                # among them), only once they are ready.
                fields["started_at"] = (
                    iso_from_unix(started.started_at) if started.started_at else iso_now()
                )
            await self._store.update(worker_id, fields)
            if beside:
                worker = (self._containers.name(worker_id), started.container_id)
                if engine is not None and self._engine is not None:
                    await self._store.progress(worker_id, "starting its Docker Engine")
                    await self._engine.start(
                        worker_id,
                        worker,
                        engine,
                        contained=plan.contained,
                        on_state=self._on_service_state(worker_id),
                    )
                if services:
                    await self._start_services(worker_id, started.container_id, services, plan)
                await self._store.update(worker_id, {"started_at": iso_now()})
            self._on_started(worker_id)
            record = await self._store.get(worker_id)
            if record is None or not record.is_live:
                # Deleted while we were starting it: do not leave the container behind.
                await self._lifecycle.finish(worker_id)
            bound.info("worker container started", container_id=started.container_id[:12])
        except asyncio.CancelledError:
            raise
        except OUTAGE_ERRORS:
            raise  # not the worker's fault: retried by _provision
        except ServiceFailed as exc:
            bound.warning("a service did not start", service=exc.name, error=exc.detail[:200])
            await self._lifecycle.end(worker_id, Outcome(service_failed(str(exc))), wait=True)
        except BuildFailed as exc:
            bound.warning("image build failed", error=exc.message.splitlines()[0])
            await self._lifecycle.end(worker_id, Outcome(build_failed(exc.message)), wait=True)
        except Exception as exc:
            bound.exception("provisioning failed")
            await self._lifecycle.end(
                worker_id, Outcome(start_failed(f"{type(exc).__name__}: {exc}")), wait=True
            )

    async def _prepare_services(self, worker_id: str, plan: CreatePlan) -> list[Prepared]:
        """Its services' images, found or built before its container starts."""
        if not plan.services:
            return []
        if self._services is None:
            raise ServiceFailed(plan.services[0].name, "this manager runs no services")
        await self._store.progress(worker_id, "finding its services' images")
        return await self._services.prepare(plan.services)

    async def _prepare_engine(self, worker_id: str, plan: CreatePlan) -> ImageRef | None:
        """A ``DOCKER`` worker's own engine: its image and volumes, before its container."""
        if not plan.docker_engine:
            return None
        if self._engine is None:
            raise ServiceFailed(ENGINE, "this manager runs no Docker Engines")
        await self._store.progress(worker_id, "finding its Docker Engine's image")
        return await self._engine.prepare(worker_id, self._containers.name(worker_id))

    def _on_service_state(self, worker_id: str) -> OnState:
        async def on_state(name: str, state: str) -> None:
            await self._store.service_states(worker_id, [name], state)

        return on_state

    def _service_wait_env(self, services: list[Prepared]) -> dict[str, str]:
        """What its wrapper waits for before it reads an input (``WrapperConfig``)."""
        ports = ports_of(services)
        if not ports:
            return {}
        wait = self._settings.service_start_timeout_seconds + 10
        return {
            "WM_SERVICE_PORTS": ",".join(map(str, ports)),
            "WM_SERVICE_WAIT_SECONDS": f"{wait:g}",
        }

    async def _start_services(
        self, worker_id: str, container_id: str, services: list[Prepared], plan: CreatePlan
    ) -> None:
        """The worker's services, in its network namespace, each ready (``services.starter``);
        their states in its record as they go. :class:`ServiceFailed` for one that is not."""
        assert self._services is not None
        await self._store.progress(worker_id, "starting its services")
        await self._services.start(
            worker_id,
            (self._containers.name(worker_id), container_id),
            services,
            contained=plan.contained,
            on_state=self._on_service_state(worker_id),
        )

    async def _check_out(
        self, worker_id: str, image: str, command: CreateCommand, plan: CreatePlan, *, shared: bool
    ) -> CheckedOut | None:
        """The create's repository in the worker's workspace (done once: the commit is kept in
        the record); an empty checkout without one. None when it failed (the worker is FAILED
        ``workspace_failed: <git's message>``) or the worker is gone."""
        if plan.repository is RepositoryStep.NONE:
            return plan.checked_out
        done = await self._store.get(worker_id)
        if done is None or not done.is_live:
            return None
        # Judged again on the record as it is now: a hand-over that found its container gone
        # may have checked the repository out meanwhile.
        _step, checked_out = repository_of(command, done)
        if checked_out is not None or command.repository is None:
            return checked_out
        await self._store.progress(worker_id, "cloning")
        try:
            checked = await self._checkout.run(worker_id, image, command.repository, shared=shared)
        except WorkspaceFailed as exc:
            log.warning("checkout failed", worker_id=worker_id, error=str(exc).splitlines()[-1:])
            await self._lifecycle.end(worker_id, Outcome(workspace_failed(str(exc))), wait=True)
            return None
        await self._store.update(
            worker_id,
            {
                "workspace_base": checked.commit,
                "mirror": checked.mirror or "",
                "repository_url": command.repository.url,
            },
        )
        return checked

    async def _hand_over(self, worker_id: str, command: CreateCommand, plan: CreatePlan) -> bool:
        """Give a taken warm-pool container its worker: Redis user, its repository, its
        instructions, then the assignment its wrapper waits for. False (nothing done) when the
        container is gone: the ordinary path then starts one under the same name."""
        image = await self._containers.image_of(worker_id)
        if image is None:
            log.warning("the pooled container is gone; starting one", worker_id=worker_id)
            await self._containers.remove(worker_id)
            return False
        # Its own copy of the objects: the pooled container has no mirror mounted.
        workspace = await self._check_out(worker_id, image, command, plan, shared=False)
        if workspace is None:
            return True  # the worker ended (workspace_failed) or was deleted: nothing to do
        if plan.own_redis_user:
            await self._acl.create(worker_id)
        if plan.contained:
            await self._containment.admit(worker_id, command)  # its grant replaces the pool's
        started = await self._containers.assign(
            worker_id,
            plan.files,
            self._env(worker_id, command, workspace.commit),
        )
        if started is None:
            log.warning("the pooled container is gone; starting one", worker_id=worker_id)
            await self._containers.remove(worker_id)
            return False
        image_hash = started.image_hash
        await self._store.update(
            worker_id,
            {
                "image": f"worker:{image_hash}",
                "image_hash": image_hash,
                "container_id": started.container_id,
                "ip_address": started.ip_address,
                # When it started as this worker (its container may be hours older): the
                # watcher's start timeout counts from here.
                "started_at": iso_now(),
            },
        )
        self._on_started(worker_id)  # the first heartbeat is a moment away: watch closely now
        if image_hash:
            await self._images.touch(image_hash)
        log.info("pooled worker handed over", worker_id=worker_id)
        return True

    def _reporter(self, worker_id: str) -> Callable[[int, int], None]:
        """``building N/M`` on the worker's record and output, as the build goes (in order:
        one write at a time, the latest step wins when they come faster than Redis)."""
        latest: list[str] = []
        writing: list[asyncio.Task[None]] = []

        async def write() -> None:
            while latest:
                text = latest.pop()
                latest.clear()
                try:
                    await self._store.progress(worker_id, text)
                except OUTAGE_ERRORS as exc:
                    log.debug("progress not recorded", worker_id=worker_id, error=str(exc))
            writing.clear()

        def report(step: int, steps: int) -> None:
            latest.append(f"building {step}/{steps}")
            if not writing:
                writing.append(asyncio.create_task(write(), name=f"progress-{worker_id}"))

        return report

    def _env(self, worker_id: str, command: CreateCommand, base: str = "") -> dict[str, str]:
        return worker_env(self._settings, worker_id, command, self._acl.worker_url(worker_id), base)

    async def docker_problem(self, modules: Sequence[Module]) -> str | None:
        """Why a worker with these modules cannot get what ``DOCKER`` promises here (SPEC §9: a
        sentence for its refusal), or None."""
        if Module.DOCKER not in modules:
            return None
        if self._settings.docker_module == "off":
            return "the DOCKER module is off in this deployment (WM_DOCKER_MODULE=off)"
        if self._settings.docker_module != "rootless":
            return None
        if self._engine is None:
            return "this manager runs no Docker Engines for DOCKER workers"
        return await self._engine.problem()

    def install_problem(self, agent_type: AgentType) -> str | None:
        """Why workers of this agent type cannot be built here at all (checked before a create
        is accepted), or None."""
        return self._images.agent_install_problem(agent_type)
