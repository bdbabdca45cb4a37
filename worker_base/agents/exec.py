"""An ``exec`` request (SPEC §8): a command the orchestrator runs in the workspace, as the agent.

Not the agent: the command is the orchestrator's (the ``argv`` of the input entry, a JSON list),
so ``allowed_commands`` does not apply to it (``Invocation.confined``); it runs as the agent's
user, in the workspace, with the worker's egress (the same environment as the agent), under its
own ``timeout_seconds`` (default: the worker's ``input_timeout_seconds``), and its exit code is
the ``done``. It gets no stdin. Its lines are ``stdout`` and ``stderr`` events, as an agent's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from worker_base.agents.base import AgentDriver, Invocation
from worker_base.workspace import WorkspaceError

MAX_ARGV = 256
MAX_ARG_CHARS = 16 * 1024
#: The longest an exec may be given.
MAX_TIMEOUT_SECONDS = 7 * 86_400


def exec_invocation(fields: Mapping[str, str]) -> Invocation:
    """The process an ``exec`` entry asks for; WorkspaceError saying what is wrong with it."""
    try:
        argv = json.loads(fields.get("argv") or "")
    except ValueError:
        raise WorkspaceError("argv must be a JSON list of strings") from None
    if (
        not isinstance(argv, list)
        or not argv
        or not all(isinstance(arg, str) for arg in argv)
        or not argv[0]
    ):
        raise WorkspaceError("argv must be a non-empty JSON list of strings")
    if len(argv) > MAX_ARGV or any(len(a) > MAX_ARG_CHARS or "\x00" in a for a in argv):
        raise WorkspaceError(
            f"argv has at most {MAX_ARGV} items of {MAX_ARG_CHARS} characters, no NUL"
        )
    return Invocation(argv=list(argv), stdin=None, confined=False)


def exec_timeout(fields: Mapping[str, str]) -> float | None:
    """The entry's own ``timeout_seconds`` (None: the worker's input timeout)."""
    raw = (fields.get("timeout_seconds") or "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if 0 < value <= MAX_TIMEOUT_SECONDS else None


class ExecDriver(AgentDriver):
    """Runs one prepared invocation; its lines are plain ``stdout``/``stderr``."""

    def __init__(self, invocation: Invocation) -> None:
        self._invocation = invocation

    def invocation(self, prompt: str) -> Invocation:
        return self._invocation
