"""The names of SPEC §4's output events, the wrapper's own states and the ``done`` codes it
gives itself: the one set of them.

The wrapper writes these (``worker_base``), the manager writes ``status`` events of its own (the
Lua transitions in ``worker_manager.workers.state.records``), and the client and CLI read them.
"""

from __future__ import annotations

from enum import StrEnum


class EventType(StrEnum):
    """``type`` of an entry on ``worker:<id>:output``."""

    STDOUT = "stdout"
    STDERR = "stderr"
    ASSISTANT = "assistant"
    TOOL_USE = "tool_use"
    TOOL_RESULT = "tool_result"
    RESULT = "result"
    STATUS = "status"
    ERROR = "error"
    DONE = "done"
    #: SPEC §8: the workspace summary after each input, and the answers to workspace requests.
    WORKSPACE = "workspace"
    DIFF = "diff"
    FILE = "file"
    LISTING = "listing"
    #: SPEC §12: an entry a teammate (or the manager, or a producer) put on the team's board;
    #: ``content`` is the entry as JSON, its stream ``id`` included.
    TEAM = "team"


class WrapperState(StrEnum):
    """``content`` of the wrapper's ``status`` events."""

    READY = "ready"
    BUSY = "busy"
    IDLE = "idle"
    STOPPING = "stopping"


# ``done`` codes the wrapper gives itself (an agent's or a command's are their exit status).
#: A prompt cancelled before its agent started (128 + SIGINT, "interrupted").
CANCELLED_BEFORE_START = 130
#: An input that runs nothing (SPEC §4): an unknown ``type``, a ``prompt`` without
#: ``content``, a workspace request the workspace refuses. 2, like a usage error: the input, not
#: the agent, is at fault.
INVALID_INPUT = 2
#: An input refused because the worker's ``max_cost_usd`` is spent.
BUDGET_SPENT = 1
#: A workspace request the wrapper failed to answer (a bug, logged).
WRAPPER_FAILED = 70
