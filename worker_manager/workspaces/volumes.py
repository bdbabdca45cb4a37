"""A worker's volumes, and the mirrors of the repositories its workspace borrows objects from.

Each worker has two Docker volumes named after its container (``<prefix>-<id>``):

* ``<name>-home`` at ``/home``: the agent's home (``/home/worker``) and the wrapper's own files
  (``/home/.worker-manager``, root's: ``worker_base.identity``);
* ``<name>-workspace`` at ``/workspace``: the working directory, where a repository is checked
  out.

Both are labelled with the worker's id, manager and key prefix (and ``worker-manager.volume``:
which one), outlive the container while the worker is suspended, and are removed when it ends.
A repository's mirror is a volume of its own, ``<prefix>-mirror-<digest of the URL>``
(labelled ``worker-manager.mirror`` with the URL), shared by every worker of that URL on this
host, mounted read-only into each; :mod:`worker_manager.workspaces.checkout` writes it.
"""

from __future__ import annotations

import hashlib
from typing import Any

import docker.errors
from docker import DockerClient
from docker.types import Mount

from worker_manager.contract.labels import (
    LABEL_MANAGER,
    LABEL_MIRROR,
    LABEL_PREFIX,
    LABEL_VOLUME,
    LABEL_WORKER,
)
from worker_manager.core.logs import get_logger
from worker_manager.images.spec import MIRROR_DIR, WORKDIR
from worker_manager.settings import Settings

log = get_logger(__name__)

HOME_MOUNT = "/home"
#: A worker's volumes: suffix of the volume's name -> where it is mounted.
VOLUMES = (("home", HOME_MOUNT), ("workspace", WORKDIR))
WORKSPACE = "workspace"


class WorkerVolumes:
    """Names, mounts and the lifetime of workers' volumes and mirrors (blocking calls: run them
    in a thread, as ``core.docker_client.call`` does)."""

    def __init__(self, settings: Settings, docker: DockerClient) -> None:
        self._settings = settings
        self._docker = docker

    # --- names and labels ---------------------------------------------------------------------
    def name(self, worker_id: str, suffix: str) -> str:
        return f"{self._settings.keys.docker_name(worker_id)}-{suffix}"

    def names(self, worker_id: str) -> list[str]:
        return [self.name(worker_id, suffix) for suffix, _ in VOLUMES]

    def labels(self, worker_id: str, suffix: str) -> dict[str, str]:
        return {
            LABEL_WORKER: worker_id,
            LABEL_MANAGER: self._settings.manager_id,
            LABEL_PREFIX: self._settings.keys.prefix,
            LABEL_VOLUME: suffix,
        }

    def mirror_name(self, url: str) -> str:
        digest = hashlib.sha256(url.encode()).hexdigest()[:20]
        return f"{self._settings.keys.docker_prefix}-mirror-{digest}"

    def mounts(self, worker_id: str, mirror: str | None = None) -> list[Mount]:
        """The worker's volumes (the Engine creates any that is missing, labelled, filled from
        the image's directory at its mount point) and, read-only, its repository's mirror."""
        mounts = [
            Mount(
                target=target,
                source=self.name(worker_id, suffix),
                type="volume",
                labels=self.labels(worker_id, suffix),
            )
            for suffix, target in VOLUMES
        ]
        if mirror:
            mounts.append(Mount(target=MIRROR_DIR, source=mirror, type="volume", read_only=True))
        return mounts

    # --- lifetime -----------------------------------------------------------------------------
    def ensure(self, worker_id: str, suffix: str) -> str:
        """The worker's volume ``suffix``, created (labelled, empty) when missing."""
        name = self.name(worker_id, suffix)
        self._docker.volumes.create(name, labels=self.labels(worker_id, suffix))
        return name

    def ensure_mirror(self, url: str) -> str:
        name = self.mirror_name(url)
        self._docker.volumes.create(
            name,
            labels={
                LABEL_MIRROR: url[:1024],
                LABEL_MANAGER: self._settings.manager_id,
                LABEL_PREFIX: self._settings.keys.prefix,
            },
        )
        return name

    def remove(self, worker_id: str) -> None:
        """Its home and workspace, and every other volume labelled as its own (its services'
        data, SPEC §9)."""
        names = set(self.names(worker_id))
        names.update(
            str(v.get("Name", ""))
            for v in self._listed(f"{LABEL_WORKER}={worker_id}")
            if v.get("Name")
        )
        for name in sorted(names):
            self._remove_one(name)

    def remove_mirror(self, name: str) -> None:
        self._remove_one(name)

    def _remove_one(self, name: str) -> None:
        try:
            self._docker.api.remove_volume(name, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:
                raise
            # Still in use (a container removal under way): the reconciler removes it.
            log.warning("a volume is still in use", volume=name, error=str(exc))

    def listed(self) -> list[dict[str, Any]]:
        """This manager's worker volumes, as Docker lists them."""
        return self._listed(LABEL_VOLUME)

    def mirrors(self) -> list[dict[str, Any]]:
        """This manager's mirrors, as Docker lists them."""
        return self._listed(LABEL_MIRROR)

    def _listed(self, label: str) -> list[dict[str, Any]]:
        filters = {
            "label": [
                label,
                f"{LABEL_MANAGER}={self._settings.manager_id}",
                f"{LABEL_PREFIX}={self._settings.keys.prefix}",
            ]
        }
        found: list[dict[str, Any]] = self._docker.api.volumes(filters=filters).get("Volumes") or []
        return found
