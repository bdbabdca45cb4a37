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
import json
import os
import re
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

import docker.errors
from docker import DockerClient
from redis.asyncio import Redis

from worker_manager import agent_binaries, docker_client
from worker_manager.agent_binaries import AgentBinary, AgentBinaryError
from worker_manager.clock import iso_now
from worker_manager.config import Settings
from worker_manager.image_spec import (
    VENDORED,
    ImageSpec,
    Templates,
    packaged_images_dir,
    wrapper_dir,
)
from worker_manager.locks import RenewedLock
from worker_manager.logs import get_logger
from worker_manager.models import AgentType, Module

log = get_logger(__name__)

LABEL_HASH = "worker-manager.hash"
#: The deployment (key prefix) that built an image: its collector is the one that may remove it.
LABEL_PREFIX = "worker-manager.key_prefix"
_LOG_TAIL = 30
_LINE_CHARS = 200  # a create's ``reason`` must keep the log's *last* lines within its bound
_MESSAGE_CHARS = 3500  # the worker's ``reason`` is cut at 4000 characters
_STEP_IMAGE = re.compile(r"^ ---> ([0-9a-f]{12,64})$")
#: The classic builder's own count: "Step 3/9 : COPY ...".
_STEP_LINE = re.compile(r"^Step (\d+)/(\d+) :")
#: ``(step, steps)`` of a build in progress.
Progress = Callable[[int, int], None]
#: Terminal control sequences (colours, cursor moves) that build output carries: a ``reason``
#: is read in Redis and JSON, never on a terminal.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
#: The packaged snippet that installs droid with npm (``WM_FACTORY_NPM_VERSION``).
FACTORY_NPM_SNIPPET = "agents/FACTORY-npm.Dockerfile"


def clean_log_line(line: str) -> str:
    """A build-log line without terminal escapes or control characters."""
    return _CONTROL.sub("", _ANSI.sub("", line))


