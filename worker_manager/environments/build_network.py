"""The network of an environment's build: the package hosts of ``WM_BUILD_EGRESS``, nothing else.

A ``run`` line is as hostile as an agent, and it runs as root during the build; so a build that
installs anything (``recipe.needs_network``) gets the containment a worker gets, not Docker's
bridge (from which the host's ports are reachable):

1. a grant at the host's egress service, ``build-<hash12>``, whose destinations are
   ``WM_BUILD_EGRESS`` (no gateway token, no Redis relay used, no refusal written to Redis);
2. a sidecar container from the build's base image, ``--network none`` (its loopback only),
   hardened like a worker (every capability dropped, no-new-privileges, read-only, bounded)
   and labelled with the manager's labels, with the grant's socket directory mounted at
   ``/run/wm``. It runs the wrapper's own loopback relay (``worker_base.relays``, its source
   passed to ``python3 -I -S``: the base has no wrapper yet) from ``127.0.0.1:3128`` to
   ``proxy.sock``, and serves the operator's extra CAs (``WM_BUILD_CA_FILES``) on
   ``127.0.0.1:`` :data:`~worker_manager.environments.recipe.CA_PORT`;
3. ``docker build --network container:<sidecar>``: every ``RUN`` step shares the sidecar's
   namespace, so it reaches the relay and nothing else; the proxy variables are Docker's
   predefined build arguments (in no layer, no history, no cache key).

The sidecar is removed and the grant revoked when the build ends, fails or is cancelled;
:meth:`EgressBuildNetwork.sweep` removes what a crashed manager left (by label, at start).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import docker.errors
from docker import DockerClient
from docker.types import LogConfig

import worker_base.relays
from worker_manager.contract.labels import LABEL_BUILD_NETWORK, LABEL_MANAGER, LABEL_PREFIX
from worker_manager.core import docker_client
from worker_manager.core.logs import get_logger
from worker_manager.egress.control import EgressClient, EgressRefused, EgressUnavailable
from worker_manager.egress.grants import (
    BUILD_GRANT_PREFIX,
    CONTAINER_SOCKET_DIR,
    PROXY_PORT,
    PROXY_SOCKET,
    Grant,
)
from worker_manager.environments.recipe import CA_PORT
from worker_manager.settings import Settings
from worker_manager.typing import BuildRoute

log = get_logger(__name__)

#: The grants of builds are named so (the egress service's ids; a worker id is a UUID).
GRANT_PREFIX = BUILD_GRANT_PREFIX
#: Who the sidecar runs as, and who may connect to the grant's sockets.
SIDECAR_UID = 1000
#: Where the operator's extra CAs are mounted in the sidecar (one file each).
CA_DIR = "/run/wm-ca"
#: What the sidecar prints once both loopback servers listen.
READY = "wm-build-network ready"
READY_TIMEOUT_SECONDS = 30.0
#: A build grant without a sidecar is a leftover once it is this old (younger, its build may
#: be starting its sidecar right now, on another manager of this host).
GRANT_GRACE_SECONDS = 120.0
_PROXY_URL = f"http://127.0.0.1:{PROXY_PORT}"
#: Docker's predefined build arguments for a proxy: usable by RUN steps without an ``ARG``,
#: kept out of ``docker history`` and the image.
PROXY_BUILD_ARGS = {
    "http_proxy": _PROXY_URL,
    "https_proxy": _PROXY_URL,
    "HTTP_PROXY": _PROXY_URL,
    "HTTPS_PROXY": _PROXY_URL,
    "no_proxy": "127.0.0.1,localhost",
    "NO_PROXY": "127.0.0.1,localhost",
}

#: The sidecar's program: the wrapper's relay module, then this.
_MAIN = f"""

async def _wm_build_network():
    import os
    relays = LoopbackRelays((({PROXY_PORT}, {CONTAINER_SOCKET_DIR + "/" + PROXY_SOCKET!r}),))
    await relays.start()
    names = sorted(os.listdir({CA_DIR!r})) if os.path.isdir({CA_DIR!r}) else []
    cas = b"".join(
        open(os.path.join({CA_DIR!r}, name), "rb").read().rstrip(b"\\n") + b"\\n"
        for name in names
    )

    async def serve_cas(reader, writer):
        writer.write(cas)
        try:
            await writer.drain()
        finally:
            writer.close()

    await asyncio.start_server(serve_cas, "127.0.0.1", {CA_PORT})
    print({READY!r}, flush=True)
    await asyncio.Event().wait()


asyncio.run(_wm_build_network())
"""


def sidecar_program() -> str:
    """``worker_base.relays``' own source and the sidecar's main: one ``-c`` argument."""
    return Path(worker_base.relays.__file__).read_text() + _MAIN


def grant_id(image_hash: str) -> str:
    return f"{GRANT_PREFIX}{image_hash[:12]}"


class BuildNetworkError(RuntimeError):
    """The build's network could not be opened (the message says which part and why)."""


