"""Whether this host can give a worker a rootless Docker Engine, and if not, why (SPEC §9).

:func:`rootless_problem` is a plain function over :class:`HostFacts`; :func:`gather_facts`
collects them (one ``docker info`` and a few files under ``/proc`` and ``/dev``). A create with
``DOCKER`` (``WM_DOCKER_MODULE=rootless``) is refused with its sentence.

The files are read where the manager runs: when it runs in a container of its own (compose),
pass the paths of the Engine host's ``/proc`` and ``/dev`` as mounted there, or they describe
the manager's container, not the host.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: FUSE mounts in a user namespace (fuse-overlayfs) need Linux 4.18.
MIN_KERNEL = (4, 18)


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What decides whether the engine sidecar can run on this host."""

    #: ``WM_CONTAINER_RUNTIME`` (None: the Engine's default).
    container_runtime: str | None = None
    #: ``docker info``: ``SecurityOptions`` (e.g. ``name=seccomp,profile=default``), the
    #: runtimes' names, the kernel.
    security_options: tuple[str, ...] = ()
    runtimes: tuple[str, ...] = ("runc",)
    kernel_version: str = ""
    #: The devices the sidecar is given, as found on the host.
    devices: Mapping[str, bool] = field(default_factory=dict)
    #: ``/proc/sys/user/max_user_namespaces``; None when unreadable.
    max_user_namespaces: int | None = None
    #: Debian's and Ubuntu's switches, when the kernel has them (None: it has not).
    unprivileged_userns_clone: int | None = None
    apparmor_restrict_unprivileged_userns: int | None = None

    def security_names(self) -> set[str]:
        """The names in ``SecurityOptions``: ``seccomp``, ``apparmor``, ``rootless``…"""
        names = set()
        for option in self.security_options:
            for part in option.split(","):
                key, _, value = part.partition("=")
                if key == "name":
                    names.add(value)
        return names

    @property
    def apparmor(self) -> bool:
        """The Engine confines containers with AppArmor: the sidecar needs it unconfined."""
        return "apparmor" in self.security_names()


def kernel_tuple(version: str) -> tuple[int, int] | None:
    match = re.match(r"^(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def rootless_problem(facts: HostFacts) -> str | None:
    """Why a worker cannot be given a rootless Docker Engine here (a sentence for the create's
    refusal), or None when nothing known stands in the way."""
    runtime = facts.container_runtime
    if runtime and runtime != "runc":
        return (
            f"DOCKER's own engine needs workers under runc; this host runs them under "
            f"WM_CONTAINER_RUNTIME={runtime}, beside which a rootless Docker Engine is not "
            "supported (gVisor has no user namespaces or FUSE for it)"
        )
    names = facts.security_names()
    if "rootless" in names:
        return (
            "DOCKER's own engine cannot run here: the host's Docker Engine is itself rootless, "
            "and a rootless engine inside it has no subordinate ids to map"
        )
    if "seccomp" not in names:
        return (
            "DOCKER's own engine cannot run here: the host's Docker Engine has no seccomp "
            "support, so the engine's seccomp profile cannot be applied"
        )
    if "runc" not in facts.runtimes:
        return "DOCKER's own engine cannot run here: the host's Docker Engine has no runc runtime"
    kernel = kernel_tuple(facts.kernel_version)
    if kernel is not None and kernel < MIN_KERNEL:
        return (
            f"DOCKER's own engine cannot run here: kernel {facts.kernel_version} is older than "
            f"{MIN_KERNEL[0]}.{MIN_KERNEL[1]}, the first to allow FUSE in a user namespace"
        )
    if facts.max_user_namespaces == 0:
        return (
            "DOCKER's own engine cannot run here: user namespaces are off "
            "(/proc/sys/user/max_user_namespaces is 0)"
        )
    if facts.unprivileged_userns_clone == 0:
        return (
            "DOCKER's own engine cannot run here: unprivileged user namespaces are off "
            "(kernel.unprivileged_userns_clone=0)"
        )
    if facts.apparmor_restrict_unprivileged_userns == 1:
        return (
            "DOCKER's own engine cannot run here: AppArmor restricts unprivileged user "
            "namespaces (kernel.apparmor_restrict_unprivileged_userns=1)"
        )
    missing = [device for device, present in sorted(facts.devices.items()) if not present]
    if missing:
        return (
            f"DOCKER's own engine cannot run here: the host has no {' or '.join(missing)} "
            "(fuse-overlayfs needs FUSE, slirp4netns a TUN device)"
        )
    return None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def facts_from(
    info: Mapping[str, Any],
    container_runtime: str | None,
    *,
    proc: Path = Path("/proc"),
    devices: Sequence[Path] = (Path("/dev/fuse"), Path("/dev/net/tun")),
) -> HostFacts:
    """:class:`HostFacts` from a ``docker info`` answer and the files under ``proc`` (and the
    device paths)."""
    runtimes = info.get("Runtimes")
    return HostFacts(
        container_runtime=container_runtime,
        security_options=tuple(str(o) for o in info.get("SecurityOptions") or ()),
        runtimes=tuple(sorted(runtimes)) if isinstance(runtimes, Mapping) else (),
        kernel_version=str(info.get("KernelVersion") or ""),
        devices={str(path): path.exists() for path in devices},
        max_user_namespaces=_read_int(proc / "sys/user/max_user_namespaces"),
        unprivileged_userns_clone=_read_int(proc / "sys/kernel/unprivileged_userns_clone"),
        apparmor_restrict_unprivileged_userns=_read_int(
            proc / "sys/kernel/apparmor_restrict_unprivileged_userns"
        ),
    )


def gather_facts(docker: Any, container_runtime: str | None) -> HostFacts:
    """The facts of this host: ``docker.info()`` (a ``DockerClient``; blocking, call it in a
    thread) and this host's ``/proc`` and ``/dev``."""
    info: Mapping[str, Any] = docker.info()
    return facts_from(info, container_runtime)
