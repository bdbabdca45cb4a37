"""The one small interface every agent driver implements.

The wrapper owns the process, the streams and the ordering; a driver only says how to start the
agent for one input and how to turn each line it prints into output events (SPEC §4).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Protocol

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
    #: Keep the agent's stdin open and converse on it: after ``stdin`` (if any) the wrapper
    #: hands the pipe to :meth:`AgentDriver.converse` before reading a line, and closes it when
    #: the driver does or the process ends (droid's stream-jsonrpc: ``agents/droid_rpc.py``).
    converse: bool = False


class AgentStdin(Protocol):
    """The agent's stdin as a conversing driver sees it: whole lines out, never blocking.

    Writes are queued and flushed by the wrapper; a line sent after :meth:`close`, or once the
    agent has closed its end, is dropped (the process is ending: its exit says the rest).
    """

    def send(self, line: str) -> None:
        """Queue ``line`` (without its newline) for the agent's stdin."""

    def close(self) -> None:
        """End of input for the agent, once what was sent has been written."""

    @property
    def closed(self) -> bool: ...


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

    def converse(self, stdin: AgentStdin) -> None:
        """For an invocation with ``converse``: called once the agent has started, before any of
        its lines are read. The driver keeps ``stdin`` and writes to it from ``on_stdout``
        (answers to the agent's requests mid-turn), closing it when the turn is over. Lines,
        bounds, the deadline and cancelling stay the wrapper's, as for every run."""
        stdin.close()

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