class BuildFailed(Exception):
    """The image could not be built; ``message`` ends with the build log's last lines."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class ImageRef:
    tag: str
    hash: str
    built: bool  # this call built it (false: cache hit or another builder's result)


class ImageService:
    def __init__(self, settings: Settings, redis: Redis, docker: DockerClient) -> None:
        self._settings = settings
        self._redis = redis
        self._docker = docker
        self._keys = settings.keys
        self._templates = Templates(
            settings.images_dir or packaged_images_dir(), settings.images_overlay
        )
        self._building: dict[str, asyncio.Future[ImageRef]] = {}
        self._listeners: dict[str, set[Progress]] = {}
        self._base_id: tuple[float, str] | None = None
        self._docker_arch: str | None = None
        self.builds = 0  # builds this process ran (for tests and metrics)
        #: (result, seconds): "hit" image existed, "miss" we built it, "failure" our build failed.
        self.observe_build: Callable[[str, float | None], None] = lambda _r, _s: None

    async def spec_for(self, agent_type: AgentType, modules: list[Module]) -> ImageSpec:
        template, binary, args = await self._agent_install(agent_type)
        build_args = {**self._settings.build_args, **args}
        return ImageSpec(
            base_image=self._settings.base_image,
            base_image_id=await self._base_image_id(),
            agent_type=agent_type,
            modules=tuple(sorted(modules)),
            templates=self._templates,
            build_args=tuple(sorted(build_args.items())),
            agent_template=template,
            agent_binary=binary,
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

    async def _base_image_id(self) -> str:
        """Cached for a minute: a create must not pay a Docker round trip for it each time."""
        now = time.monotonic()
        if self._base_id and now - self._base_id[0] < 60:
            return self._base_id[1]
        try:
            image = await docker_client.call(self._docker.images.get, self._settings.base_image)
        except docker.errors.ImageNotFound as exc:
            raise BuildFailed(
                f"base image {self._settings.base_image!r} is missing; run "
                "`worker-manager ensure-base` (or `make base-image`) on the manager's host"
            ) from exc
        image_id = str(image.id)
        self._base_id = (now, image_id)
        return image_id

    async def ensure(
        self,
        agent_type: AgentType,
        modules: list[Module],
        on_progress: Progress | None = None,
    ) -> ImageRef:
        """The image for this shape, built if missing. ``on_progress(step, steps)`` hears the
        build's own "Step N/M" lines, also when this call joins a build already under way
        (another create's, a prebuild)."""
        spec = await self.spec_for(agent_type, modules)
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
            self.observe_build("hit", None)
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

            image_id, size = await docker_client.call(self._build_sync, spec, progress)
        except BuildFailed as exc:
            self.observe_build("failure", time.monotonic() - started)
            if self._settings.build_failure_ttl_seconds:
                await self._redis.set(
                    failure_key, exc.message, ex=self._settings.build_failure_ttl_seconds
                )
            raise
        seconds = time.monotonic() - started
        self.observe_build("miss", seconds)
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

    def _build_sync(
        self, spec: ImageSpec, progress: Callable[[int, int], None] = lambda _n, _m: None
    ) -> tuple[str, int]:
        """Classic builder, intermediate containers always removed (``forcerm``), log streamed.

        A failed build would leave the image of its last good step behind as a dangling
        layer that nothing references: it is removed here.
        """
        tail: deque[str] = deque(maxlen=_LOG_TAIL)
        error: str | None = None
        last_step: str | None = None
        try:
            with tempfile.TemporaryDirectory(prefix="wm-build-") as tmp:
                context = Path(tmp)
                labels = {LABEL_HASH: spec.hash, LABEL_PREFIX: self._settings.key_prefix}
                write_build_context(spec, context, labels)
                stream = self._docker.api.build(
                    path=str(context),
                    tag=spec.tag,
                    rm=True,
                    forcerm=True,
                    pull=False,
                    decode=True,
                    buildargs=dict(spec.build_args),
                    timeout=int(self._settings.build_timeout_seconds),
                )
                for chunk in stream:
                    for raw in str(chunk.get("stream", "")).splitlines():
                        line = clean_log_line(raw)
                        if numbered := _STEP_LINE.match(line):
                            progress(int(numbered.group(1)), int(numbered.group(2)))
                        if line.strip():
                            tail.append(line.rstrip()[:_LINE_CHARS])
                            log.debug("build", tag=spec.tag, line=line.rstrip())
                            step = _STEP_IMAGE.match(line.rstrip())
                            if step:
                                last_step = step.group(1)
                    if "error" in chunk:
                        error = clean_log_line(str(chunk["error"])).strip()
                        tail.append(error[:_LINE_CHARS])
        except (docker.errors.DockerException, OSError) as exc:  # incl. requests' errors
            error = f"{type(exc).__name__}: {exc}"[:_LINE_CHARS]
        if error is not None:
            if last_step is not None:
                self._drop_dangling(last_step)
            head = f"building {spec.tag} failed: {error}\n"
            while tail and len(head) + sum(len(line) + 1 for line in tail) > _MESSAGE_CHARS:
                tail.popleft()  # keep the *last* lines within what a worker's reason holds
            raise BuildFailed(head + "\n".join(tail))
        image = self._docker.images.get(spec.tag)
        return str(image.id), int(image.attrs.get("Size", 0))

    def _drop_dangling(self, image_id: str) -> None:
        """Remove a failed build's last layer if nothing tags or builds on it."""
        try:
            attrs: dict[str, Any] = self._docker.images.get(image_id).attrs
            if [t for t in attrs.get("RepoTags") or [] if t != "<none>:<none>"]:
                return
            full_id = str(attrs["Id"])
            children = [
                i for i in self._docker.api.images(all=True) if i.get("ParentId") == full_id
            ]
            if not children:
                self._docker.api.remove_image(full_id, noprune=False)
        except docker.errors.APIError as exc:  # in use, or already gone: leave it
            log.debug("failed build layer kept", image=image_id, error=str(exc))

    async def touch(self, image_hash: str) -> None:
        await self._redis.zadd(self._keys.images, {image_hash: int(time.time())})


def write_build_context(
    spec: ImageSpec, context: Path, labels: dict[str, str] | None = None
) -> None:
    """Dockerfile, the wrapper with its vendored dependencies, and the templates' extra files.

    ``labels`` go into the Dockerfile as one ``LABEL`` step: passed to the build call instead,
    the classic builder adds one step (one container commit) per label."""
    (context / "Dockerfile").write_text(spec.dockerfile(labels))
    site = context / "worker-base"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(wrapper_dir(), site / "worker_base", ignore=ignore)
    for name in VENDORED:
        module: Any = import_module(name)
        shutil.copytree(Path(module.__file__).parent, site / name, ignore=ignore)
    files = spec.templates.files_dir()
    if files is not None:
        shutil.copytree(files, context / "files", symlinks=False, ignore=ignore)
    if spec.agent_binary is not None:
        agent_binaries.place(spec.agent_binary, context)
    (context / ".dockerignore").write_text("**/__pycache__\n")
    (context / "spec.json").write_text(json.dumps(spec.canonical(), indent=2, sort_keys=True))
