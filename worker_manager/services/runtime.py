"""Services' containers on the Engine: created, started, probed, read, removed, found by label.

Blocking Docker SDK calls run in a thread (``core.docker_client.call``). Every operation is
idempotent, because a create may be carried out again after a crash: a service's container is
found by its name; one that runs in the worker container's network namespace of this start is
kept, any other (stopped, or left from a container since replaced) is removed and created
again on the same volumes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import docker.errors
from docker import DockerClient
from docker.models.containers import Container

from worker_manager.contract.labels import (
    LABEL_MANAGER,
    LABEL_PREFIX,
    LABEL_SERVICE,
    LABEL_SERVICE_OF,
)
from worker_manager.core import docker_client
from worker_manager.core.logs import get_logger
from worker_manager.services.plan import STOP_SECONDS, ImageFacts
from worker_manager.settings import Settings

log = get_logger(__name__)

#: How much of a failed service's log its worker's reason quotes.
LOG_TAIL_LINES = 5
#: The probe run in the worker's container (it always has Python: every worker image does):
#: connects to the port on the shared loopback, exit 0 when something answers.
PROBE = (
    "import socket,sys\n"
    "try:\n"
    "    socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1).close()\n"
    "except OSError:\n"
    "    sys.exit(1)\n"
)
#: Nobody's: a probe needs no right at all.
PROBE_USER = "65534:65534"
#: How long one probe may take (it connects with a 1 s timeout).
PROBE_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class ServiceState:
    """A service's container as the Engine reports it."""

    running: bool
    exit_code: int | None = None
    oom: bool = False
    #: The last lines of its log (for a reason), when it is not running.
    log_tail: str = ""


class ServiceRuntime:
    def __init__(self, settings: Settings, docker: DockerClient) -> None:
        self._settings = settings
        self._docker = docker

    # --- images -------------------------------------------------------------------------------
    async def image_facts(self, tag: str) -> ImageFacts | None:
        """What the image declares; None when this host does not have it."""
        return await docker_client.call(self._image_facts_sync, tag)

    def _image_facts_sync(self, tag: str) -> ImageFacts | None:
        try:
            attrs: dict[str, Any] = self._docker.api.inspect_image(tag)  # type: ignore[no-untyped-call]
        except docker.errors.ImageNotFound:
            return None
        return ImageFacts.of(attrs)

    # --- containers ---------------------------------------------------------------------------
    async def launch(
        self,
        options: dict[str, Any],
        worker_container_id: str,
        *,
        create: Callable[[dict[str, Any]], Container] | None = None,
    ) -> str:
        """The service's container, running in the worker's namespace; its id. ``create``
        creates it from ``options`` (blocking) when ``containers.create`` cannot express them
        (the Docker engine's sidecar)."""
        return await docker_client.call(self._launch_sync, options, worker_container_id, create)

    def _launch_sync(
        self,
        options: dict[str, Any],
        worker_container_id: str,
        create: Callable[[dict[str, Any]], Container] | None = None,
    ) -> str:
        name = str(options["name"])
        try:
            container = self._docker.containers.get(name)
        except docker.errors.NotFound:
            container = None
        if container is not None:
            mode = str((container.attrs.get("HostConfig") or {}).get("NetworkMode") or "")
            if container.status == "running" and mode == f"container:{worker_container_id}":
                return str(container.id)
            container.remove(force=True)
        try:
            if create is not None:
                container = create(options)
            else:
                rest = dict(options)
                container = self._docker.containers.create(rest.pop("image"), **rest)
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: a concurrent attempt created it first
                raise
            container = self._docker.containers.get(name)
        container.start()
        return str(container.id)

    async def state(self, container_id: str) -> ServiceState:
        return await docker_client.call(self._state_sync, container_id)

    def _state_sync(self, container_id: str) -> ServiceState:
        try:
            attrs = self._docker.api.inspect_container(container_id)
        except docker.errors.NotFound:
            return ServiceState(running=False, log_tail="(its container is gone)")
        state = attrs.get("State") or {}
        if state.get("Running"):
            return ServiceState(running=True)
        try:
            raw = self._docker.api.logs(container_id, tail=LOG_TAIL_LINES)
            tail = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""
        except docker.errors.APIError:
            tail = ""
        code = state.get("ExitCode")
        return ServiceState(
            running=False,
            exit_code=int(code) if code is not None else None,
            oom=bool(state.get("OOMKilled")),
            log_tail=tail.strip(),
        )

    async def probe(self, worker_container: str, port: int) -> bool:
        """Whether something answers on ``port`` of the worker's loopback (seen from inside)."""
        return await docker_client.call(self._probe_sync, worker_container, port)

    def _probe_sync(self, worker_container: str, port: int) -> bool:
        try:
            result = self._docker.api.exec_create(
                worker_container,
                ["python3", "-I", "-S", "-c", PROBE, str(port)],
                user=PROBE_USER,
                workdir="/",
                stdout=False,
                stderr=False,
            )
            self._docker.api.exec_start(result["Id"])
            # exec_start may return before the process ends (no output attached): its exit
            # code is known once the Engine says it no longer runs.
            deadline = time.monotonic() + PROBE_SECONDS
            while True:
                state = self._docker.api.exec_inspect(result["Id"])
                if not state.get("Running"):
                    return state.get("ExitCode") == 0
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.02)
        except docker.errors.APIError:
            return False

    async def remove(self, worker_id: str) -> list[str]:
        """Stop and remove every service container of the worker (its volumes stay: they are
        the worker's, removed with its own); the services' names."""
        return await docker_client.call(self._remove_sync, worker_id)

    def _remove_sync(self, worker_id: str) -> list[str]:
        removed: list[str] = []
        for found in self._listed_sync(worker_id):
            name = str((found.get("Labels") or {}).get(LABEL_SERVICE, ""))
            try:
                container = self._docker.containers.get(str(found["Id"]))
                if container.status in ("running", "restarting", "paused"):
                    container.stop(timeout=min(STOP_SECONDS, self._settings.stop_timeout_seconds))
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # removal already in progress
                    raise
            removed.append(name)
        return removed

    async def listed(self) -> list[dict[str, Any]]:
        """This manager's service containers (all states), as Docker lists them."""
        return await docker_client.call(self._listed_sync, None)

    def _listed_sync(self, worker_id: str | None) -> list[dict[str, Any]]:
        label = f"{LABEL_SERVICE_OF}={worker_id}" if worker_id else LABEL_SERVICE_OF
        filters = {
            "label": [
                label,
                f"{LABEL_MANAGER}={self._settings.manager_id}",
                f"{LABEL_PREFIX}={self._settings.keys.prefix}",
            ]
        }
        found: list[dict[str, Any]] = self._docker.api.containers(all=True, filters=filters)
        return found
