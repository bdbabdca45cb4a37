"""Find or build the image for a worker shape: once per shape, across every manager.

Flow (SPEC §5): hash → ``docker image inspect worker:<hash>`` → if missing, build from the
generated Dockerfile (never ``docker commit``) → touch ``last_used_at`` in ``<prefix>:images``.

Two creates of one new shape build once: in one process they share a future; across processes
a Redis lock per hash (renewed while the build runs) elects one builder and the others wait for
its image. A failed build is remembered for ``build_failure_ttl_seconds`` so a broken template
does not set off a rebuild storm; every waiting create fails with the build log's last lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import docker.errors
from docker import DockerClient
from redis.asyncio import Redis

from worker_manager.contract.environments import ResolvedEnvironment
from worker_manager.contract.kinds import AgentType, Module, Shape
from worker_manager.core import docker_client
from worker_manager.core.clock import iso_now
from worker_manager.core.locks import RenewedLock
from worker_manager.core.logs import get_logger
from worker_manager.environments import catalogue
from worker_manager.environments.build_network import BuildNetworkError
from worker_manager.environments.recipe import needs_network
from worker_manager.images import agent_binaries
from worker_manager.images.agent_binaries import AgentBinary, AgentBinaryError
from worker_manager.images.build import BuildFailed, Progress, build_image
from worker_manager.images.spec import (
    ImageSpec,
    Templates,
    has_worker_user,
    packaged_images_dir,
)
from worker_manager.settings import Settings
from worker_manager.typing import BuildNetwork

log = get_logger(__name__)

#: Told of each ensure: ("hit", None) the image existed, ("miss", seconds) we built it,
#: ("failure", seconds) our build failed.
ObserveBuild = Callable[[str, float | None], None]

#: The packaged snippet that installs droid with npm (``WM_FACTORY_NPM_VERSION``).
FACTORY_NPM_SNIPPET = "agents/FACTORY-npm.Dockerfile"


@dataclass(frozen=True, slots=True)
class ImageRef:
    tag: str
    hash: str
    built: bool  # this call built it (false: cache hit or another builder's result)


class ImageService:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        docker: DockerClient,
        observe_build: ObserveBuild = lambda _result, _seconds: None,
        build_network: BuildNetwork | None = None,
    ) -> None:
        self._settings = settings
        #: Where a build that installs an environment's packages connects (the egress
        #: service's build grant); None (``WM_EGRESS=off``): Docker's default network.
        self._build_network = build_network
        self._redis = redis
        self._docker = docker
        self._keys = settings.keys
        self._templates = Templates(
            settings.images_dir or packaged_images_dir(), settings.images_overlay
        )
        self._building: dict[str, asyncio.Future[ImageRef]] = {}
        self._listeners: dict[str, set[Progress]] = {}
        #: Per base image: (when looked up, its ID, whether it has the worker's user).
        self._bases: dict[str, tuple[float, str, bool]] = {}
        self._docker_arch: str | None = None
        self.builds = 0  # builds this process ran (for tests and metrics)
        self._observe_build = observe_build

    async def spec_for(
        self,
        agent_type: AgentType,
        modules: list[Module],
        environment: ResolvedEnvironment | None = None,
    ) -> ImageSpec:
        """What shapes the image of this shape; with an environment (resolved: its base
        filled in), built FROM the environment's base with its steps (SPEC §9)."""
        template, binary, args = await self._agent_install(agent_type)
        build_args = {**self._settings.build_args, **args}
        base = environment.spec.base if environment is not None else None
        base = base or self._settings.base_image
        base_id, base_has_user = await self._base_image(base)
        return ImageSpec(
            base_image=base,
            base_image_id=base_id,
            base_has_worker_user=base_has_user,
            agent_type=agent_type,
            modules=tuple(sorted(modules)),
            templates=self._templates,
            build_args=tuple(sorted(build_args.items())),
            agent_template=template,
            agent_binary=binary,
            environment=environment.spec if environment is not None else None,
        )

    def agent_install_problem(self, agent_type: AgentType) -> str | None:
        """Why a worker of this type cannot be built at all, found without any download: a
        create is refused at once instead of failing after its reply."""
        if agent_type is not AgentType.FACTORY or self._overlaid(agent_type):
            return None
        s = self._settings
        if s.factory_binary is None and s.factory_npm_version is None:
            return (
                "FACTORY workers need the droid CLI and none is configured: set "
                "WM_FACTORY_BINARY to a droid binary on the manager's host, or "
                "WM_FACTORY_NPM_VERSION to install @factory/cli with npm during the build"
            )
        return None

    def _overlaid(self, agent_type: AgentType) -> bool:
        overlay = self._templates.overlay
        return overlay is not None and (overlay / f"agents/{agent_type.value}.Dockerfile").is_file()

    async def _agent_install(
        self, agent_type: AgentType
    ) -> tuple[str | None, AgentBinary | None, dict[str, str]]:
        """Which snippet installs the agent, the binary it copies, and its build args.

        An overlay's own snippet for the agent wins and brings its own files (tests' fakes,
        site-specific agents); otherwise the packaged one, with the binary from the host.
        """
        if agent_type is AgentType.CUSTOM or self._overlaid(agent_type):
            return None, None, {}
        try:
            if agent_type is AgentType.CLAUDE:
                architecture = await self._architecture()
                binary = await asyncio.to_thread(
                    agent_binaries.claude_binary, self._settings, architecture
                )
                return None, binary, {}
            if agent_type is AgentType.CODEX:
                architecture = await self._architecture()
                binary = await asyncio.to_thread(
                    agent_binaries.codex_binary, self._settings, architecture
                )
                return None, binary, {}
            problem = self.agent_install_problem(agent_type)
            if problem is not None:
                raise BuildFailed(problem)
            factory = await asyncio.to_thread(agent_binaries.factory_binary, self._settings)
        except AgentBinaryError as exc:
            raise BuildFailed(str(exc)) from None
        if factory is not None:
            return None, factory, {}
        version = self._settings.factory_npm_version or ""
        return FACTORY_NPM_SNIPPET, None, {"FACTORY_CLI_VERSION": version}

    async def _architecture(self) -> str:
        if self._docker_arch is None:
            info: dict[str, Any] = await docker_client.call(self._docker.info)
            self._docker_arch = str(info.get("Architecture") or os.uname().machine)
        return self._docker_arch

    async def _base_image(self, name: str) -> tuple[str, bool]:
        """A base's ID and whether it has the worker's user; cached for a minute: a create
        must not pay a Docker round trip for it each time."""
        now = time.monotonic()
        cached = self._bases.get(name)
        if cached and now - cached[0] < 60:
            return cached[1], cached[2]
        try:
            image = await docker_client.call(self._docker.images.get, name)
        except docker.errors.ImageNotFound as exc:
            if name != self._settings.base_image:
                raise BuildFailed(
                    f"base image {name!r} (an environment's) is missing on this host: pull or "
                    "load it first"
                ) from exc
            raise BuildFailed(
                f"base image {name!r} is missing; run "
                "`worker-manager ensure-base` (or `make base-image`) on the manager's host"
            ) from exc
        image_id, has_user = str(image.id), has_worker_user(image.labels)
        self._bases[name] = (now, image_id, has_user)
        return image_id, has_user

    async def prebuild(self, shapes: list[str]) -> None:
        """Build ``WM_PREBUILD``'s shapes, one after the other, so the first create of each
        finds its image (or joins its build). Readiness does not wait for this."""
        for text in shapes:
            shape = Shape.parse(text)
            try:
                image = await self.ensure_shape(shape)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a build failure is logged; the next shape still goes
                log.warning("prebuild failed", shape=text, error=str(exc)[:500])
            else:
                log.info("prebuilt", shape=text, tag=image.tag, built=image.built)

    async def ensure_shape(self, shape: Shape, on_progress: Progress | None = None) -> ImageRef:
        """The image of a shape as the settings name it (``WM_PREBUILD``, ``WM_WARM_POOL``,
        ``build``): its ``@environment`` resolved against the catalogue."""
        environment = catalogue.of_name(shape.environment, self._settings)
        return await self.ensure(
            shape.agent_type, list(shape.modules), on_progress, environment=environment
        )

    async def ensure(
        self,
        agent_type: AgentType,
        modules: list[Module],
        on_progress: Progress | None = None,
        *,
        environment: ResolvedEnvironment | None = None,
    ) -> ImageRef:
        """The image for this shape, built if missing. ``on_progress(step, steps)`` hears the
        build's own "Step N/M" lines, also when this call joins a build already under way
        (another create's, a prebuild). ``environment``: the create's, resolved (SPEC §9)."""
        spec = await self.spec_for(agent_type, modules, environment)
        if on_progress is None:
            return await self._ensure(spec)
        listeners = self._listeners.setdefault(spec.hash, set())
        listeners.add(on_progress)
        try:
            return await self._ensure(spec)
        finally:
            listeners.discard(on_progress)
            if not listeners:
                self._listeners.pop(spec.hash, None)

    def _notify(self, image_hash: str, step: int, steps: int) -> None:
        for listener in list(self._listeners.get(image_hash, ())):
            try:
                listener(step, steps)
            except Exception:
                log.exception("a build progress listener failed")

    async def _ensure(self, spec: ImageSpec) -> ImageRef:
        image_hash = spec.hash
        existing = await self._inspect(spec.tag)
        if existing is not None:
            self._observe_build("hit", None)
            await self.touch(image_hash)
            await self._record_if_missing(spec, existing)
            return ImageRef(spec.tag, image_hash, built=False)
        shared = self._building.get(image_hash)
        if shared is None:
            shared = asyncio.ensure_future(self._build_once(spec))
            self._building[image_hash] = shared
            shared.add_done_callback(lambda _f: self._building.pop(image_hash, None))
        ref = await asyncio.shield(shared)
        await self.touch(image_hash)
        return ref

    async def _exists(self, tag: str) -> bool:
        return await self._inspect(tag) is not None

    async def _inspect(self, tag: str) -> dict[str, Any] | None:
        try:
            attrs: dict[str, Any] = await docker_client.call(self._docker.api.inspect_image, tag)
        except docker.errors.ImageNotFound:
            return None
        return attrs

    async def _record_if_missing(self, spec: ImageSpec, attrs: dict[str, Any]) -> None:
        """Adopt at first use an image whose record is gone (Redis flushed, another deployment)."""
        key = self._keys.image(spec.hash)
        if await self._redis.exists(key):
            return
        created = str(attrs.get("Created") or "")
        await self._redis.hset(
            key,
            mapping={
                "hash": spec.hash,
                "tag": spec.tag,
                "image_id": str(attrs.get("Id", "")),
                "size": str(int(attrs.get("Size") or 0)),
                "built_at": created[:23] + "Z" if created else "",
                "adopted_at": iso_now(),
                "adopted_by": self._settings.manager_id,
                "spec": spec.canonical_json(),
            },
        )

    async def _build_once(self, spec: ImageSpec) -> ImageRef:
        """Elect one builder across managers; the others wait for its image or its failure."""
        failure_key = self._keys.build_failure(spec.hash)
        deadline = time.monotonic() + self._settings.build_timeout_seconds
        while True:
            failure = await self._redis.get(failure_key)
            if failure:
                raise BuildFailed(failure)
            lock = RenewedLock(
                self._redis,
                self._keys.build_lock(spec.hash),
                ttl_seconds=self._settings.build_lock_ttl_seconds,
                owner=self._settings.manager_id,
            )
            if await lock.acquire():
                try:
                    if await self._exists(spec.tag):  # built while we waited for the lock
                        return ImageRef(spec.tag, spec.hash, built=False)
                    return await self._build_holding(spec, failure_key)
                finally:
                    await lock.release()
            if await self._exists(spec.tag):
                return ImageRef(spec.tag, spec.hash, built=False)
            if time.monotonic() > deadline:
                raise BuildFailed(f"timed out waiting for another manager to build {spec.tag}")
            await asyncio.sleep(0.25)

    async def _build_holding(self, spec: ImageSpec, failure_key: str) -> ImageRef:
        started = time.monotonic()
        try:
            loop = asyncio.get_running_loop()

            def progress(step: int, steps: int) -> None:
                loop.call_soon_threadsafe(self._notify, spec.hash, step, steps)

            async with contextlib.AsyncExitStack() as stack:
                route = None
                if self._build_network is not None and needs_network(spec.environment):
                    try:
                        route = await stack.enter_async_context(
                            self._build_network.route(spec.hash, spec.base_image)
                        )
                    except BuildNetworkError as exc:
                        raise BuildFailed(str(exc)) from None
                image_id, size = await docker_client.call(
                    build_image,
                    self._docker,
                    spec,
                    key_prefix=self._settings.key_prefix,
                    timeout=self._settings.build_timeout_seconds,
                    progress=progress,
                    route=route,
                )
        except BuildFailed as exc:
            self._observe_build("failure", time.monotonic() - started)
            if self._settings.build_failure_ttl_seconds:
                await self._redis.set(
                    failure_key, exc.message, ex=self._settings.build_failure_ttl_seconds
                )
            raise
        seconds = time.monotonic() - started
        self._observe_build("miss", seconds)
        self.builds += 1
        await self._redis.hset(
            self._keys.image(spec.hash),
            mapping={
                "hash": spec.hash,
                "tag": spec.tag,
                "image_id": image_id,
                "size": str(size),
                "built_at": iso_now(),
                "build_seconds": f"{seconds:.3f}",
                "built_by": self._settings.manager_id,
                "spec": spec.canonical_json(),
            },
        )
        log.info("image built", tag=spec.tag, seconds=round(seconds, 2), size=size)
        return ImageRef(spec.tag, spec.hash, built=True)

    async def touch(self, image_hash: str) -> None:
        await self._redis.zadd(self._keys.images, {image_hash: int(time.time())})
