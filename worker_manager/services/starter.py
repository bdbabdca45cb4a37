"""A worker's services started, and ready, before the worker is RUNNING (SPEC §9).

Each service's image is found first, before the worker's container starts (:meth:`prepare`: an
image of ``WM_SERVICE_IMAGES`` must be on this host; an environment's is built once, like a
worker's, through the egress service); what the images declare gives the ports the worker's
wrapper waits for before it reads an input. Then, the worker's container started, every service
container is started (:meth:`start`), and the services are awaited together, each until its
port answers on the worker's loopback (``plan.ready_port``) or, without one, until it has
stayed up a moment (``plan.SETTLE_SECONDS``), all within
``WM_SERVICE_START_TIMEOUT_SECONDS``. A service that exits, or does not answer in time, is
:class:`ServiceFailed`, named, with the last lines of its log: its worker is FAILED
``service_failed: <name>: …``.

What the record says of each (``starting``, ``running``) is written through ``on_state``: the
caller owns the record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from worker_manager.contract.kinds import AgentType
from worker_manager.contract.services import ResolvedService
from worker_manager.core.logs import get_logger
from worker_manager.images.service import ImageService
from worker_manager.services import plan
from worker_manager.services.runtime import ServiceRuntime, ServiceState
from worker_manager.settings import Settings

log = get_logger(__name__)

#: How often a starting service is looked at.
POLL_SECONDS = 0.1
OnState = Callable[[str, str], Awaitable[None]]
#: The worker's container: its name, and its id (the namespace the services join).
WorkerContainer = tuple[str, str]


class ServiceFailed(Exception):
    """A service that could not start; ``str()`` is ``<name>: <why>``."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"{name}: {detail}")
        self.name = name
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Prepared:
    """A service whose image is on this host."""

    service: ResolvedService
    image_tag: str
    image_hash: str
    facts: plan.ImageFacts

    @property
    def port(self) -> int | None:
        return plan.ready_port(self.service, self.facts)


def ports_of(prepared: Sequence[Prepared]) -> tuple[int, ...]:
    """The ports the worker's wrapper waits for (``WM_SERVICE_PORTS``)."""
    return tuple(sorted({p.port for p in prepared if p.port is not None}))


@dataclass(frozen=True, slots=True)
class _Started:
    service: ResolvedService
    container_id: str
    port: int | None


def failure(state: ServiceState) -> str:
    """Why a service that is not running ended, with the last lines of its log."""
    said = " | ".join(line.strip() for line in state.log_tail.splitlines() if line.strip())
    what = plan.exited(state.exit_code, state.oom)
    return f"{what}: {said[-400:]}" if said else what


class ServiceStarter:
    def __init__(self, settings: Settings, runtime: ServiceRuntime, images: ImageService) -> None:
        self._settings = settings
        self.runtime = runtime
        self._images = images

    async def prepare(self, services: Sequence[ResolvedService]) -> list[Prepared]:
        """Each service's image, found or built; :class:`ServiceFailed` for one missing."""
        return [await self._prepare(service) for service in services]

    async def _prepare(self, service: ResolvedService) -> Prepared:
        if service.environment is not None:
            image = await self._images.ensure(AgentType.CUSTOM, [], environment=service.environment)
            tag, image_hash = image.tag, image.hash
        else:
            tag, image_hash = service.image or "", ""
        facts = await self.runtime.image_facts(tag)
        if facts is None:
            raise ServiceFailed(service.name, f"image {tag!r} is not on this host")
        return Prepared(service, tag, image_hash, facts)

    async def start(
        self,
        worker_id: str,
        worker: WorkerContainer,
        prepared: Sequence[Prepared],
        *,
        contained: bool,
        on_state: OnState,
    ) -> None:
        """Start them all and wait until each is ready; :class:`ServiceFailed` for the first
        that is not."""
        if not prepared:
            return
        for each in prepared:
            await on_state(each.service.name, plan.STARTING)
        launched = [await self._launch(worker_id, worker, p, contained) for p in prepared]
        deadline = time.monotonic() + self._settings.service_start_timeout_seconds
        await asyncio.gather(*(self._await_ready(worker[0], s, deadline) for s in launched))
        for started in launched:
            await on_state(started.service.name, plan.RUNNING)

    async def _launch(
        self, worker_id: str, worker: WorkerContainer, prepared: Prepared, contained: bool
    ) -> _Started:
        options = plan.container_options(
            self._settings,
            worker_id=worker_id,
            worker_container=worker[0],
            worker_container_id=worker[1],
            service=prepared.service,
            image_tag=prepared.image_tag,
            image_hash=prepared.image_hash,
            facts=prepared.facts,
            contained=contained,
        )
        container_id = await self.runtime.launch(options, worker[1])
        log.info(
            "service started",
            worker_id=worker_id,
            service=prepared.service.name,
            image=prepared.image_tag,
        )
        return _Started(prepared.service, container_id, prepared.port)

    async def _await_ready(self, worker_container: str, started: _Started, deadline: float) -> None:
        name = started.service.name
        settle = time.monotonic() + plan.SETTLE_SECONDS
        while True:
            state = await self.runtime.state(started.container_id)
            if not state.running:
                raise ServiceFailed(name, failure(state))
            if started.port is not None:
                if await self.runtime.probe(worker_container, started.port):
                    return
            elif time.monotonic() >= settle:
                return
            if time.monotonic() >= deadline:
                seconds = self._settings.service_start_timeout_seconds
                raise ServiceFailed(
                    name, f"nothing answered on port {started.port} within {seconds:g} s"
                )
            await asyncio.sleep(POLL_SECONDS)
