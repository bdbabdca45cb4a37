"""A create's repository, checked out into the worker's workspace before it runs (SPEC §8).

The work is ``python3 -m worker_base.checkout`` (see there) in a short-lived container of the
worker's own image: uid 1000, every capability dropped, a read-only root, the repository's
mirror volume and the worker's workspace volume mounted, and (contained) no network but the
egress proxy, on a grant of its own (``checkout.<worker id>``) that names the repository's host
alone (``contract.workspace.checkout_grant``) and whose refusals land on the worker's output.
The operator's git credentials are added by the proxy; no agent code runs there.

Why a container and not the manager: the fetch then goes through the same proxy, policy and
credentials as everything a worker does, the mirror is written only by git in a contained
sandbox, and it works unchanged when the manager is itself a container (docker-compose). One
checkout per mirror at a time (a Redis lock, renewed: several managers may share a host's
mirror), so concurrent creates of one repository fetch it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

import docker.errors
from docker import DockerClient
from docker.types import LogConfig, Mount
from redis.asyncio import Redis

from worker_base.config import relays_env
from worker_manager.contract.labels import LABEL_CHECKOUT, LABEL_MANAGER, LABEL_PREFIX
from worker_manager.contract.workspace import Repository, checkout_grant
from worker_manager.core import docker_client
from worker_manager.core.locks import RenewedLock
from worker_manager.core.logs import get_logger
from worker_manager.egress.control import EgressClient
from worker_manager.egress.grants import CONTAINER_SOCKET_DIR, RELAYS, Grant, proxy_env
from worker_manager.images.spec import MIRROR_DIR, RUNTIME, WORKDIR, isolated_python
from worker_manager.settings import Settings
from worker_manager.workspaces.volumes import WORKSPACE, WorkerVolumes

log = get_logger(__name__)

#: The checkout's own user: the worker's (it owns the workspace and the mirror directory).
CHECKOUT_USER = "1000:1000"
#: How long to wait for another checkout of the same mirror to finish.
MIRROR_LOCK_TTL_SECONDS = 30.0


class WorkspaceFailed(Exception):
    """The checkout failed; the message is git's own (``workspace_failed: …``)."""


@dataclass(frozen=True, slots=True)
class CheckedOut:
    #: The commit checked out (the base ``diff`` compares with).
    commit: str
    #: The branch the workspace is on, if any.
    branch: str | None
    #: The mirror volume the workspace borrows objects from (None: it holds its own).
    mirror: str | None


