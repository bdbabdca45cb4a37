"""Worker containers: one per worker, named after it, labelled, hardened, found again by name.

Instructions are written into the created container's working directory before it starts (as
``CLAUDE.md`` or ``AGENTS.md``), so they never reach an image, an env var or Redis' command log
twice. Every operation is idempotent, because a create may be resumed after a crash: a container
that already exists under the worker's name is reused, never duplicated.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from dataclasses import dataclass
from typing import Any

import docker.errors
from docker import DockerClient
from docker.models.containers import Container
from docker.types import LogConfig

from worker_base.assignment import ASSIGNMENT, READY
from worker_manager.core import docker_client
from worker_manager.core.logs import get_logger
from worker_manager.egress.grants import CONTAINER_SOCKET_DIR
from worker_manager.images.spec import LABEL_HASH, RUNTIME, WORKDIR
from worker_manager.settings import Settings

log = get_logger(__name__)

LABEL_WORKER = "worker-manager.worker_id"
LABEL_MANAGER = "worker-manager.manager_id"
LABEL_PREFIX = "worker-manager.key_prefix"
#: On a warm-pool container: the shape it was started for (it keeps it after it is taken).
LABEL_POOL = "worker-manager.pool"
WORKER_UID = 1000


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    worker_id: str
    image_tag: str
    image_hash: str
    env: dict[str, str]
    files: dict[str, str]  # name in the working directory -> text
    #: The host's Docker socket, for the DOCKER module when the operator allows it.
    docker_socket: str | None = None
    #: Labels besides the standard ones (the warm pool's shape).
    extra_labels: tuple[tuple[str, str], ...] = ()
    #: Contained (SPEC §7): the host directory of the worker's sockets, mounted read-only at
    #: ``/run/wm``; the container then gets no network at all.
    sockets: str | None = None


@dataclass(frozen=True, slots=True)
class Started:
    container_id: str
    ip_address: str
    started_at: float
    #: The image hash the container was started from (its label), when read.
    image_hash: str = ""


def _tar_of(files: dict[str, str], mode: int = 0o644) -> bytes:
    return _tar_entries([(name, text, mode) for name, text in files.items()])


def _tar_entries(entries: list[tuple[str, str, int]]) -> bytes:
    """Files owned by the worker's user, extracted in this order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, text, mode in entries:
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            info.uid = info.gid = WORKER_UID
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def ip_of(attrs: dict[str, Any]) -> str:
    settings = attrs.get("NetworkSettings") or {}
    if settings.get("IPAddress"):
        return str(settings["IPAddress"])
    for network in (settings.get("Networks") or {}).values():
        if network.get("IPAddress"):
            return str(network["IPAddress"])
    return ""


