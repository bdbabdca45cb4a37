"""Factory's Droid in headless mode: ``droid exec --output-format stream-json --auto <level>``.

Flags as documented for ``droid exec`` (docs/cli/droid-exec/overview.mdx in Factory's docs):
``-o/--output-format stream-json``, ``--auto low|medium|high``, ``-s/--session-id <id>`` ("existing
session to continue, requires a prompt"), ``-f/--file <path>`` ("read prompt from file"),
``--cwd <path>``. The prompt goes through ``-f``: a file has no argv length limit (a 256 KiB
prompt does not fit in one Linux argv string) and cannot be mistaken for an option. It is
written to ``<wrapper_dir>/factory-prompt.md`` (readable by the agent, not writable), outside
the workspace the agent edits.

The stream-json lines are ``system``/``init`` (``session_id``), ``message`` (``role``, ``text``),
``tool_call``, ``tool_result`` and a final ``completion`` (``finalText``, ``numTurns``,
``durationMs``, ``session_id``). Droid exits non-zero on failure.

``allowed_commands`` becomes ``commandAllowlist`` in ``~/.factory/settings.json`` (commands that
run without confirmation whatever the autonomy level); everything else still falls back to the
``--auto`` level, so the shims of ``worker_base.allowlist`` are what actually refuses.
"""

from __future__ import annotations

import json
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
from worker_base.events import EventType
from worker_base.identity import AgentIdentity, IdentityConfig, private_dir, write_atomic
from worker_base.ledger import CostLedger

AUTONOMY_LEVELS = ("low", "medium", "high")


class FactoryConfig(IdentityConfig, Protocol):
    """The fields of the wrapper's configuration this driver reads."""

    @property
    def allowed_commands(self) -> Sequence[str] | None: ...

    @property
    def workdir(self) -> Path: ...

    @property
    def factory_auto(self) -> str: ...

    @property
    def max_cost_usd(self) -> float | None: ...

    def agent_home_dir(self) -> Path: ...


def write_settings(home: Path, allowed: Sequence[str]) -> Path:
    """Merge ``commandAllowlist`` into ``<home>/.factory/settings.json``, keeping other keys."""
    path = home / ".factory" / "settings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {}
    try:
        existing = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        existing = None
    if isinstance(existing, dict):
        settings = existing
    settings["commandAllowlist"] = [entry.strip() for entry in allowed if entry.strip()]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


class FactoryDriver(StreamJsonDriver):
    agent_name = "droid"

    def __init__(
        self, config: FactoryConfig, executable: str = "droid", home: Path | None = None
    ) -> None:
        self._config = config
        self._executable = executable
        self._home = home if home is not None else config.agent_home_dir()
        self._identity = AgentIdentity.of(config)
        self._settings_written = False
        level = (config.factory_auto or "low").strip().lower()
        if level not in AUTONOMY_LEVELS:
            raise ValueError(f"factory_auto must be one of {', '.join(AUTONOMY_LEVELS)}: {level!r}")
        self._level = level
        super().__init__(
            SessionStore(private_dir(config) / "factory-session"),
            CostLedger(private_dir(config), config.max_cost_usd),
        )

    @property
    def prompt_file(self) -> Path:
        return self._config.wrapper_dir / "factory-prompt.md"

    def invocation(self, prompt: str) -> Invocation:
        resume = self._start_run()
        allowed = self._config.allowed_commands
        if allowed is not None and not self._settings_written:
            with self._identity.acting_as_agent():  # the agent's home, the agent's file
                write_settings(self._home, allowed)
            self._settings_written = True
        # The agent reads it; only the wrapper may write it.
        write_atomic(self.prompt_file, prompt.encode("utf-8"), 0o644)
        argv = [
            *resolve_program(self._executable, os.environ.get("PATH")),
            "exec",
            "--output-format",
            "stream-json",
            "--auto",
            self._level,
            "--cwd",
            str(self._config.workdir),
        ]
        if resume is not None:
            argv += ["--session-id", resume]
        argv += ["-f", str(self.prompt_file)]
        # Empty stdin, closed at once: droid also reads piped stdin, and must not wait on it.
        return Invocation(argv=argv, stdin=b"", env={"HOME": str(self._home)})

    def on_stdout(self, line: str) -> list[Event]:
        obj = parse_line(line)
        if obj is None:
            return [Event(EventType.STDOUT, line)]
        kind = obj["type"]
        if kind == "system" and obj.get("subtype") == "init":
            self._remember_session(obj.get("session_id"))
            return []
        if kind == "message" and isinstance(obj.get("text"), str):
            role = obj.get("role")
            if role == "assistant":
                return [Event(EventType.ASSISTANT, obj["text"])]
            if role == "user":
                return []  # the prompt echoed back: the input stream already has it
        elif kind == "tool_call":
            return [Event(EventType.TOOL_USE, dumps(obj))]
        elif kind == "tool_result":
            return [Event(EventType.TOOL_RESULT, dumps(obj))]
        elif kind == "completion":
            return self._completion(obj)
        return [Event(EventType.STDOUT, line)]

    def _completion(self, obj: dict[str, Any]) -> list[Event]:
        self._remember_session(obj.get("session_id"))
        payload: dict[str, Any] = {
            "is_error": bool(obj.get("isError") or obj.get("is_error")),
        }
        if isinstance(obj.get("session_id"), str):
            payload["session_id"] = obj["session_id"]
        # Droid has no budget flag: the wrapper's ledger enforces max_cost_usd from these.
        copy_number(obj, "total_cost_usd", payload, self.SESSION_TOTAL)
        for key in ("costUsd", "cost_usd"):
            copy_number(obj, key, payload, self.INPUT_COST)
        copy_number(obj, "durationMs", payload, "duration_ms")
        copy_number(obj, "numTurns", payload, "num_turns")
        if isinstance(obj.get("finalText"), str):
            payload["result"] = obj["finalText"]
        if isinstance(obj.get("usage"), dict):
            payload["usage"] = obj["usage"]
        return self._hold_result(payload)
