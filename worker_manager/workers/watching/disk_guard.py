"""A worker's writes are bounded by ``WM_CONTAINER_DISK`` (SPEC §7), measured by the manager.

A worker writes only its two volumes (``workers.resources.containers``: its root filesystem is
read-only and ``/tmp`` a tmpfs bounded by its memory). Where the storage driver could enforce a
quota (``--storage-opt size``, on overlay2 over XFS with project quotas) it would bound the
container's own layer, not its volumes, and fuse-overlayfs enforces none: so the manager
measures. Every ``WM_DISK_CHECK_INTERVAL_SECONDS`` (10 s) it walks each live worker's volumes
where the Engine keeps them (``Mountpoint``, read as root on the Docker host; in docker-compose
``/var/lib/docker/volumes`` is mounted read-only into the manager at the same path), counting
the blocks every file occupies without following a link, and a worker whose volumes hold more
than the limit, or more than :data:`MAX_ENTRIES` files and directories, is FAILED with
``reason=disk_exceeded`` (its container and volumes are removed as for any end). A volume the
manager cannot read is measured by the Engine instead (``docker system df``, which walks every
volume of the host at once and of which the Engine runs one at a time).

What this bounds and what it does not, knowingly: a worker can write for up to one interval past
the limit before it is stopped (at 1 GB/s, ~10 GB: keep the host's free space above the fleet's
limits plus that). The decision is :func:`over_limit`, a plain function of the measurements.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection, Mapping
from typing import Any

import docker.errors
from docker import DockerClient
from redis.exceptions import RedisError

from worker_manager.contract.labels import LABEL_PREFIX, LABEL_WORKER
from worker_manager.contract.reasons import Ended
from worker_manager.core import docker_client
from worker_manager.core.logs import get_logger
from worker_manager.settings import Settings
from worker_manager.workers.resources.containers import ContainerRuntime
from worker_manager.workers.state.records import WorkerStore
from worker_manager.workers.transitions.lifecycle import Lifecycle, Outcome

log = get_logger(__name__)

#: More files and directories than this in a worker's volumes count as over its limit: a walk
#: must stay cheap whatever the agent made (a million empty files use no blocks, but inodes).
MAX_ENTRIES = 1_000_000


def walk_size(root: str, max_entries: int = MAX_ENTRIES) -> tuple[int, int]:
    """Bytes of disk used below ``root`` (allocated blocks, links not followed) and how many
    entries were seen; stops counting entries once past ``max_entries``."""
    used = entries = 0
    pending = [root]
    while pending and entries <= max_entries:
        directory = pending.pop()
        try:
            with os.scandir(directory) as listing:
                for entry in listing:
                    entries += 1
                    if entries > max_entries:
                        break
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    used += info.st_blocks * 512
                    if stat.S_ISDIR(info.st_mode):
                        pending.append(entry.path)
        except OSError:
            continue  # gone, or not a directory any more: the agent may be changing it
    return used, entries


def usage_by_worker(volumes: list[dict[str, Any]], key_prefix: str) -> dict[str, int]:
    """Bytes per worker of this deployment, from ``docker system df``'s volume rows."""
    used: dict[str, int] = {}
    for volume in volumes:
        labels = volume.get("Labels") or {}
        worker_id = labels.get(LABEL_WORKER)
        if not worker_id or labels.get(LABEL_PREFIX) != key_prefix:
            continue
        size = (volume.get("UsageData") or {}).get("Size", 0)
        counted = size if isinstance(size, int) and size > 0 else 0
        used[worker_id] = used.get(worker_id, 0) + counted
    return used


def over_limit(live: Collection[str], used: Mapping[str, int], limit: int) -> list[str]:
    """The live workers whose volumes hold more than ``limit`` bytes."""
    return sorted(worker_id for worker_id in live if used.get(worker_id, 0) > limit)


def over_entries(live: Collection[str], entries: Mapping[str, int], limit: int) -> list[str]:
    """The live workers whose volumes hold more than ``limit`` files and directories."""
    return sorted(worker_id for worker_id in live if entries.get(worker_id, 0) > limit)


class DiskGuard:
    def __init__(
        self,
        settings: Settings,
        docker: DockerClient,
        containers: ContainerRuntime,
        store: WorkerStore,
        lifecycle: Lifecycle,
    ) -> None:
        self._settings = settings
        self._docker = docker
        self._containers = containers
        self._store = store
        self._lifecycle = lifecycle
        self.limit = settings.container_disk_bytes
        #: Rounds that measured (for tests and metrics: a verdict has been reached that often).
        self.measured = 0
        #: Volume name -> where the Engine keeps it (volumes do not move).
        self._mountpoints: dict[str, str] = {}

    async def round(self) -> None:
        """Measure every live worker's volumes once; end the workers over the limit."""
        try:
            live = await self._store.live_ids()
        except RedisError as exc:
            log.warning("disk check skipped: Redis", error=str(exc))
            return
        if not live:
            return
        try:
            used, entries = await docker_client.call(self._measure, live)
        except docker.errors.APIError as exc:
            # 500 when the Engine already runs a df (another manager's): next round.
            log.info("disk check skipped: the Engine did not measure", error=str(exc))
            return
        self.measured += 1
        for worker_id in sorted(
            set(over_limit(live, used, self.limit)) | set(over_entries(live, entries, MAX_ENTRIES))
        ):
            log.warning(
                "worker over its disk limit",
                worker_id=worker_id,
                bytes=used.get(worker_id, 0),
                entries=entries.get(worker_id, 0),
                limit=self.limit,
            )
            await self._lifecycle.end(worker_id, Outcome(Ended.DISK_EXCEEDED))

    def _measure(self, live: list[str]) -> tuple[dict[str, int], dict[str, int]]:
        """Bytes and entries per worker: each volume walked where it lies, or, for any the
        manager cannot read, the Engine's own count of all volumes."""
        used: dict[str, int] = {}
        entries: dict[str, int] = {}
        unreadable = False
        wanted = {n for w in live for n in self._containers.volume_names(w)}
        self._mountpoints = {n: p for n, p in self._mountpoints.items() if n in wanted}
        for worker_id in live:
            for name in self._containers.volume_names(worker_id):
                path = self._mountpoint(name)
                if path is None:
                    continue  # not created yet (a create in progress) or already removed
                if not os.access(path, os.R_OK | os.X_OK):
                    unreadable = True
                    continue
                size, count = walk_size(path)
                used[worker_id] = used.get(worker_id, 0) + size
                entries[worker_id] = entries.get(worker_id, 0) + count
        if unreadable:
            report = self._docker.api.df()
            for worker_id, size in usage_by_worker(
                list(report.get("Volumes") or []), self._settings.keys.prefix
            ).items():
                used[worker_id] = max(used.get(worker_id, 0), size)
        return used, entries

    def _mountpoint(self, name: str) -> str | None:
        if name not in self._mountpoints:
            try:
                info = self._docker.api.inspect_volume(name)
            except docker.errors.NotFound:
                return None
            self._mountpoints[name] = str(info.get("Mountpoint") or "")
        return self._mountpoints[name] or None
