"""What a service's container is, and when it is ready: plain functions over data (SPEC §9).

A service runs in a container of its own, as contained as its worker:

* **its network** is the worker's (``network_mode=container:<worker>``): it shares the worker's
  loopback and has no interface of its own, so the agent reaches it on ``127.0.0.1`` and nothing
  else reaches it at all; its only way out is the worker's egress proxy (the proxy variables
  name the relay the worker's wrapper keeps on that loopback), under the worker's grant;
* **its privileges**: ``no-new-privileges``, every capability dropped but the few a service's
  entry point needs to give its files to its own user and drop to it
  (:data:`SERVICE_CAPABILITIES`); no operator secret, no socket of the egress service, none of
  the worker's volumes;
* **its writes**: a read-only root filesystem; ``/tmp`` and ``/run`` are bounded tmpfs (counted
  in its memory, ``WM_SERVICE_MEMORY``); what it keeps lives in volumes of its own (``/data``
  and every ``VOLUME`` its image declares), labelled as the worker's, so they count in the
  worker's ``WM_CONTAINER_DISK``, outlive a suspend and go with the worker;
* **its program**: an image of ``WM_SERVICE_IMAGES`` runs its own entry point (with the
  service's ``command`` as arguments, when given); an environment's image holds no program of
  its own, so its ``command`` is the whole argv.

**Ready** is the service's ``port`` answering on the worker's loopback; without one, the first
TCP port its image declares (``EXPOSE``); without that, its process still running
:data:`SETTLE_SECONDS` after it started.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from docker.types import LogConfig, Mount

from worker_manager.contract.labels import (
    LABEL_HASH,
    LABEL_MANAGER,
    LABEL_PREFIX,
    LABEL_SERVICE,
    LABEL_SERVICE_OF,
    LABEL_VOLUME,
    LABEL_WORKER,
)
from worker_manager.contract.services import ResolvedService
from worker_manager.egress.grants import PROXY_URL, PROXY_VARIABLES
from worker_manager.settings import Settings

#: What a service's entry point may do as root: hand its data directory to its own user
#: (CHOWN, FOWNER, DAC_OVERRIDE) and start its program as that user (SETUID, SETGID), as the
#: entry points of database images do; signal its own processes (KILL). Nothing else: no
#: NET_RAW, no NET_ADMIN on the namespace it shares with the worker.
SERVICE_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID", "KILL")
#: A ``DOCKER`` worker's own engine's name among its services (``services.engine``).
ENGINE = "docker"
#: Where a service keeps its data when its image declares no volume of its own.
DATA_DIR = "/data"
#: Without a port to probe, a service is ready when its process still runs this long after it
#: started.
SETTLE_SECONDS = 1.0
#: How long a stopping service is given before it is killed (a database flushes in this time).
STOP_SECONDS = 10

# The states of a service in the record's ``services`` (name -> state).
STARTING = "starting"
RUNNING = "running"
STOPPED = "stopped"  # its worker is suspended: the container is gone, its data kept


def exited(exit_code: int | None, oom: bool = False) -> str:
    """The state of a service whose process ended."""
    if oom:
        return "exited (out of memory)"
    return f"exited with code {exit_code}" if exit_code is not None else "exited"


@dataclass(frozen=True, slots=True)
class ImageFacts:
    """What the Engine says of a service's image that its container depends on."""

    #: ``EXPOSE``d TCP ports, ascending.
    ports: tuple[int, ...] = ()
    #: ``VOLUME``s it declares.
    volumes: tuple[str, ...] = ()

    @classmethod
    def of(cls, attrs: dict[str, Any]) -> ImageFacts:
        config = attrs.get("Config") or {}
        ports: list[int] = []
        for key in config.get("ExposedPorts") or {}:
            number, _, proto = str(key).partition("/")
            if number.isdigit() and proto in ("", "tcp") and 0 < int(number) < 65536:
                ports.append(int(number))
        volumes = sorted(str(v) for v in (config.get("Volumes") or {}) if str(v).startswith("/"))
        return cls(tuple(sorted(set(ports))), tuple(volumes))


def container_name(worker_container: str, service: str) -> str:
    """``<worker's container>-svc-<service>``: found again by name, never started twice."""
    return f"{worker_container}-svc-{service}"


