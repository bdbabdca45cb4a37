"""Whether the root wrapper's interpreter reads only what root owns (issue 24 §2 a).

A wrapper that runs as root beside an agent of another user holds the worker's Redis password,
so nothing the agent or its repository can write may be on its interpreter's path: not the
working directory (``/workspace`` is the agent's), not its home (``~/.local`` holds the user
site-packages and ``usercustomize.py``), not a ``PYTHON*`` variable. The manager starts it so
(``worker_manager.images.spec.RUNTIME``: ``python3 -I``, in ``/``, ``HOME=/root``); this module
lets the wrapper check it before any agent runs, so that an image or a launcher that starts it
otherwise is refused with a sentence (exit 2) instead of quietly trusting the agent's files on
its next start.

Checked: the interpreter is isolated (``-I``), and every ``sys.path`` entry, the working
directory and ``HOME`` is owned by root and writable by no one else (root's group aside), up to
``/`` (a directory
writable by others lets them replace what is below it; a sticky one, like ``/tmp``, only lets
them add entries of their own, which matters for the entry itself, not for what is below it).
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

Stat = Callable[[str], os.stat_result]


def exposures(paths: Iterable[str], *, owner: int = 0, stat_of: Stat = os.stat) -> list[str]:
    """The paths (each with the reason) that a user other than ``owner`` could change: the path
    itself (or, if it does not exist, the directory it would be made in) or a directory above
    it. Empty when every path is ``owner``'s alone."""
    found: list[str] = []
    for path in dict.fromkeys(os.path.abspath(p or ".") for p in paths):
        reason = _exposure(Path(path), owner, stat_of)
        if reason is not None:
            found.append(f"{path} ({reason})")
    return found


def _exposure(path: Path, owner: int, stat_of: Stat) -> str | None:
    entry = True
    for current in (path, *path.parents):
        try:
            info = stat_of(str(current))
        except FileNotFoundError:
            continue  # not there: whoever may create it is judged at its parent, as the entry
        except OSError as exc:
            return f"{current}: {exc.strerror}"
        if info.st_uid != owner:
            return f"{current} is owned by uid {info.st_uid}"
        # Group write counts unless the group is the owner's own (root's group: no agent's).
        group = info.st_mode & stat.S_IWGRP and info.st_gid != owner
        writable = info.st_mode & stat.S_IWOTH or group
        sticky = info.st_mode & stat.S_ISVTX and stat.S_ISDIR(info.st_mode)
        if writable and (entry or not sticky):
            return f"{current} is writable by others (mode {stat.S_IMODE(info.st_mode):o})"
        entry = False
    return None


def wrapper_exposures() -> list[str]:
    """What :func:`exposures` finds for this interpreter: its ``sys.path``, working directory
    and ``HOME``, plus a sentence when it is not isolated."""
    problems = [] if sys.flags.isolated else ["the interpreter is not isolated (python3 -I)"]
    home = os.environ.get("HOME") or "/"
    return problems + exposures([*sys.path, os.getcwd(), home], owner=os.geteuid())
