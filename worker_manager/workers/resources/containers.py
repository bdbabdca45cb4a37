"""Worker containers: one per worker, named after it, labelled, hardened, found again by name.

Instructions are written into the created container's working directory before it starts (as
``CLAUDE.md`` or ``AGENTS.md``), so they never reach an image, an env var or Redis' command log
twice. Every operation is idempotent, because a create may be resumed after a crash: a container
that already exists under the worker's name is reused, never duplicated.

What a container may write (SPEC §7): its root filesystem is read-only; a worker writes only
its two volumes, ``<name>-home`` at ``/home`` (the agent's home and, root's, the wrapper's own
files: ``worker_base.identity``) and ``<name>-workspace`` at ``/workspace``, and a ``/tmp``
tmpfs bounded by ``WM_CONTAINER_TMP_SIZE`` (counted against its memory). The volumes are the
worker's own, labelled like its container, removed with it; their size is measured against
``WM_CONTAINER_DISK`` by :mod:`worker_manager.workers.watching.disk_guard`. The container runs
as root with only the capabilities the wrapper needs to start its agent as another user
(``WRAPPER_CAPABILITIES``) and ``no-new-privileges``: the agent, as ``WM_CONTAINER_USER``, holds
none. Root's interpreter reads nothing the agent may write: it starts isolated, in ``/``, with a
home of root's (``images.spec.RUNTIME``), and the create's ``env`` is not a variable of the
container but data the wrapper gives the agent (``resources.environment``).
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
from docker.types import LogConfig, Mount

from worker_base.assignment import ASSIGNMENT, READY
from worker_base.identity import CONTAINER_WRAPPER_DIR, PRIVATE
from worker_manager.contract.labels import (
    LABEL_HASH,
    LABEL_MANAGER,
    LABEL_POOL,
    LABEL_PREFIX,
    LABEL_WORKER,
)
from worker_manager.core import docker_client
from worker_manager.core.logs import get_logger
from worker_manager.egress.grants import CONTAINER_SOCKET_DIR
from worker_manager.images.spec import RUNTIME, WORKDIR
from worker_manager.settings import Settings
from worker_manager.workers.state.evidence import LOG_LINES, LastWords
from worker_manager.workspaces.volumes import HOME_MOUNT, WorkerVolumes

log = get_logger(__name__)

WORKER_UID = 1000
#: The wrapper's user in a worker container, and all it may do beyond file permissions: start
#: its agent as another user (SETUID, SETGID) and signal that agent's processes (KILL).
WRAPPER_USER = "0:0"
WRAPPER_CAPABILITIES = ("SETUID", "SETGID", "KILL")


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
    #: The mirror volume its workspace borrows objects from (a repository's), read-only.
    mirror: str | None = None
    #: Mounts besides its own volumes (a ``DOCKER`` worker's engine socket volume).
    extra_mounts: tuple[Mount, ...] = ()


@dataclass(frozen=True, slots=True)
class Started:
    container_id: str
    ip_address: str
    started_at: float
    #: The image hash the container was started from (its label), when read.
    image_hash: str = ""


@dataclass(frozen=True, slots=True)
class TarEntry:
    """One entry of an archive copied into a container: a file, or a directory (``text`` None)."""

    name: str
    text: str | None
    mode: int
    uid: int = WORKER_UID


def _tar_of(files: dict[str, str], mode: int = 0o644) -> bytes:
    """The agent's files (the instructions), owned by the agent's user."""
    return _tar_entries([TarEntry(name, text, mode) for name, text in files.items()])


def _tar_entries(entries: list[TarEntry]) -> bytes:
    """Extracted in this order, each with its owner and mode."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.mode = entry.mode
            info.uid = info.gid = entry.uid
            info.mtime = int(time.time())
            if entry.text is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                continue
            data = entry.text.encode("utf-8")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def handover_entries(assignment: dict[str, str]) -> list[TarEntry]:
    """The pooled hand-over, relative to ``/home``: the wrapper's directories (root's), the
    assignment (root only: it holds the worker's Redis password) and, last, the marker."""
    top = CONTAINER_WRAPPER_DIR.removeprefix(f"{HOME_MOUNT}/")
    private = f"{top}/{PRIVATE}"
    return [
        TarEntry(f"{top}/", None, 0o755, 0),
        TarEntry(f"{private}/", None, 0o700, 0),
        TarEntry(f"{private}/{ASSIGNMENT}", json.dumps(assignment), 0o600, 0),
        TarEntry(f"{private}/{READY}", "", 0o600, 0),
    ]


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
        self.volumes = WorkerVolumes(settings, docker)

    def name(self, worker_id: str) -> str:
        return self._settings.keys.docker_name(worker_id)  # "<prefix>-<id>", e.g. worker-<uuid>

    def labels(self, worker_id: str, image_hash: str) -> dict[str, str]:
        return {
            LABEL_WORKER: worker_id,
            LABEL_MANAGER: self._settings.manager_id,
            LABEL_HASH: image_hash,
            LABEL_PREFIX: self._settings.keys.prefix,
        }

    def volume_names(self, worker_id: str) -> list[str]:
        return self.volumes.names(worker_id)

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
                user=WRAPPER_USER,
                init=True,
                security_opt=["no-new-privileges:true"],
                cap_drop=["ALL"],
                cap_add=list(WRAPPER_CAPABILITIES),
                read_only=True,
                mounts=[*self.volumes.mounts(spec.worker_id, spec.mirror), *spec.extra_mounts],
                tmpfs={"/tmp": f"rw,nosuid,nodev,size={s.container_tmp_size},mode=1777"},
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
        self, worker_id: str, files: dict[str, str], assignment: dict[str, str]
    ) -> Started | None:
        """Hand a running warm-pool container its worker: the instructions into the working
        directory, then the assignment (readable by the worker's user only) and, last, the
        marker its wrapper waits for. None when the container is no longer running."""
        return await docker_client.call(self._assign_sync, worker_id, files, assignment)

    def _assign_sync(
        self, worker_id: str, files: dict[str, str], assignment: dict[str, str]
    ) -> Started | None:
        try:
            container = self._docker.containers.get(self.name(worker_id))
            if container.status != "running":
                return None
            # The instructions first, then one archive extracted in order: the assignment and,
            # last, the marker the wrapper waits for (so it never reads a half-written one).
            # Two archives, since the root filesystem is read-only: each goes to its volume.
            if files:
                container.put_archive(WORKDIR, _tar_of(files))
            container.put_archive(HOME_MOUNT, _tar_entries(handover_entries(assignment)))
        except docker.errors.NotFound:
            return None
        started = (container.attrs.get("State") or {}).get("StartedAt", "")
        return Started(
            str(container.id),
            ip_of(container.attrs),
            _parse_docker_time(started),
            image_hash=str(container.labels.get(LABEL_HASH, "")),
        )

    async def image_of(self, worker_id: str) -> str | None:
        """The image a running container of the worker runs (by ID); None when there is none."""
        return await docker_client.call(self._image_of_sync, worker_id)

    def _image_of_sync(self, worker_id: str) -> str | None:
        try:
            container = self._docker.containers.get(self.name(worker_id))
        except docker.errors.NotFound:
            return None
        if container.status != "running":
            return None
        return str(container.attrs.get("Image") or "") or None

    async def pooled(self) -> list[dict[str, Any]]:
        """This manager's warm-pool containers (all states, taken or not)."""
        return await docker_client.call(self._pooled_sync)

    def _pooled_sync(self) -> list[dict[str, Any]]:
        filters = {
            "label": [
                LABEL_POOL,
                f"{LABEL_MANAGER}={self._settings.manager_id}",
                f"{LABEL_PREFIX}={self._settings.keys.prefix}",
            ]
        }
        found: list[dict[str, Any]] = self._docker.api.containers(all=True, filters=filters)
        return found

    async def remove(self, worker_id: str, *, keep_volumes: bool = False) -> int | None:
        """Stop (SIGTERM, then SIGKILL after the timeout) and remove, with its volumes unless
        ``keep_volumes`` (a suspend); the exit code if known."""
        return await docker_client.call(self._remove_sync, worker_id, keep_volumes)

    def _remove_sync(self, worker_id: str, keep_volumes: bool) -> int | None:
        exit_code = self._remove_container_sync(worker_id)
        if not keep_volumes:
            self.volumes.remove(worker_id)
        return exit_code

    async def last_words(self, worker_id: str) -> LastWords | None:
        """Stop the container (as :meth:`remove` would) and read its exit and its log's last
        lines before it is removed; None when there is no container."""
        return await docker_client.call(self._last_words_sync, worker_id)

    def _last_words_sync(self, worker_id: str) -> LastWords | None:
        try:
            container = self._docker.containers.get(self.name(worker_id))
            state = self._stopped_state_sync(container)
            log = container.logs(stdout=True, stderr=True, tail=LOG_LINES)
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as exc:
            unread = f"(the container's log could not be read: {str(exc)[:200]})"
            return LastWords(None, False, unread.encode())
        exit_code = state.get("ExitCode")
        return LastWords(
            int(exit_code) if exit_code is not None else None,
            bool(state.get("OOMKilled")),
            log if isinstance(log, bytes) else b"",
        )

    def _stopped_state_sync(self, container: Any) -> dict[str, Any]:
        """Stop the container (SIGTERM, SIGKILL after the timeout) if it runs; its final state."""
        if container.status in ("running", "restarting", "paused"):
            container.stop(timeout=self._settings.stop_timeout_seconds)
        container.reload()
        state: dict[str, Any] = container.attrs.get("State") or {}
        return state

    def _remove_container_sync(self, worker_id: str) -> int | None:
        try:
            container = self._docker.containers.get(self.name(worker_id))
        except docker.errors.NotFound:
            return None
        exit_code: int | None = None
        try:
            exit_code = int(self._stopped_state_sync(container).get("ExitCode", 0))
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

    async def listed_volumes(self) -> list[dict[str, Any]]:
        """This manager's worker volumes, as Docker lists them."""
        return await docker_client.call(self.volumes.listed)

    async def remove_volumes(self, worker_id: str) -> None:
        await docker_client.call(self.volumes.remove, worker_id)

    def _find_all_sync(self) -> list[dict[str, Any]]:
        filters = {
            "label": [
                f"{LABEL_MANAGER}={self._settings.manager_id}",
                f"{LABEL_PREFIX}={self._settings.keys.prefix}",
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
