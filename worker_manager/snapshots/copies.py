"""A worker's state copied, volume to volume, by a short-lived container (SPEC §10).

One container copies a source's home and workspace into every target at once: the base image
(every host has it), no network, root with only what preserving owners and modes needs
(``CHOWN``, ``DAC_OVERRIDE``, ``FOWNER``, ``FSETID``), ``no-new-privileges``; the source's
volumes read-only. ``cp -a --reflink=auto`` shares blocks where the filesystem can (btrfs, XFS)
and copies them elsewhere (ext4 under fuse-overlayfs or overlay2: a plain volume is a
directory); git's objects are not in the workspace (its clone borrows them from the
repository's mirror), so what is copied is the checkout and the work. Each worker target gets
the marker its wrapper settles at its start (``worker_base.forks``). The container is removed
whatever happens; a copy that fails removes the targets it made.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import docker.errors
from docker import DockerClient
from docker.types import Mount

from worker_manager.contract.labels import LABEL_MANAGER, LABEL_PREFIX
from worker_manager.core.logs import get_logger
from worker_manager.settings import Settings

log = get_logger(__name__)

#: The copy's capabilities: preserve owners, modes and the agent's files root cannot read.
COPY_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID")
COPY_TIMEOUT_SECONDS = 1800

_SCRIPT = r"""
set -eu
total=$(du -sb /from | cut -f1)
for target in /to/*; do
  for part in home workspace; do
    cp -a --reflink=auto "/from/$part/." "$target/$part/"
  done
  if [ -n "${WM_MARKER:-}" ]; then
    private="$target/home/.worker-manager/private"  # worker_base.identity's, root's
    mkdir -p "$private" && chmod 700 "$private"
    printf '%s' "$WM_MARKER" > "$private/forked.json"  # worker_base.forks.MARKER
    chmod 600 "$private/forked.json"
  fi
done
echo "$total"
"""


class CopyFailed(RuntimeError):
    """The copy did not finish; the message says why (the copy's own words)."""


@dataclass(frozen=True, slots=True)
class Volume:
    name: str
    labels: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Target:
    """Where one copy goes: its two volumes, made with their labels."""

    home: Volume
    workspace: Volume


class StateCopier:
    def __init__(self, settings: Settings, docker: DockerClient) -> None:
        self._settings = settings
        self._docker = docker

    def copy(
        self,
        source: tuple[str, str],
        targets: Sequence[Target],
        *,
        forked_from: str | None = None,
    ) -> int:
        """Copy ``source`` (home, workspace volumes) into each target; the bytes of the source.
        ``forked_from``: leave each target's wrapper the fork marker. Blocking."""
        made: list[str] = []
        try:
            for target in targets:
                for volume in (target.home, target.workspace):
                    self._docker.volumes.create(volume.name, labels=dict(volume.labels))
                    made.append(volume.name)
            return self._run(source, targets, forked_from)
        except Exception:
            for name in made:
                self.remove_volume(name)
            raise

    def _run(
        self, source: tuple[str, str], targets: Sequence[Target], forked_from: str | None
    ) -> int:
        mounts = [
            Mount("/from/home", source[0], type="volume", read_only=True),
            Mount("/from/workspace", source[1], type="volume", read_only=True),
        ]
        for i, target in enumerate(targets):
            mounts.append(Mount(f"/to/{i}/home", target.home.name, type="volume"))
            mounts.append(Mount(f"/to/{i}/workspace", target.workspace.name, type="volume"))
        marker = json.dumps({"forked_from": forked_from}) if forked_from else ""
        name = f"{self._settings.keys.docker_prefix}-copy-{uuid.uuid4().hex[:12]}"
        container = self._docker.containers.create(
            self._settings.base_image,
            ["sh", "-c", _SCRIPT],
            name=name,
            labels={
                LABEL_MANAGER: self._settings.manager_id,
                LABEL_PREFIX: self._settings.keys.prefix,
            },
            environment={"WM_MARKER": marker},
            user="0:0",
            network_mode="none",
            security_opt=["no-new-privileges:true"],
            cap_drop=["ALL"],
            cap_add=list(COPY_CAPABILITIES),
            mounts=mounts,
            detach=True,
        )
        try:
            container.start()
            result = container.wait(timeout=COPY_TIMEOUT_SECONDS)
            output = container.logs(stdout=True, stderr=True).decode("utf-8", "replace").strip()
        finally:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        if int(result.get("StatusCode", 1)) != 0:
            raise CopyFailed(output[-500:] or f"the copy exited with {result.get('StatusCode')}")
        last = output.splitlines()[-1] if output else ""
        return int(last) if last.isdigit() else 0

    def remove_volume(self, name: str) -> None:
        try:
            self._docker.api.remove_volume(name, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            log.warning("a copy's volume could not be removed", volume=name, error=str(exc))