class EgressBuildNetwork:
    """:class:`worker_manager.typing.BuildNetwork` through the host's egress service."""

    def __init__(self, settings: Settings, docker: DockerClient, egress: EgressClient) -> None:
        self._settings = settings
        self._docker = docker
        self._egress = egress

    @asynccontextmanager
    async def route(self, image_hash: str, base_image: str) -> AsyncIterator[BuildRoute]:
        grant = Grant(
            worker_id=grant_id(image_hash),
            key_prefix=self._settings.key_prefix,
            egress=tuple(self._settings.build_egress),
            uid=SIDECAR_UID,
            gid=SIDECAR_UID,
            report=False,
        )
        name = f"wm-build-{image_hash[:12]}-{secrets.token_hex(3)}"
        try:
            try:
                sockets = await self._egress.grant(grant)
            except (EgressUnavailable, EgressRefused) as exc:
                raise BuildNetworkError(f"the build's egress grant failed: {exc}") from None
            container_id = await docker_client.call(
                self._start_sidecar, name, image_hash, base_image, str(sockets)
            )
            await self._wait_ready(container_id)
            yield BuildRoute(f"container:{container_id}", dict(PROXY_BUILD_ARGS))
        finally:
            await asyncio.shield(self._close(name, grant.worker_id))

    def _start_sidecar(self, name: str, image_hash: str, base: str, sockets: str) -> str:
        volumes = {sockets: {"bind": CONTAINER_SOCKET_DIR, "mode": "ro"}}
        for number, path in enumerate(self._settings.build_ca_files):
            volumes[str(path.resolve())] = {"bind": f"{CA_DIR}/{number:03d}.pem", "mode": "ro"}
        # Docker's default runtime, whatever WM_CONTAINER_RUNTIME says: the sidecar runs only
        # the relay (the build's steps run in the builder's own containers), and its network
        # namespace must be the kernel's for the steps that join it.
        try:
            container = self._docker.containers.run(
                base,
                ["python3", "-I", "-S", "-B", "-u", "-c", sidecar_program()],
                name=name,
                detach=True,
                network_mode="none",
                user=f"{SIDECAR_UID}:{SIDECAR_UID}",
                working_dir="/",
                environment={"LANG": "C.UTF-8"},
                labels={
                    LABEL_BUILD_NETWORK: image_hash,
                    LABEL_MANAGER: self._settings.manager_id,
                    LABEL_PREFIX: self._settings.key_prefix,
                },
                volumes=volumes,
                read_only=True,
                security_opt=["no-new-privileges:true"],
                cap_drop=["ALL"],
                mem_limit="128m",
                memswap_limit="128m",
                pids_limit=64,
                log_config=LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
            )
        except docker.errors.DockerException as exc:
            raise BuildNetworkError(f"the build's network sidecar did not start: {exc}") from None
        return str(container.id)

    async def _wait_ready(self, container_id: str) -> None:
        """Until the sidecar says both servers listen; its own words if it dies first."""
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while True:
            state, logs = await docker_client.call(self._sidecar_state, container_id)
            if READY in logs:
                return
            if state != "running" or time.monotonic() > deadline:
                raise BuildNetworkError(
                    f"the build's network sidecar is not ready ({state}): {logs.strip()[-500:]}"
                )
            await asyncio.sleep(0.05)

    def _sidecar_state(self, container_id: str) -> tuple[str, str]:
        container = self._docker.containers.get(container_id)
        logs = container.logs(stdout=True, stderr=True).decode("utf-8", "replace")
        return str(container.status), logs

    async def _close(self, name: str, grant: str) -> None:
        """Remove the sidecar and revoke the grant; each failure is logged, never raised (the
        build's own result matters more, and :meth:`sweep` finds what is left)."""
        try:
            await docker_client.call(self._remove, name)
        except docker.errors.DockerException as exc:
            log.warning("build sidecar not removed", name=name, error=str(exc))
        try:
            await self._egress.revoke(grant)
        except (EgressUnavailable, EgressRefused) as exc:
            log.warning("build grant not revoked", grant=grant, error=str(exc))

    def _remove(self, name_or_id: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self._docker.api.remove_container(name_or_id, force=True)

    async def sweep(self, *, grace_seconds: float = GRANT_GRACE_SECONDS) -> list[str]:
        """What a crashed manager left: this manager's sidecars (by label), and the build
        grants of this key prefix that no sidecar on this host uses and that are older than
        ``grace_seconds``. Their names."""
        filters = {
            "label": [
                LABEL_BUILD_NETWORK,
                f"{LABEL_MANAGER}={self._settings.manager_id}",
                f"{LABEL_PREFIX}={self._settings.key_prefix}",
            ]
        }
        found: list[dict[str, Any]] = await docker_client.call(
            self._docker.api.containers, all=True, filters=filters
        )
        removed: list[str] = []
        for container in found:
            await docker_client.call(self._remove, str(container["Id"]))
            removed.append(str((container.get("Names") or [container["Id"]])[0]).lstrip("/"))
        in_use = {
            grant_id(str((c.get("Labels") or {}).get(LABEL_BUILD_NETWORK, "")))
            for c in await docker_client.call(
                self._docker.api.containers, all=True, filters={"label": LABEL_BUILD_NETWORK}
            )
        }
        for served in await self._egress.grants():
            if (
                served.worker_id.startswith(GRANT_PREFIX)
                and served.key_prefix == self._settings.key_prefix
                and served.worker_id not in in_use
                and served.age_seconds > grace_seconds
            ):
                await self._egress.revoke(served.worker_id)
                removed.append(served.worker_id)
        if removed:
            log.info("build network leftovers removed", removed=removed)
        return removed
