"""The names of SPEC §4's output events and of the wrapper's own states: the one set of them.

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


class WrapperState(StrEnum):
    """``content`` of the wrapper's ``status`` events."""

    READY = "ready"
    BUSY = "busy"
    IDLE = "idle"
    STOPPING = "stopping"
