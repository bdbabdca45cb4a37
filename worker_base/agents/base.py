"""The one small interface every agent driver implements.

The wrapper owns the process, the streams and the ordering; a driver only says how to start the
agent for one input and how to turn each line it prints into output events (SPEC §4).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from worker_base.events import EventType
from worker_base.ledger import CostLedger


@dataclass(frozen=True, slots=True)
class Event:
    """One output entry before the wrapper stamps ``timestamp`` and ``input_id`` on it."""

    type: str
    content: str


@dataclass(frozen=True, slots=True)
class Invocation:
    """How to run the agent for one input."""

    argv: list[str]
    stdin: bytes | None = None
    env: dict[str, str] = field(default_factory=dict)
    #: The variable through which the agent takes a command prefix for its shell tool (Claude
    #: Code's ``CLAUDE_CODE_SHELL_PREFIX``). When set, ``allowed_commands`` is enforced on the
    #: commands the agent runs through that shell, not on the agent process's own ``PATH``, so
    #: the CLI's own helpers are never refused.
    shell_prefix_env: str | None = None
    #: The agent takes the ``PATH`` of the commands it runs in its own configuration (Codex's
    #: ``shell_environment_policy``) and the driver hands it the shim directory there
    #: (``allowlist.shim_dir``): the shims are built, the agent process keeps its own ``PATH``
    #: (its own helpers, e.g. Codex's ``git`` calls, are never refused).
    shims_by_agent: bool = False
    #: Whether ``allowed_commands`` applies: the agent's runs, yes; an ``exec`` the orchestrator
    #: asked for (SPEC §8), no: it runs what it names, as the agent's user.
    confined: bool = True


class AgentDriver(ABC):
    """Subclasses: ``custom.CustomDriver``, ``claude.ClaudeDriver``, ``codex.CodexDriver``,
    ``factory.FactoryDriver``."""

    #: The worker's spend, for drivers whose agent reports cost; the wrapper uses this one (or
    #: makes its own when the driver has none), so there is one ledger per worker.
    ledger: CostLedger | None = None

    @abstractmethod
    def invocation(self, prompt: str) -> Invocation:
        """The process to start for this input (called once per input, in order)."""

    def on_stdout(self, line: str) -> list[Event]:
        """Events for one line the agent printed on stdout (without its newline)."""
        return [Event(EventType.STDOUT, line)]

    def on_stderr(self, line: str) -> list[Event]:
        return [Event(EventType.STDERR, line)]

    def on_exit(self, exit_code: int) -> list[Event]:
        """Events after the process ended, before the wrapper's ``done``; e.g. a missing result."""
        return []

    def take_stop(self) -> bool:
        """After each batch of lines: whether the run must be stopped now (the driver has
        already said why, e.g. a turn limit the agent itself does not enforce)."""
        return False

    def take_retry(self) -> str | None:
        """After ``on_exit``: why this input should run once more from scratch, or None.

        E.g. the session to resume is gone: the same input then starts a new one instead of
        failing (and every later input with it). The wrapper retries at most once per input.
        """
        return None
