"""Which managers use a run directory's egress service now, and with which settings.

A manager about to restart the service with its own settings must know whether another manager
still relies on the settings it runs with (:func:`worker_manager.egress.fingerprint.decide`).
Each manager holds a lease while it uses the service: a file in ``<run dir>/managers/``, holding
its settings' keyed digests (never a value), with an exclusive ``flock`` on it for as long as the
manager's process lives. The kernel drops the lock with the process, however it ends, so a lease
whose lock can be taken is stale and removed, and a live one is never mistaken for stale: no
clock, no heartbeat, no Redis (which Redis is one of the settings compared).

A lease is written under a scratch name, locked, then renamed into place, so another manager
never sees a lease file that is not yet locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
from pathlib import Path

from worker_manager.egress.fingerprint import Digests

SUFFIX = ".lease"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class Lease:
    """This manager's lease: held from :meth:`take` until :meth:`release` (or its exit)."""

    def __init__(self, run_root: Path, manager_id: str) -> None:
        self._directory = run_root / "managers"
        safe = _UNSAFE.sub("_", manager_id)[:64] or "manager"
        self.name = f"{safe}.{secrets.token_hex(4)}"
        self._fd: int | None = None
        self._held: dict[str, str] | None = None

    @property
    def path(self) -> Path:
        return self._directory / f"{self.name}{SUFFIX}"

    def take(self, digests: Digests) -> None:
        """Hold the lease with these settings (again, if they are new)."""
        if self._fd is not None and self._held == dict(digests):
            return
        self.release()
        self._directory.mkdir(mode=0o700, exist_ok=True)
        scratch = self._directory / f".{self.name}.tmp"
        fd = os.open(scratch, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, json.dumps({"settings": dict(digests)}, sort_keys=True).encode())
            os.replace(scratch, self.path)
        except BaseException:
            os.close(fd)
            scratch.unlink(missing_ok=True)
            raise
        self._fd, self._held = fd, dict(digests)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd, self._held = None, None

    def others(self) -> dict[str, Digests | None]:
        """The other live leases (name -> their digests; None: unreadable), stale ones
        removed on the way."""
        return live_leases(self._directory, besides=self.name)


def live_leases(directory: Path, *, besides: str = "") -> dict[str, Digests | None]:
    found: dict[str, Digests | None] = {}
    if not directory.is_dir():
        return found
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        name = path.name.removesuffix(SUFFIX)
        if name == besides:
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # gone meanwhile: its manager released it
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                found[name] = _read(fd)
                continue
            # Nobody holds it: its manager is gone without releasing it.
            with contextlib.suppress(OSError):
                path.unlink()
        finally:
            os.close(fd)
    return found


def _read(fd: int) -> Digests | None:
    try:
        data = json.loads(os.pread(fd, 1 << 16, 0))
        held = data["settings"]
        if isinstance(held, dict):
            return {str(k): str(v) for k, v in held.items()}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None
