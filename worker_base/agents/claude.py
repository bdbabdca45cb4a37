"""Claude Code in headless mode: ``claude -p --output-format stream-json --verbose``.

One process per input, the prompt on stdin (no argv length limit, no option injection). Later
inputs continue the conversation with ``--resume <session_id>``; the id comes from the ``system``
``init`` line and from the final ``result`` line, and is kept in ``<state_dir>/claude/session_id``
so a restarted wrapper resumes it too. ``CLAUDE_CONFIG_DIR`` points at
``<state_dir>/claude/config``, which lives as long as the worker, so the sessions it stores do.

Permissions: headless Claude cannot ask anyone, so it needs to be told up front. Unrestricted
workers run with ``--permission-mode bypassPermissions`` (the container is the boundary).
Restricted workers run with ``--permission-mode acceptEdits`` and one ``Bash(<entry>:*)`` rule
per allowed entry in ``--allowedTools``, plus a sentence in the system prompt; the shims of
``worker_base.allowlist`` enforce the same list below the agent.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from worker_base.agents.base import Event, Invocation
from worker_base.agents.stream_json import (
    SessionStore,
    StreamJsonDriver,
    copy_number,
    dumps,
    parse_line,
)
from worker_base.allowlist import resolve_program


class ClaudeConfig(Protocol):
    """The fields of the wrapper's configuration this driver reads."""

    @property
    def allowed_commands(self) -> Sequence[str] | None: ...

    @property
    def state_dir(self) -> Path: ...


def allowed_tools(allowed: Sequence[str]) -> list[str]:
    """One Claude Code permission rule per entry: ``npm test`` -> ``Bash(npm test:*)``."""
    return [f"Bash({entry.strip()}:*)" for entry in allowed if entry.strip()]


def allowlist_prompt(allowed: Sequence[str]) -> str:
    entries = [entry.strip() for entry in allowed if entry.strip()]
    if not entries:
        return (
            "In this environment you may not run any shell command; every command is refused. "
            "Work with the file tools only."
        )
    listed = ", ".join(f"`{entry}`" for entry in entries)
    return (
        f"In this environment you may run only these shell commands, each optionally followed "
        f"by more arguments: {listed}. Do not run any other command (no other programs, no "
        f"absolute paths to get around this): anything else is refused."
    )


class ClaudeDriver(StreamJsonDriver):
    agent_name = "claude"

    def __init__(self, config: ClaudeConfig, executable: str = "claude") -> None:
        self._config = config
        self._executable = executable
        self._home = config.state_dir / "claude"
        super().__init__(SessionStore(self._home / "session_id"))

    @property
    def config_dir(self) -> Path:
        return self._home / "config"

    def invocation(self, prompt: str) -> Invocation:
        resume = self._start_run()
        self.config_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        argv = [
            *resolve_program(self._executable, os.environ.get("PATH")),
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
        ]
        if resume is not None:
            argv += ["--resume", resume]
        allowed = self._config.allowed_commands
        if allowed is None:
            argv += ["--permission-mode", "bypassPermissions"]
        else:
            argv += ["--permission-mode", "acceptEdits"]
            rules = allowed_tools(allowed)
            if rules:
                argv += ["--allowedTools", *rules]
            argv += ["--append-system-prompt", allowlist_prompt(allowed)]
        return Invocation(
            argv=argv,
            stdin=prompt.encode("utf-8"),
            env={"CLAUDE_CONFIG_DIR": str(self.config_dir)},
        )

    def on_stdout(self, line: str) -> list[Event]:
        obj = parse_line(line)
        if obj is None:
            return [Event("stdout", line)]
        kind = obj["type"]
        if kind == "system" and obj.get("subtype") == "init":
            self._remember_session(obj.get("session_id"))
            return []
        if kind == "assistant":
            events = self._assistant(obj)
        elif kind == "user":
            events = self._user(obj)
        elif kind == "result":
            return self._result(obj)
        else:
            events = None
        return [Event("stdout", line)] if events is None else events

    def _content(self, obj: dict[str, Any]) -> list[Any] | str | None:
        message = obj.get("message")
        if not isinstance(message, dict):
            return None
        content = message.get("content")
        return content if isinstance(content, list | str) else None

    def _assistant(self, obj: dict[str, Any]) -> list[Event] | None:
        content = self._content(obj)
        if content is None:
            return None
        if isinstance(content, str):
            return [Event("assistant", content)]
        events: list[Event] = []
        for block in content:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text" and isinstance(block.get("text"), str):
                events.append(Event("assistant", block["text"]))
            elif kind == "tool_use":
                events.append(Event("tool_use", dumps(block)))
            elif kind in {"thinking", "redacted_thinking"}:
                continue  # the model's private reasoning is not part of the answer
            else:
                events.append(Event("stdout", dumps(block)))
        return events

    def _user(self, obj: dict[str, Any]) -> list[Event] | None:
        content = self._content(obj)
        if content is None:
            return None
        if isinstance(content, str):
            return []  # the prompt echoed back: the input stream already has it
        return [
            Event("tool_result", dumps(block))
            for block in content
            if isinstance(block, dict) and block.get("type") == "tool_result"
        ]

    def _result(self, obj: dict[str, Any]) -> list[Event]:
        self._remember_session(obj.get("session_id"))
        subtype = obj.get("subtype")
        payload: dict[str, Any] = {
            "is_error": bool(obj.get("is_error")) or subtype != "success",
        }
        if isinstance(subtype, str):
            payload["subtype"] = subtype
        if isinstance(obj.get("session_id"), str):
            payload["session_id"] = obj["session_id"]
        copy_number(obj, "total_cost_usd", payload, "cost_usd")
        if "cost_usd" not in payload:
            copy_number(obj, "cost_usd", payload, "cost_usd")
        copy_number(obj, "duration_ms", payload, "duration_ms")
        copy_number(obj, "num_turns", payload, "num_turns")
        if isinstance(obj.get("result"), str):
            payload["result"] = obj["result"]
        return self._hold_result(payload)
