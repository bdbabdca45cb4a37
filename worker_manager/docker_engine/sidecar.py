"""The engine sidecar's container options, the volumes it shares, and the agent's variables.

The sidecar is created after its worker's container (it joins that container's network
namespace, ``network_mode="container:<worker>"``: the worker's loopback and nothing else) and
removed with it. Two volumes of the worker's own:

* **data** (:data:`~worker_manager.docker_engine.recipe.DATA_ROOT`): the engine's images,
  containers and build cache; a plain local volume (it takes the image's owner, uid 1000, and
  mode 0700 when first mounted), so it is counted with the worker's other volumes against
  ``WM_CONTAINER_DISK``;
* **socket** (:data:`WORKER_MOUNT_PATH`, in both containers): a ``tmpfs`` volume created with
  :func:`socket_volume_options` (owner uid 1000, mode 0700, 1 MiB), so its owner does not depend
  on which container mounts it first; it holds ``docker.sock`` and the agent's client config.
  In the worker only uid 1000 (the agent) can enter it: the wrapper's root holds no
  ``DAC_OVERRIDE``; no other worker mounts it.

Hardening (what :func:`engine_container_options` returns, and why it differs from a worker):

* every capability dropped but ``SETUID`` and ``SETGID``: the entry's first step runs as root
  only to make the sidecar's own copies of ``/dev/fuse`` and ``/dev/net/tun`` usable by uid
  1000 (``--device`` keeps the host node's mode, 0600 without udev), then ``setpriv`` drops to
  uid 1000 for good, which empties the permitted and effective sets; the two stay in the
  bounding set because ``newuidmap``/``newgidmap``'s file capabilities cannot be gained
  without them (exec of a file whose capabilities the bounding set lacks fails with EPERM);
* no ``no-new-privileges``: under it those file capabilities are not gained either;
* seccomp: our profile (:mod:`~worker_manager.docker_engine.profile`), Docker's default plus
  user namespaces and their mounts; AppArmor (where the Engine has it) ``unconfined``: Docker's
  profile denies ``mount``;
* ``/proc`` and ``/sys`` unmasked (the CLI's ``--security-opt systempaths=unconfined``, which
  the API does not take: it is ``MaskedPaths`` and ``ReadonlyPaths`` set empty,
  :data:`UNMASKED_PATHS`, which the SDK's ``containers.create`` cannot set; so
  :func:`create_engine_container`): with ``/proc``'s paths masked the kernel refuses an inner
  container its fresh ``proc`` mount (seen: "mount proc:/proc ... operation not permitted");
* read-only root filesystem, ``/tmp`` a bounded tmpfs (the engine's runtime files), memory,
  CPU and pids bounded like a worker's, bounded logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from docker import DockerClient
from docker.models.containers import (  # type: ignore[attr-defined]  # the SDK's own helper
    Container,
    _create_container_args,
)
from docker.types import LogConfig, Mount

from worker_manager.docker_engine.profile import security_option
from worker_manager.docker_engine.recipe import (
    CLIENT_CONFIG_DIR,
    DATA_ROOT,
    DOCKER_HOST,
    ENGINE_UID,
    PROXY_URL,
    SOCKET_DIR,
    engine_command,
    engine_env,
)
from worker_manager.settings import Settings

#: Where the socket volume is mounted in the worker's container (and in the sidecar).
WORKER_MOUNT_PATH = SOCKET_DIR
#: The devices rootless Docker needs: FUSE (fuse-overlayfs) and TUN (slirp4netns' tap).
DEVICES = ("/dev/fuse", "/dev/net/tun")
#: The only capabilities in the sidecar's bounding set (see the module's docstring).
CAPABILITIES = ("SETUID", "SETGID")
#: The socket volume's tmpfs: small (a socket and a config file), the agent's alone.
SOCKET_VOLUME_BYTES = 1024 * 1024
#: What a stop should wait (``container.stop(timeout=...)``) for dockerd to stop its
#: containers before the kill.
STOP_TIMEOUT_SECONDS = 10


#: ``--security-opt systempaths=unconfined`` as the Engine's API takes it (host config keys).
UNMASKED_PATHS: Mapping[str, list[str]] = {"MaskedPaths": [], "ReadonlyPaths": []}


@dataclass(frozen=True, slots=True)
class EngineVolumes:
    """The names of a worker's two engine volumes (created and removed by the manager, with
    the worker's labels)."""

    data: str
    socket: str


