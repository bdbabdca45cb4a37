"""A pooled worker's hand-over: it knows whom it works for before it can do anything.

A warm pool keeps containers started ahead of any create (``WM_POOLED=1``). Such a wrapper has
no Redis credentials (its ACL user does not exist yet), no agent command, no allowed commands,
no instructions: it waits here, before it connects anywhere or starts any agent. When a create
takes it, the manager creates the worker's Redis user, copies the instructions into the
workspace and then writes ``assignment.json`` (the create's whole wrapper environment,
``WrapperConfig.to_env()``) and ``assignment.ready`` last into the wrapper's private directory
(``<WM_WRAPPER_DIR>/private``, root's, mode 0700: no agent could read it even if one ran). The
wrapper reads the assignment, deletes the file (it holds the Redis password), and starts as any
worker.

The empty marker stays. The Engine extracts an archive entry by creating the file and only then
setting its owner, mode and times; a wrapper that deleted the marker the moment it appeared made
that extraction fail (``lchown …/assignment.ready: no such file or directory``) and the create
with it. The assignment itself is safe to delete: the Engine finishes an entry before it starts
the next one, and the marker is the last.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path

from worker_base.config import DEFAULT_STATE_DIR
from worker_base.identity import PRIVATE

log = logging.getLogger("worker_base")

POOLED = "WM_POOLED"
ASSIGNMENT = "assignment.json"
READY = "assignment.ready"
POLL_SECONDS = 0.005


class AssignmentError(ValueError):
    """The assignment file is not a JSON object of strings."""


def handover_dir(environ: MutableMapping[str, str]) -> Path:
    """Where the assignment lands: the wrapper's private directory (``WrapperConfig``'s
    default when ``WM_WRAPPER_DIR`` is unset)."""
    wrapper = environ.get("WM_WRAPPER_DIR") or str(
        Path(environ.get("WM_STATE_DIR") or DEFAULT_STATE_DIR) / "wrapper"
    )
    return Path(wrapper) / PRIVATE


def wait_for_assignment(
    environ: MutableMapping[str, str],
    *,
    stopped: Callable[[], bool] = lambda: False,
    poll: float = POLL_SECONDS,
) -> bool:
    """For a pooled worker: block until it is assigned, then merge the assignment into
    ``environ``. True when assigned (or not pooled at all), False when ``stopped`` first."""
    if environ.get(POOLED) != "1":
        return True
    directory = handover_dir(environ)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    log.info("pooled: waiting to be assigned a worker")
    while not (directory / READY).exists():
        if stopped():
            return False
        time.sleep(poll)
    path = directory / ASSIGNMENT
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AssignmentError(f"{path} is unreadable: {exc}") from None
    finally:
        path.unlink(missing_ok=True)  # it holds the Redis password; the marker stays (above)
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise AssignmentError(f"{path} is not a JSON object of strings")
    environ.update(data)
    environ.pop(POOLED, None)
    log.info("assigned: worker %s", data.get("WM_WORKER_ID", "?"))
    return True