class Checkout:
    def __init__(
        self,
        settings: Settings,
        docker: DockerClient,
        redis: Redis,
        volumes: WorkerVolumes,
        egress: EgressClient | None,
    ) -> None:
        self._settings = settings
        self._docker = docker
        self._redis = redis
        self._volumes = volumes
        #: None when workers are not contained (``WM_EGRESS=off``): the checkout then has the
        #: open network too.
        self._egress = egress

    async def run(
        self, worker_id: str, image: str, repository: Repository, *, shared: bool = True
    ) -> CheckedOut:
        """Check ``repository`` out into the worker's workspace volume. ``shared``: the
        workspace borrows the mirror's objects (the worker then mounts the mirror); otherwise
        (a pooled container, started before its repository was known) it gets its own copy."""
        mirror = await docker_client.call(self._volumes.ensure_mirror, repository.url)
        await docker_client.call(self._volumes.ensure, worker_id, WORKSPACE)
        lock = RenewedLock(
            self._redis,
            f"{self._settings.keys.prefix}:lock:mirror:{mirror}",
            ttl_seconds=MIRROR_LOCK_TTL_SECONDS,
            owner=self._settings.manager_id,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.checkout_timeout_seconds
        while not await lock.acquire():
            if loop.time() > deadline:
                raise WorkspaceFailed("another checkout of this repository did not finish")
            await asyncio.sleep(0.2)
        grant_id = f"checkout.{worker_id}"
        await self._redis.set(
            self._settings.keys.mirror_used(mirror),
            str(int(time.time())),
            ex=int(self._settings.workspace_retention_days * 86_400) + 86_400,
        )
        try:
            sockets = await self._grant(grant_id, worker_id, repository)
            result = await docker_client.call(
                self._run_sync, worker_id, image, repository, mirror, sockets, shared
            )
        finally:
            await lock.release()
            if self._egress is not None:
                with contextlib.suppress(Exception):
                    await self._egress.revoke(grant_id)
        if not result.get("ok"):
            raise WorkspaceFailed(str(result.get("error") or "the checkout failed"))
        branch = result.get("branch")
        return CheckedOut(
            commit=str(result.get("commit", "")),
            branch=str(branch) if branch else None,
            mirror=mirror if shared and not repository.depth else None,
        )

    async def _grant(self, grant_id: str, worker_id: str, repository: Repository) -> str | None:
        if self._egress is None:
            return None
        uid = int(CHECKOUT_USER.partition(":")[0])
        grant = Grant(
            worker_id=grant_id,
            key_prefix=self._settings.keys.prefix,
            egress=(checkout_grant(repository.url, self._settings.sources),),
            uid=uid,
            gid=uid,
            output_maxlen=self._settings.output_maxlen,
            reports_to=worker_id,
        )
        return str(await self._egress.grant(grant))

    def _run_sync(
        self,
        worker_id: str,
        image: str,
        repository: Repository,
        mirror: str,
        sockets: str | None,
        shared: bool,
    ) -> dict[str, Any]:
        name = f"{self._settings.keys.docker_name(worker_id)}-checkout"
        with contextlib.suppress(docker.errors.NotFound):
            self._docker.containers.get(name).remove(force=True)  # a checkout cut short
        env = {
            **dict(RUNTIME.environment),
            "WM_CHECKOUT_URL": repository.url,
            "WM_CHECKOUT_REF": repository.ref,
            "WM_CHECKOUT_BRANCH": repository.branch,
            "WM_CHECKOUT_DEPTH": str(repository.depth or ""),
            "WM_CHECKOUT_SHARED": "1" if shared else "",
        }
        extra: dict[str, Any] = {}
        if sockets is not None:
            env.update(checkout_env())
            extra["network_mode"] = "none"
            extra["volumes"] = {sockets: {"bind": CONTAINER_SOCKET_DIR, "mode": "ro"}}
        else:
            extra["network"] = self._settings.container_network
        if self._settings.container_runtime:
            extra["runtime"] = self._settings.container_runtime
        container = self._docker.containers.create(
            image,
            name=name,
            entrypoint=list(isolated_python("worker_base.checkout")),
            user=CHECKOUT_USER,
            working_dir="/",
            environment=env,
            labels={
                LABEL_CHECKOUT: worker_id,
                LABEL_MANAGER: self._settings.manager_id,
                LABEL_PREFIX: self._settings.keys.prefix,
            },
            mounts=[
                Mount(target=MIRROR_DIR, source=mirror, type="volume"),
                Mount(
                    target=WORKDIR, source=self._volumes.name(worker_id, WORKSPACE), type="volume"
                ),
            ],
            read_only=True,
            tmpfs={"/tmp": f"rw,nosuid,nodev,size={self._settings.container_tmp_size},mode=1777"},
            security_opt=["no-new-privileges:true"],
            cap_drop=["ALL"],
            mem_limit=self._settings.container_memory,
            memswap_limit=self._settings.container_memory,
            pids_limit=self._settings.container_pids_limit,
            log_config=LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
            **extra,
        )
        try:
            container.start()
            try:
                container.wait(timeout=self._settings.checkout_timeout_seconds)
            except Exception:  # requests' ReadTimeout: the checkout ran past its time
                return {
                    "ok": False,
                    "error": f"the checkout ran past {self._settings.checkout_timeout_seconds:g} s",
                }
            out = container.logs(stdout=True, stderr=False).decode("utf-8", "replace")
        finally:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                container.remove(force=True)
        return parse_result(out)


def parse_result(out: str) -> dict[str, Any]:
    """The checkout's last JSON line; a failure when there is none (it crashed)."""
    for line in reversed(out.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and "ok" in value:
            return value
    tail = out.strip()[-500:]
    return {"ok": False, "error": f"the checkout ended without a result: {tail or 'no output'}"}


def checkout_env() -> dict[str, str]:
    """A contained checkout's way out, as a worker's: the proxy through its loopback relay."""
    return {**proxy_env(), "WM_RELAYS": relays_env(RELAYS[:1])}
