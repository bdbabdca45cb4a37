"""The engine sidecar's seccomp profile: Docker 20.10's default, plus what user namespaces need.

``seccomp.json`` is :func:`derive` applied to moby's ``profiles/seccomp/default.json`` at
v20.10.24 (commit 5d6db842238e, the Engine on the reference hosts), whose canonical JSON has
the SHA-256 :data:`DOCKER_DEFAULT_SHA256`; ``tests/unit/test_docker_engine.py`` checks that the
file is exactly that default plus the two rules below, nothing removed or changed.

**What it opens** (Docker's default allows these only to a container holding
``CAP_SYS_ADMIN``, ``CAP_SYS_CHROOT`` or not at all; the sidecar holds none, so without them
RootlessKit cannot make its user namespace): :data:`ADDED` allowed, whatever their arguments:

* ``clone`` with namespace flags (the default masks ``CLONE_NEW*`` off) and ``unshare``: new
  user, mount, network, UTS, IPC and PID namespaces (RootlessKit, runc);
* ``setns``: joining them (``nsenter`` for slirp4netns' tap device, ``docker exec``, runc);
* ``mount``, ``umount2``, ``pivot_root``, ``chroot``: mounts inside the engine's own mount
  namespace (its ``/etc`` and ``/run`` copy-up, fuse-overlayfs, each inner container's root;
  ``chroot`` for dockerd's archive extraction in ``docker load`` and ``docker build``);
* ``sethostname``, ``setdomainname``: an inner container's own UTS namespace.

The kernel still checks capabilities for each: they succeed only in namespaces the engine's
user namespace owns (never on the host's mounts, network or hostname). What they do open is
the kernel's code for unprivileged user namespaces, reached by uid 1000 in this container only.

**What it refuses otherwise than the default**: ``keyctl`` fails with ENOSYS, not EPERM
(:data:`ENOSYS`): runc goes on without a session keyring on ENOSYS and fails on EPERM, and the
kernel's keyrings are not namespaced, so the call stays refused. Everything else the default
refuses stays refused: ``clone3`` (ENOSYS: callers fall back to ``clone``), the new mount API
(``fsopen``, ``fsmount``, ``move_mount``, ``open_tree``…), ``bpf``, ``perf_event_open``,
``add_key``/``request_key``, module loading, ``ptrace`` of other processes, raw I/O, time.
"""

from __future__ import annotations

import copy
import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

PROFILE_PATH = Path(__file__).with_name("seccomp.json")
#: SHA-256 of moby v20.10.24's ``profiles/seccomp/default.json``, as canonical JSON
#: (``sort_keys``, no spaces): what ``seccomp.json`` is, less :data:`ADDED` and :data:`ENOSYS`.
DOCKER_DEFAULT_SHA256 = "ea56ae0fe060a2451cbb6c89f07302febb224d1da3500d42c38b890cf72ad526"
#: Allowed unconditionally, beyond Docker's default.
ADDED = (
    "chroot",
    "clone",
    "mount",
    "pivot_root",
    "setdomainname",
    "sethostname",
    "setns",
    "umount2",
    "unshare",
)
#: Refused with ENOSYS (38) instead of the default's EPERM.
ENOSYS = ("keyctl",)
ADDED_COMMENT = "worker-manager: a rootless Docker Engine's user namespaces and their mounts"
ENOSYS_COMMENT = (
    "worker-manager: ENOSYS, not EPERM, so runc goes on without a session keyring "
    "(keyrings are not namespaced: still refused)"
)


def derive(default: dict[str, Any]) -> dict[str, Any]:
    """Docker's default profile with this module's two rules appended (nothing else changes)."""
    profile = copy.deepcopy(default)
    profile["syscalls"] = [
        *profile["syscalls"],
        {
            "names": list(ADDED),
            "action": "SCMP_ACT_ALLOW",
            "args": [],
            "comment": ADDED_COMMENT,
            "includes": {},
            "excludes": {},
        },
        {
            "names": list(ENOSYS),
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 38,
            "args": [],
            "comment": ENOSYS_COMMENT,
            "includes": {},
            "excludes": {},
        },
    ]
    return profile


def canonical(profile: dict[str, Any]) -> str:
    return json.dumps(profile, sort_keys=True, separators=(",", ":"))


def digest(profile: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(profile).encode()).hexdigest()


@cache
def load_profile() -> dict[str, Any]:
    """The profile, as ``seccomp.json`` holds it."""
    loaded: dict[str, Any] = json.loads(PROFILE_PATH.read_text())
    return loaded


@cache
def profile_json() -> str:
    """The profile as compact JSON: what the Engine's API takes after ``seccomp=`` (the CLI
    reads a file; the API wants its content)."""
    return json.dumps(load_profile(), separators=(",", ":"))


def security_option() -> str:
    """``security_opt`` entry of the engine sidecar: ``seccomp=<the profile's JSON>``."""
    return f"seccomp={profile_json()}"
