"""Who the agent runs as, and the wrapper's own files apart from it (SPEC §7).

In a worker container the wrapper runs as root holding only ``CAP_SETUID``, ``CAP_SETGID`` and
``CAP_KILL`` (no ``CAP_DAC_OVERRIDE``: it is bound by file permissions like anyone), and starts
every agent process as the agent's user (``WM_AGENT_USER``, ``uid:gid``, 1000:1000 by default)
with that user's groups only. The agent therefore cannot read the wrapper's environment (its
Redis password) nor its files, cannot signal it, and cannot connect to the Redis relay (a socket
only root may open): what it prints reaches Redis through the wrapper alone.

Files are kept in two places:

* ``wrapper_dir`` (``WM_WRAPPER_DIR``, ``/home/.worker-manager`` in a container): the wrapper's,
  owned by root. Its ``private/`` sub-directory (mode 0700) holds what the agent must not read:
  the pooled hand-over, the cost ledger, the session ids, the refusal offset. The rest of it
  (mode 0755) holds what the wrapper writes *for* the agent and the agent must not change: the
  allowed-commands shims, the prompt file. It lives on the worker's home volume (``/home`` is
  root's), so it outlives the container, and the agent cannot rename it away.
* ``state_dir`` (``WM_STATE_DIR``, ``/home/worker/.wm``): the agent's, owned by the agent: the
  CLI's configuration and sessions, the refusal log its shims append to.

The wrapper writes into the agent's space only in :meth:`AgentIdentity.acting_as_agent`, a
short synchronous bracket in which its effective ids are the agent's: what it creates there
belongs to the agent, and a symlink the agent planted cannot make it write anywhere the agent
could not. Outside a container (tests, a developer's run) the wrapper is not root or no agent
user is set: then everything runs as the wrapper's own user and the brackets do nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

#: Where the wrapper keeps its own files in a worker container (on the home volume).
CONTAINER_WRAPPER_DIR = "/home/.worker-manager"
PRIVATE = "private"


class IdentityConfig(Protocol):
    """The fields of the wrapper's configuration this module reads."""

    @property
    def agent_user(self) -> tuple[int, int] | None: ...

    @property
    def state_dir(self) -> Path: ...

    @property
    def wrapper_dir(self) -> Path: ...


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    #: The agent's uid and gid; None: the wrapper's own (no separation).
    uid: int | None
    gid: int | None
    #: The agent's supplementary groups (the container's extra groups, root's own dropped).
    groups: tuple[int, ...] = ()

    @classmethod
    def of(cls, config: IdentityConfig) -> AgentIdentity:
        user = config.agent_user
        if user is None or os.geteuid() != 0 or user[0] == 0:
            return cls(None, None)
        return cls(user[0], user[1], tuple(sorted({g for g in os.getgroups() if g != 0})))

    @property
    def separate(self) -> bool:
        """Whether the agent runs as a user of its own (the wrapper is root)."""
        return self.uid is not None

    def spawn_options(self) -> dict[str, Any]:
        """``subprocess`` options that start a process as the agent (none when not separate)."""
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}

    @contextlib.contextmanager
    def acting_as_agent(self) -> Iterator[None]:
        """File work in the agent's space, with the agent's rights (see the module docstring).

        Synchronous on purpose: nothing may be awaited inside, so no other task of the wrapper
        ever runs with these ids."""
        if self.uid is None or self.gid is None or os.geteuid() == self.uid:
            yield  # no one else to be, or already the agent (a nested bracket)
            return
        os.setegid(self.gid)
        os.seteuid(self.uid)
        try:
            yield
        finally:
            os.seteuid(0)
            os.setegid(0)


def private_dir(config: IdentityConfig) -> Path:
    return config.wrapper_dir / PRIVATE


def prepare(config: IdentityConfig, identity: AgentIdentity) -> None:
    """The wrapper's directories (its own) and the agent's state directory (the agent's)."""
    config.wrapper_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    private_dir(config).mkdir(exist_ok=True, mode=0o700)
    with identity.acting_as_agent():
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o755)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Atomically, with exactly ``mode``: a crash leaves the old file or the new. The scratch
    file is created exclusively and not through a symlink."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.tmp")
    scratch.unlink(missing_ok=True)
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise
    os.replace(scratch, path)