def ready_port(service: ResolvedService, facts: ImageFacts) -> int | None:
    """The port whose answer makes the service ready; None: ready when it stays up."""
    if service.port is not None:
        return service.port
    return facts.ports[0] if facts.ports else None


def data_dirs(facts: ImageFacts) -> tuple[str, ...]:
    """Where the service's volumes are mounted: every ``VOLUME`` of its image, else ``/data``."""
    return facts.volumes or (DATA_DIR,)


def volume_labels(settings: Settings, worker_id: str, service: str, index: int) -> dict[str, str]:
    """A service's volume is one of the worker's (``LABEL_WORKER``): counted in its disk,
    removed with it (``workspaces.volumes``)."""
    return {
        LABEL_WORKER: worker_id,
        LABEL_MANAGER: settings.manager_id,
        LABEL_PREFIX: settings.keys.prefix,
        LABEL_VOLUME: f"svc-{service}-{index}",
    }


def container_labels(
    settings: Settings, worker_id: str, service: str, image_hash: str
) -> dict[str, str]:
    """Not ``LABEL_WORKER``: a service's container is not its worker's (the watcher, the
    reconciler and the pool look for that label); ``LABEL_SERVICE_OF`` names the worker."""
    return {
        LABEL_SERVICE_OF: worker_id,
        LABEL_SERVICE: service,
        LABEL_MANAGER: settings.manager_id,
        LABEL_PREFIX: settings.keys.prefix,
        LABEL_HASH: image_hash,
    }


def service_env(service: ResolvedService, contained: bool) -> dict[str, str]:
    """The service's own variables and, contained, the worker's proxy (its relay on the shared
    loopback): the only way out it has, under the worker's grant."""
    env = dict(service.env)
    if contained:
        env.update({name: PROXY_URL for name in PROXY_VARIABLES})
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def container_options(
    settings: Settings,
    *,
    worker_id: str,
    worker_container: str,
    worker_container_id: str,
    service: ResolvedService,
    image_tag: str,
    image_hash: str,
    facts: ImageFacts,
    contained: bool,
) -> dict[str, Any]:
    """The Docker SDK's ``containers.create`` arguments of one service (the module docstring
    says why each is so)."""
    name = container_name(worker_container, service.name)
    mounts = [
        Mount(
            target=target,
            source=f"{name}-{index}",
            type="volume",
            labels=volume_labels(settings, worker_id, service.name, index),
        )
        for index, target in enumerate(data_dirs(facts))
    ]
    tmpfs_options = f"rw,nosuid,nodev,size={settings.service_tmp_size},mode=1777"
    options: dict[str, Any] = {
        "image": image_tag,
        "name": name,
        "labels": container_labels(settings, worker_id, service.name, image_hash),
        "environment": service_env(service, contained),
        # By id: the namespace of this start's container (a name outlives its container).
        "network_mode": f"container:{worker_container_id}",
        "security_opt": ["no-new-privileges:true"],
        "cap_drop": ["ALL"],
        "cap_add": list(SERVICE_CAPABILITIES),
        "read_only": True,
        "tmpfs": {"/tmp": tmpfs_options, "/run": tmpfs_options},
        "mounts": mounts,
        "mem_limit": settings.service_memory,
        "memswap_limit": settings.service_memory,
        "nano_cpus": int(settings.container_cpus * 1e9),
        "pids_limit": settings.container_pids_limit,
        "init": True,
        "log_config": LogConfig(type="json-file", config={"max-size": "10m", "max-file": "3"}),
        "detach": True,
    }
    if service.environment is not None:
        # A worker image: its entry point is the wrapper's, its working directory the
        # workspace's; the service's argv replaces both.
        options["entrypoint"] = list(service.command or ())
        options["command"] = []
        options["working_dir"] = data_dirs(facts)[0]
        options["user"] = "0:0"
    elif service.command:
        options["command"] = list(service.command)
    return options


def problem_of(service: ResolvedService, container_runtime: str | None) -> str | None:
    """Why this service cannot start here, known before anything is started; None."""
    if service.environment is not None and not service.command:
        return "an environment has no program of its own: give the service a command"
    if container_runtime and "runsc" in container_runtime:
        return (
            "a gVisor sandbox keeps its loopback to itself, so a service cannot share the "
            "worker's (WM_CONTAINER_RUNTIME=runsc)"
        )
    return None
