"""A ``DOCKER`` worker's own Docker Engine, started beside it as its ``docker`` service (SPEC §9).

With ``WM_DOCKER_MODULE=rootless`` (the default) the engine is a rootless ``dockerd`` in a
sidecar container that shares the worker's network namespace and a socket volume with it
(:mod:`worker_manager.docker_engine` says how it is built and confined). It is one of the
worker's services: named ``docker`` in the record's ``services``, found, reported and removed
like the others (``services.runtime``), its data volume labelled as the worker's (counted in its
``WM_CONTAINER_DISK``, kept while it sleeps, removed with it). The order:

1. :meth:`EngineStarter.prepare`, before the worker's container: the engine's image (an
   environment, built once through the egress service) and its two volumes; the worker's
   container then mounts the socket volume (:meth:`EngineStarter.worker_mounts`) and its agent
   gets ``DOCKER_HOST`` (:func:`~worker_manager.docker_engine.sidecar.agent_docker_env`);
2. :meth:`EngineStarter.start`, once the worker's container runs: the sidecar in its namespace,
   until its engine answers, then the operator's images (``WM_DOCKER_IMAGES``) loaded into it,
   bounded by ``WM_DOCKER_PRELOAD_MAX_BYTES``. A failure is :class:`ServiceFailed` (``docker``).

Whether this host can run it at all is judged once per process (:meth:`EngineStarter.problem`)
and said in the refusal of a create that asks for it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import docker.errors
from docker import DockerClient
from docker.models.containers import Container
from docker.types import Mount

from worker_manager.contract.environments import ResolvedEnvironment
from worker_manager.contract.kinds import AgentType
from worker_manager.contract.labels import LABEL_MANAGER, LABEL_PREFIX, LABEL_VOLUME, LABEL_WORKER
from worker_manager.core import docker_client
from worker_manager.core.logs import get_logger
from worker_manager.docker_engine import preload, sidecar, support
from worker_manager.docker_engine.recipe import (
    ENGINE_ENVIRONMENT,
    ENGINE_ENVIRONMENT_LABEL,
    PROXY_URL,
)
from worker_manager.images.service import ImageRef, ImageService
from worker_manager.services.plan import (
    ENGINE,
    RUNNING,
    STARTING,
    container_labels,
    container_name,
)
from worker_manager.services.runtime import ServiceRuntime
from worker_manager.services.starter import OnState, ServiceFailed, WorkerContainer
from worker_manager.settings import Settings

log = get_logger(__name__)

#: How long a new engine may take to answer on its socket.
READY_SECONDS = 60.0


class EngineStarter:
    def __init__(
        self,
        settings: Settings,
        docker: DockerClient,
        images: ImageService,
        runtime: ServiceRuntime,
    ) -> None:
        self._settings = settings
        self._docker = docker
        self._images = images
        self._runtime = runtime
        self._problem: tuple[str | None] | None = None
        #: The host's Engine confines containers with AppArmor (``support.HostFacts``).
        self._apparmor = False
        self._lock = asyncio.Lock()

    async def problem(self) -> str | None:
        """Why this host cannot give a worker its own engine, or None (judged once)."""
        async with self._lock:
            if self._problem is None:
                facts = await docker_client.call(
                    support.gather_facts, self._docker, self._settings.container_runtime
                )
                self._problem = (support.rootless_problem(facts),)
                self._apparmor = facts.apparmor
            return self._problem[0]

    def volumes(self, worker_id: str, worker_container: str) -> sidecar.EngineVolumes:
        name = container_name(worker_container, ENGINE)
        return sidecar.EngineVolumes(data=f"{name}-data", socket=f"{name}-socket")

    def _volume_labels(self, worker_id: str, which: str) -> dict[str, str]:
        return {
            LABEL_WORKER: worker_id,
            LABEL_MANAGER: self._settings.manager_id,
            LABEL_PREFIX: self._settings.keys.prefix,
            LABEL_VOLUME: f"docker-{which}",
        }

    async def prepare(self, worker_id: str, worker_container: str) -> ImageRef:
        """The engine's image and its volumes, before the worker's container is created."""
        problem = await self.problem()
        if problem is not None:
            raise ServiceFailed(ENGINE, problem)
        environment = ResolvedEnvironment(
            label=ENGINE_ENVIRONMENT_LABEL,
            spec=ENGINE_ENVIRONMENT.with_base(self._settings.base_image),
        )
        image = await self._images.ensure(AgentType.CUSTOM, [], environment=environment)
        volumes = self.volumes(worker_id, worker_container)
        await docker_client.call(self._create_volumes, worker_id, volumes)
        return image

    def _create_volumes(self, worker_id: str, volumes: sidecar.EngineVolumes) -> None:
        for options in (
            sidecar.data_volume_options(volumes.data, self._volume_labels(worker_id, "data")),
            sidecar.socket_volume_options(volumes.socket, self._volume_labels(worker_id, "socket")),
        ):
            try:
                self._docker.volumes.get(str(options["name"]))
            except docker.errors.NotFound:
                self._docker.volumes.create(**options)

    def worker_mounts(self, worker_id: str, worker_container: str) -> list[Mount]:
        return sidecar.worker_mounts(self.volumes(worker_id, worker_container))

    async def start(
        self,
        worker_id: str,
        worker: WorkerContainer,
        image: ImageRef,
        *,
        contained: bool,
        on_state: OnState,
    ) -> None:
        """The sidecar in the worker's namespace, its engine answering, the operator's images
        loaded; :class:`ServiceFailed` naming ``docker`` when not."""
        await on_state(ENGINE, STARTING)
        name = container_name(worker[0], ENGINE)
        try:
            options = self._options(worker_id, worker, image, contained)
            # Launched like any service (kept when it already runs in this start's namespace).
            await self._runtime.launch(options, worker[1], create=self._create)
            seconds = await docker_client.call(
                preload.wait_until_ready, self._docker, name, READY_SECONDS
            )
            loaded = None
            if self._settings.docker_images:
                loaded = await docker_client.call(
                    preload.preload_images,
                    self._docker,
                    name,
                    list(self._settings.docker_images),
                    self._settings.docker_preload_max_bytes,
                )
        except preload.PreloadError as exc:
            raise ServiceFailed(ENGINE, str(exc)) from None
        log.info(
            "docker engine ready",
            worker_id=worker_id,
            seconds=round(seconds, 2),
            preloaded_bytes=loaded.bytes if loaded else 0,
            preload_seconds=round(loaded.seconds, 2) if loaded else 0,
        )
        await on_state(ENGINE, RUNNING)

    def _options(
        self, worker_id: str, worker: WorkerContainer, image: ImageRef, contained: bool
    ) -> dict[str, Any]:
        return sidecar.engine_container_options(
            self._settings,
            worker[1],
            self.volumes(worker_id, worker[0]),
            image=image.tag,
            name=container_name(worker[0], ENGINE),
            labels=container_labels(self._settings, worker_id, ENGINE, image.hash),
            proxy=PROXY_URL if contained else None,
            apparmor=self._apparmor,
        )

    def _create(self, options: dict[str, Any]) -> Container:
        return sidecar.create_engine_container(self._docker, options)