class ContainerRuntime:
    def __init__(self, settings: Settings, docker: DockerClient) -> None:
        self._settings = settings
        self._docker = docker

    def name(self, worker_id: str) -> str:
        return self._settings.keys.acl_user(worker_id)  # "<prefix>-<id>", e.g. worker-<uuid>

    def labels(self, worker_id: str, image_hash: str) -> dict[str, str]:
        return {
            LABEL_WORKER: worker_id,
            LABEL_MANAGER: self._settings.manager_id,
            LABEL_HASH: image_hash,
            LABEL_PREFIX: self._settings.key_prefix,
        }

    async def launch(self, spec: LaunchSpec) -> Started:
        return await docker_client.call(self._launch_sync, spec)

    def _launch_sync(self, spec: LaunchSpec) -> Started:
        name = self.name(spec.worker_id)
        try:
            container = self._docker.containers.get(name)
        except docker.errors.NotFound:
            container = self._create_sync(name, spec)
        if container.status == "created":
            container.start()
        container.reload()
        state = container.attrs.get("State") or {}
        started = state.get("StartedAt") or ""
        return Started(str(container.id), ip_of(container.attrs), _parse_docker_time(started))

    def _create_sync(self, name: str, spec: LaunchSpec) -> Container:
        s = self._settings
        extra: dict[str, Any] = {}
        volumes: dict[str, dict[str, str]] = {}
        if spec.docker_socket:
            volumes[spec.docker_socket] = {"bind": "/var/run/docker.sock", "mode": "rw"}
            extra["group_add"] = [str(os.stat(spec.docker_socket).st_gid)]
        if spec.sockets:
            volumes[spec.sockets] = {"bind": CONTAINER_SOCKET_DIR, "mode": "ro"}
            extra["network_mode"] = "none"
        else:
            extra["network"] = s.container_network
        if volumes:
            extra["volumes"] = volumes
        if s.container_runtime:
            extra["runtime"] = s.container_runtime
        try:
            container = self._docker.containers.create(
                spec.image_tag,
                name=name,
                labels={**self.labels(spec.worker_id, spec.image_hash), **dict(spec.extra_labels)},
                environment={**dict(RUNTIME.environment), **spec.env},
                entrypoint=list(RUNTIME.entrypoint),
                working_dir=RUNTIME.working_dir,
                user=s.container_user,
                init=True,
                security_opt=["no-new-privileges:true"],
                cap_drop=["ALL"],
                mem_limit=s.container_memory,
                memswap_limit=s.container_memory,
                nano_cpus=int(s.container_cpus * 1e9),
                pids_limit=s.container_pids_limit,
                # Bounded logs: a chatty agent must not fill the operator's disk.
                log_config=LogConfig(type="json-file", config={"max-size": "10m", "max-file": "3"}),
                detach=True,
                **extra,
            )
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: a concurrent attempt created it first
                raise
            return self._docker.containers.get(name)
        if spec.files:
            container.put_archive(WORKDIR, _tar_of(spec.files))
        return container

    async def assign(
        self, worker_id: str, files: dict[str, str], assignment: dict[str, str], state_dir: str
    ) -> Started | None:
        """Hand a running warm-pool container its worker: the instructions into the working
        directory, then the assignment (readable by the worker's user only) and, last, the
        marker its wrapper waits for. None when the container is no longer running."""
        return await docker_client.call(self._assign_sync, worker_id, files, assignment, state_dir)

    def _assign_sync(
        self, worker_id: str, files: dict[str, str], assignment: dict[str, str], state_dir: str
    ) -> Started | None:
        try:
            container = self._docker.containers.get(self.name(worker_id))
            if container.status != "running":
                return None
            # One archive, extracted in order: the instructions, the assignment, and last the
            # marker the wrapper waits for (so it never reads a half-written assignment).
            home = state_dir.strip("/")
            entries = [
                (f"{WORKDIR.strip('/')}/{name}", text, 0o644) for name, text in files.items()
            ]
            entries += [
                (f"{home}/{ASSIGNMENT}", json.dumps(assignment), 0o600),
                (f"{home}/{READY}", "", 0o600),
            ]
            container.put_archive("/", _tar_entries(entries))
        except docker.errors.NotFound:
            return None
        started = (container.attrs.get("State") or {}).get("StartedAt", "")
        return Started(
            str(container.id),
            ip_of(container.attrs),
            _parse_docker_time(started),
            image_hash=str(container.labels.get(LABEL_HASH, "")),
        )

    async def pooled(self) -> list[dict[str, Any]]:
        """This manager's warm-pool containers (all states, taken or not)."""
        return await docker_client.call(self._pooled_sync)

    def _pooled_sync(self) -> list[dict[str, Any]]:
        filters = {
            "label": [
                LABEL_POOL,
                f"{LABEL_MANAGER}={self._settings.manager_id}",
                f"{LABEL_PREFIX}={self._settings.key_prefix}",
            ]
        }
        found: list[dict[str, Any]] = self._docker.api.containers(all=True, filters=filters)
        return found

    async def remove(self, worker_id: str) -> int | None:
        """Stop (SIGTERM, then SIGKILL after the timeout) and remove; the exit code if known."""
        return await docker_client.call(self._remove_sync, worker_id)

    def _remove_sync(self, worker_id: str) -> int | None:
        try:
            container = self._docker.containers.get(self.name(worker_id))
        except docker.errors.NotFound:
            return None
        exit_code: int | None = None
        try:
            if container.status in ("running", "restarting", "paused"):
                container.stop(timeout=self._settings.stop_timeout_seconds)
            container.reload()
            exit_code = int((container.attrs.get("State") or {}).get("ExitCode", 0))
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # removal already in progress
                raise
        return exit_code

    async def find_all(self) -> list[dict[str, Any]]:
        """This manager's worker containers (all states), as Docker reports them."""
        return await docker_client.call(self._find_all_sync)

    def _find_all_sync(self) -> list[dict[str, Any]]:
        filters = {
            "label": [
                f"{LABEL_MANAGER}={self._settings.manager_id}",
                f"{LABEL_PREFIX}={self._settings.key_prefix}",
            ]
        }
        found: list[dict[str, Any]] = self._docker.api.containers(all=True, filters=filters)
        return found


def _parse_docker_time(text: str) -> float:
    from worker_manager.core.clock import unix_from_iso

    if not text or text.startswith("0001-"):
        return 0.0
    head, _, frac = text.rstrip("Z").partition(".")
    return unix_from_iso(head + "." + (frac[:6] or "0") + "+00:00")
