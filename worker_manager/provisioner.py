"""The slow half of a create, after the reply: image, Redis user, container; and the teardown.

A create is answered as soon as its record exists (status STARTING). This module then finds or
builds the image, creates the worker's ACL user and starts the container. Each step is idempotent
(the image by hash, the user by name, the container by name), so a create interrupted by a crash
is finished by running it again, without a second container.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from worker_base.config import DEFAULT_STATE_DIR, WrapperConfig
from worker_manager.acl import WorkerAcl
from worker_manager.clock import iso_from_unix, iso_now
from worker_manager.config import Settings
from worker_manager.containers import ContainerRuntime, LaunchSpec
from worker_manager.images import BuildFailed, ImageService
from worker_manager.logs import get_logger
from worker_manager.models import AgentType, CreateCommand, Module, Shape, WorkerStatus
from worker_manager.outages import OUTAGE_ERRORS, ride_out
from worker_manager.records import LIVE, WorkerStore

log = get_logger(__name__)


class Provisioner:
    def __init__(
        self,
        settings: Settings,
        store: WorkerStore,
        images: ImageService,
        containers: ContainerRuntime,
        acl: WorkerAcl,
    ) -> None:
        self._settings = settings
        self._store = store
        self._images = images
        self._containers = containers
        self._acl = acl
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._teardowns: dict[str, asyncio.Task[None]] = {}
        #: Told when a worker's container has started (the watcher then looks at once).
        self.on_started: Callable[[str], None] = lambda _worker_id: None

    @property
    def in_progress(self) -> int:
        return len(self._tasks)

    def is_active(self, worker_id: str) -> bool:
        """Whether this process is provisioning the worker right now."""
        return worker_id in self._tasks

    def start(self, worker_id: str) -> None:
        """Provision in the background (at most once at a time per worker in this process)."""
        if worker_id in self._tasks:
            return
        task = asyncio.create_task(self._provision(worker_id), name=f"provision-{worker_id}")
        self._tasks[worker_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(worker_id, None))

    async def cancel(self, worker_id: str) -> None:
        task = self._tasks.get(worker_id)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def close(self) -> None:
        # A teardown cut short here is finished by the reconciler at the next start: the
        # record already says STOPPED/FAILED, so the container it finds is removed.
        tasks = [*self._tasks.values(), *self._teardowns.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def teardowns_in_progress(self) -> int:
        return len(self._teardowns)

    async def end(
        self,
        worker_id: str,
        to: WorkerStatus,
        reason: str,
        *,
        fields: dict[str, str] | None = None,
        allowed_from: str = LIVE,
    ) -> bool:
        """End a live worker: its record first (one Lua transition: a concurrent end wins or
        loses cleanly), then its container and Redis user in the background. False when the
        worker had already ended (or was not in ``allowed_from``)."""
        result = await self._store.transition(
            worker_id, to, reason, fields=fields, allowed_from=allowed_from
        )
        if result.changed:
            log.info("worker ended", worker_id=worker_id, status=to.value, reason=reason)
            self.teardown_soon(worker_id)
        return result.changed

    def teardown_soon(self, worker_id: str) -> None:
        """End a worker that is already STOPPED/FAILED in its record, in the background:
        cancel its provisioning, remove its container and Redis user, record the exit code.
        The watcher and the evictor call this, so a slow ``docker stop`` delays none of their
        other verdicts."""
        if worker_id in self._teardowns:
            return
        task = asyncio.create_task(self._teardown_recorded(worker_id), name=f"end-{worker_id}")
        self._teardowns[worker_id] = task
        task.add_done_callback(lambda _t: self._teardowns.pop(worker_id, None))

    async def _teardown_recorded(self, worker_id: str) -> None:
        try:
            await self.cancel(worker_id)
            exit_code = await self.teardown(worker_id)
            if exit_code is not None:
                await self._store.update(worker_id, {"exit_code": str(exit_code)})
        except asyncio.CancelledError:
            raise
        except Exception:
            # Not lost: the reconciler removes the container of an ended record.
            log.exception("removing an ended worker failed", worker_id=worker_id)

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
            if spec is None:
                return  # deleted (or expired) before we got here
            command = CreateCommand.model_validate(spec, context={"settings": self._settings})
            if await self._store.field(worker_id, "pool") and await self._hand_over(
                worker_id, command
            ):
                return
            await self._store.progress(worker_id, "finding its image")
            image = await self._images.ensure(
                command.agent_type, list(command.modules), self._reporter(worker_id)
            )
            if not await self._store.update(
                worker_id, {"image": image.tag, "image_hash": image.hash}
            ):
                return
            await self._store.progress(worker_id, "starting its container")
            await self._acl.create(worker_id)
            started = await self._containers.launch(
                LaunchSpec(
                    worker_id=worker_id,
                    image_tag=image.tag,
                    image_hash=image.hash,
                    env=self.worker_env(worker_id, command),
                    files={command.agent_type.instructions_file: command.instructions}
                    if command.instructions
                    else {},
                    docker_socket=self._settings.docker_module_socket
                    if Module.DOCKER in command.modules
                    else None,
                )
            )
            await self._store.update(
                worker_id,
                {
                    "container_id": started.container_id,
                    "ip_address": started.ip_address,
                    "started_at": iso_from_unix(started.started_at)
                    if started.started_at
                    else iso_now(),
                },
            )
            self.on_started(worker_id)
            record = await self._store.get(worker_id)
            if record is None or record.get("status") not in ("STARTING", "RUNNING"):
                # Deleted while we were starting it: do not leave the container behind.
                await self.teardown(worker_id)
            bound.info("worker container started", container_id=started.container_id[:12])
        except asyncio.CancelledError:
            raise
        except OUTAGE_ERRORS:
            raise  # not the worker's fault: retried by _provision
        except BuildFailed as exc:
            bound.warning("image build failed", error=exc.message.splitlines()[0])
            await self._fail(worker_id, f"build_failed: {exc.message}")
        except Exception as exc:
            bound.exception("provisioning failed")
            await self._fail(worker_id, f"start failed: {type(exc).__name__}: {exc}")

    async def _hand_over(self, worker_id: str, command: CreateCommand) -> bool:
        """Give a taken warm-pool container its worker: Redis user, instructions, then the
        assignment its wrapper waits for. False (nothing done) when the container is gone:
        the ordinary path then starts one under the same name."""
        await self._acl.create(worker_id)
        started = await self._containers.assign(
            worker_id,
            {command.agent_type.instructions_file: command.instructions}
            if command.instructions
            else {},
            self.worker_env(worker_id, command),
            DEFAULT_STATE_DIR,
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
        self.on_started(worker_id)  # the first heartbeat is a moment away: watch closely now
        if image_hash:
            await self._images.touch(image_hash)
        log.info("pooled worker handed over", worker_id=worker_id)
        return True

    def pool_env(self, shape: Shape) -> dict[str, str]:
        """A pooled container's environment: no worker yet, only what its agent type needs
        (the rest comes with the assignment)."""
        env = {"WM_POOLED": "1", "WM_STATE_DIR": DEFAULT_STATE_DIR}
        if shape.agent_type is AgentType.CLAUDE:
            env.update(self._claude_env())
        env.update(self._secrets_for(shape.agent_type))
        return env

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

    async def _fail(self, worker_id: str, reason: str) -> None:
        await self._store.transition(worker_id, WorkerStatus.FAILED, reason[:4000])
        await self.teardown(worker_id)

    async def teardown(self, worker_id: str) -> int | None:
        """Stop and remove the container and the Redis user; the container's exit code if any."""
        exit_code = await self._containers.remove(worker_id)
        await self._acl.delete(worker_id)
        return exit_code

    def install_problem(self, agent_type: AgentType) -> str | None:
        """Why workers of this agent type cannot be built here at all (checked before a create
        is accepted), or None."""
        return self._images.agent_install_problem(agent_type)

    def worker_env(self, worker_id: str, command: CreateCommand) -> dict[str, str]:
        """The container's environment: the wrapper's configuration (:class:`WrapperConfig`,
        which owns how it is written and read), then what the agent itself needs."""
        env = self.wrapper_config(worker_id, command).to_env()
        if command.agent_type is AgentType.CLAUDE:
            env.update(self._claude_env())
        env.update(self._secrets_for(command.agent_type))
        return env

    def wrapper_config(self, worker_id: str, command: CreateCommand) -> WrapperConfig:
        s = self._settings
        allowed = command.allowed_commands
        return WrapperConfig(
            worker_id=worker_id,
            redis_url=self._acl.worker_url(worker_id),
            key_prefix=s.key_prefix,
            agent_type=command.agent_type.value,
            agent_command=tuple(command.agent_command or ()),
            allowed_commands=None if allowed is None else tuple(allowed),
            heartbeat_interval=s.heartbeat_interval_seconds,
            heartbeat_ttl=s.heartbeat_ttl_seconds,
            output_maxlen=s.output_maxlen,
            factory_auto=s.factory_auto,
            input_timeout=command.input_timeout_seconds or s.input_timeout_seconds,
            max_turns=command.max_turns,
            max_cost_usd=command.max_cost_usd,
        )

    def _claude_env(self) -> dict[str, str]:
        s = self._settings
        env: dict[str, str] = {}
        base_url = s.workers_anthropic_base_url
        if base_url:
            env["ANTHROPIC_BASE_URL"] = base_url
        if s.anthropic_model:
            env["ANTHROPIC_MODEL"] = s.anthropic_model
        if s.claude_max_retries is not None:
            env["CLAUDE_CODE_MAX_RETRIES"] = str(s.claude_max_retries)
        return env

    def _secrets_for(self, agent_type: AgentType) -> dict[str, str]:
        """API keys from the manager's own configuration, for the agent that needs them."""
        s = self._settings
        wanted: dict[str, Any] = {}
        if agent_type is AgentType.CLAUDE:
            wanted = {
                "ANTHROPIC_API_KEY": s.anthropic_api_key,
                "CLAUDE_CODE_OAUTH_TOKEN": s.claude_code_oauth_token,
            }
        elif agent_type is AgentType.FACTORY:
            wanted = {"FACTORY_API_KEY": s.factory_api_key}
        return {name: secret.get_secret_value() for name, secret in wanted.items() if secret}