def socket_volume_options(name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    """``docker.volumes.create(**options)`` of the socket volume: a tmpfs owned by uid 1000."""
    return {
        "name": name,
        "driver": "local",
        "driver_opts": {
            "type": "tmpfs",
            "device": "tmpfs",
            "o": (
                f"size={SOCKET_VOLUME_BYTES},uid={ENGINE_UID},gid={ENGINE_UID},mode=0700,"
                "nosuid,nodev,noexec"
            ),
        },
        "labels": dict(labels),
    }


def data_volume_options(name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    """``docker.volumes.create(**options)`` of the data volume: a plain local volume."""
    return {"name": name, "driver": "local", "labels": dict(labels)}


def worker_mounts(volumes: EngineVolumes) -> list[Mount]:
    """What the worker's own container mounts in addition: the socket volume."""
    return [Mount(target=WORKER_MOUNT_PATH, source=volumes.socket, type="volume")]


def agent_docker_env() -> dict[str, str]:
    """The agent's variables: its engine, and the client config that gives every inner
    ``docker run``/``docker build`` the worker's proxy."""
    return {"DOCKER_HOST": DOCKER_HOST, "DOCKER_CONFIG": CLIENT_CONFIG_DIR}


def engine_container_options(
    settings: Settings,
    worker_container_name: str,
    volumes: EngineVolumes,
    *,
    image: str,
    name: str,
    labels: Mapping[str, str],
    proxy: str | None = PROXY_URL,
    apparmor: bool = False,
) -> dict[str, Any]:
    """``docker.containers.create(**options)`` of a worker's engine sidecar.

    ``image``: the engine image (``ImageService.ensure`` of
    :data:`~worker_manager.docker_engine.recipe.ENGINE_ENVIRONMENT`); ``proxy``: the worker's
    proxy as the engine reaches it (None: no proxy variables, e.g. a worker without egress);
    ``apparmor``: the Engine confines containers with AppArmor (``support.HostFacts``), so the
    sidecar is started ``apparmor=unconfined`` (Docker's profile denies ``mount``)."""
    security = [security_option()]
    if apparmor:
        security.append("apparmor=unconfined")
    return {
        "image": image,
        "name": name,
        "labels": dict(labels),
        "entrypoint": engine_command(),
        "command": [],
        "environment": engine_env(proxy),
        "user": "0:0",  # the entry's first step only; it drops to ENGINE_UID (setpriv)
        "init": True,
        "network_mode": f"container:{worker_container_name}",
        "security_opt": security,
        "cap_drop": ["ALL"],
        "cap_add": list(CAPABILITIES),
        "devices": [f"{device}:{device}:rwm" for device in DEVICES],
        "read_only": True,
        "mounts": [
            Mount(target=DATA_ROOT, source=volumes.data, type="volume"),
            Mount(target=WORKER_MOUNT_PATH, source=volumes.socket, type="volume"),
        ],
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={settings.container_tmp_size},mode=1777"},
        "mem_limit": settings.container_memory,
        "memswap_limit": settings.container_memory,
        "nano_cpus": int(settings.container_cpus * 1e9),
        "pids_limit": settings.container_pids_limit,
        "stop_signal": "SIGTERM",
        "log_config": LogConfig(type="json-file", config={"max-size": "10m", "max-file": "3"}),
        "detach": True,
    }


def create_engine_container(client: DockerClient, options: Mapping[str, Any]) -> Container:
    """``containers.create(**options)`` plus :data:`UNMASKED_PATHS` in its host config (which
    the SDK's keyword arguments cannot express). Blocking: call it in a thread."""
    kwargs = {**options, "version": client.api.api_version}
    create_kwargs = _create_container_args(kwargs)
    create_kwargs["host_config"].update({k: list(v) for k, v in UNMASKED_PATHS.items()})
    created = client.api.create_container(**create_kwargs)
    return client.containers.get(created["Id"])
