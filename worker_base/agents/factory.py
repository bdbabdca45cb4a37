"""Factory's Droid over its stream-jsonrpc protocol: ``droid exec --input-format stream-jsonrpc
--output-format stream-jsonrpc``, one process per input, a conversation on its stdin.

This is the protocol Factory's Python SDK (``droid-sdk``) drives; :mod:`worker_base.agents.
droid_rpc` speaks it with the standard library. Per input:

1. ``droid.initialize_session`` (``machineId``, ``cwd`` = the workspace, ``autonomyLevel`` =
   ``WM_FACTORY_AUTO``) for the worker's first input, else ``droid.load_session`` with the
   session id kept among the wrapper's private files (:class:`SessionStore`), so a later input,
   a restarted wrapper and a resumed worker continue the same session (droid keeps it under the
   agent's ``HOME``, on the worker's home volume). A session droid does not know (error -32004)
   is forgotten, an ``error`` event says so, and the same input starts a new session at once.
2. ``droid.add_user_message`` with the input as its ``text`` (no argv or file: no length limit,
   no option injection).
3. The turn's notifications become events: an assistant message's text -> ``assistant``, a tool
   use (``tool_call``, or a ``tool_use`` block of a message; each once) -> ``tool_use``, a tool
   result -> ``tool_result``, an ``error`` -> ``error``, and ``agent_turn_completed`` -> the
   ``result`` (``is_error`` unless its ``reason`` is ``completed``, ``subtype`` the reason,
   ``duration_ms``, ``usage``, the last assistant text as ``result``, ``cost_usd`` and
   ``total_cost_usd`` from :mod:`worker_base.agents.factory_pricing`). Then stdin is closed and
   droid exits. Streaming deltas, working-state and other progress notifications are dropped;
   lines that are not the protocol go out as ``stdout``, as they are (the wrapper bounds them).
4. Droid's requests mid-turn are answered at once: ``droid.request_permission`` by
   :func:`~worker_base.agents.droid_rpc.permission_verdict` (``allowed_commands``; each refusal
   an ``error`` event naming the command), ``droid.ask_user`` with ``cancelled`` (a headless
   worker has no one to ask; an ``error`` event quotes the question), anything else with
   "method not found", so droid never waits on the wrapper.

``allowed_commands`` also becomes ``commandAllowlist`` in ``~/.factory/settings.json`` (droid runs
those without asking, whatever the level), and the shims of :mod:`worker_base.allowlist` are the
``PATH`` of the droid process, which refuse anything else underneath.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from worker_base.agents import droid_rpc
from worker_base.agents.base import AgentStdin, Event, Invocation
from worker_base.agents.factory_pricing import factory_cost_usd
from worker_base.agents.stream_json import SessionStore, StreamJsonDriver, copy_number, dumps
from worker_base.allowlist import resolve_program
from worker_base.events import EventType
from worker_base.identity import AgentIdentity, IdentityConfig, private_dir
from worker_base.ledger import CostLedger

AUTONOMY_LEVELS = ("low", "medium", "high")
#: ``machineId`` of the sessions the wrapper creates (required by the protocol; one per fleet).
MACHINE_ID = "worker-manager"
#: Notifications that say nothing the events do not already carry (deltas, progress, state).
QUIET_NOTIFICATIONS = frozenset(
    {
        "assistant_text_delta",
        "assistant_text_complete",
        "thinking_text_delta",
        "thinking_text_complete",
        "droid_working_state_changed",
        "session_token_usage_changed",
        "tool_progress_update",
        "tool_execution_heartbeat",
        "tool_execution_phase_changed",
        "permission_resolved",
        "settings_updated",
        "session_title_updated",
        "session_working_directory_changed",
        "mcp_status_changed",
        "hook_execution_started",
        "hook_execution_completed",
        "llm_retry",
    }
)
#: Tool uses remembered per input to report each once (bounded: a runaway turn cannot grow it).
MAX_SEEN_TOOLS = 4096


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
        self._reset("")

    def _reset(self, prompt: str) -> None:
        self._prompt = prompt
        self._stdin: AgentStdin | None = None
        self._pending: dict[str, str] = {}
        self._requests = 0
        self._model: str | None = None
        self._seen_tools: set[str] = set()
        self._turn_errors = 0
        self._last_text: str | None = None
        self._completed = False
        self._started_at = time.monotonic()

    def invocation(self, prompt: str) -> Invocation:
        self._start_run()
        self._reset(prompt)
        allowed = self._config.allowed_commands
        if allowed is not None and not self._settings_written:
            with self._identity.acting_as_agent():  # the agent's home, the agent's file
                write_settings(self._home, allowed)
            self._settings_written = True
        argv = [
            *resolve_program(self._executable, os.environ.get("PATH")),
            "exec",
            "--input-format",
            "stream-jsonrpc",
            "--output-format",
            "stream-jsonrpc",
        ]
        return Invocation(argv=argv, env={"HOME": str(self._home)}, converse=True)

    # --- the conversation ---------------------------------------------------------------------
    def converse(self, stdin: AgentStdin) -> None:
        self._stdin = stdin
        resume = self._resumed_from
        if resume is None:
            self._initialize()
            return
        # A lost session is answered -32004 (handled below), never guessed from a crash.
        self._saw_session = True
        self._send(droid_rpc.LOAD_SESSION, {"sessionId": resume})

    def _send(self, method: str, params: dict[str, Any]) -> None:
        if self._stdin is None or self._stdin.closed:
            return
        self._requests += 1
        request_id = f"wm-{self._requests}"
        self._pending[request_id] = method
        self._stdin.send(droid_rpc.request(request_id, method, params))

    def _answer(self, line: str) -> None:
        if self._stdin is not None and not self._stdin.closed:
            self._stdin.send(line)

    def _close(self) -> None:
        if self._stdin is not None:
            self._stdin.close()

    def _initialize(self) -> None:
        params = {
            "machineId": MACHINE_ID,
            "cwd": str(self._config.workdir),
            "autonomyLevel": self._level,
        }
        self._send(droid_rpc.INITIALIZE_SESSION, params)

    # --- droid's lines ------------------------------------------------------------------------
    def on_stdout(self, line: str) -> list[Event]:
        message = droid_rpc.parse(line)
        if message is None:
            return [Event(EventType.STDOUT, line)]
        if message.type == "response":
            return self._on_response(message, line)
        if message.type == "request":
            return self._on_request(message, line)
        notification = message.notification
        if notification is None:
            return [Event(EventType.STDOUT, line)]
        return self._on_notification(notification, line)

    def _on_response(self, message: droid_rpc.Message, line: str) -> list[Event]:
        method = self._pending.pop(message.id or "", None)
        if method is None:
            return [Event(EventType.STDOUT, line)]
        if message.error is not None:
            return self._on_failure(method, message.error)
        result = message.result if isinstance(message.result, dict) else {}
        if method == droid_rpc.ADD_USER_MESSAGE:
            return []
        if method == droid_rpc.INITIALIZE_SESSION:
            self._remember_session(result.get("sessionId"))
        elif method == droid_rpc.LOAD_SESSION:
            self._remember_session(self._resumed_from)
        settings = result.get("settings")
        if isinstance(settings, dict) and isinstance(settings.get("modelId"), str):
            self._model = settings["modelId"]
        self._send(droid_rpc.ADD_USER_MESSAGE, {"text": self._prompt})
        return []

    def _on_failure(self, method: str, error: dict[str, Any]) -> list[Event]:
        if method == droid_rpc.LOAD_SESSION and error.get("code") == droid_rpc.ENTITY_NOT_FOUND:
            lost = self._resumed_from
            self._sessions.clear()
            self._session_id = None
            self._resumed_from = None
            self._saw_session = False
            self._initialize()
            return [
                Event(
                    EventType.ERROR,
                    f"Droid no longer has session {lost} ({droid_rpc.error_text(error)}); this "
                    "input starts a new session.",
                )
            ]
        reason = f"droid refused {method}: {droid_rpc.error_text(error)}"
        self._turn_errors += 1
        self._close()
        payload: dict[str, Any] = {"is_error": True, "subtype": "error", "reason": reason}
        if self._session_id is not None:
            payload["session_id"] = self._session_id
        return [Event(EventType.ERROR, reason), *self._hold_result(payload)]

    def _on_request(self, message: droid_rpc.Message, line: str) -> list[Event]:
        request_id = message.id or ""
        if message.method == droid_rpc.REQUEST_PERMISSION:
            verdict = droid_rpc.permission_verdict(
                message.params, self._config.allowed_commands, self._level
            )
            choice = droid_rpc.PROCEED_ONCE if verdict.approve else droid_rpc.CANCEL
            self._answer(droid_rpc.response(request_id, {"selectedOption": choice}))
            return [Event(EventType.ERROR, sentence) for sentence in verdict.refusals]
        if message.method == droid_rpc.ASK_USER:
            self._answer(droid_rpc.response(request_id, {"cancelled": True, "answers": []}))
            asked = "; ".join(droid_rpc.questions_of(message.params)) or "(no question text)"
            return [
                Event(
                    EventType.ERROR,
                    f"droid asked a question, and a headless worker has no one to answer it, so "
                    f"it was told the question was cancelled: {asked}",
                )
            ]
        self._answer(
            droid_rpc.error_response(
                request_id, droid_rpc.METHOD_NOT_FOUND, f"Method not found: {message.method}"
            )
        )
        return [Event(EventType.STDOUT, line)]

    def _on_notification(self, note: dict[str, Any], line: str) -> list[Event]:
        kind = note["type"]
        if kind == "create_message":
            message = note.get("message")
            if isinstance(message, dict):
                return self._message(message)
        elif kind == "tool_call":
            tool_use = note.get("toolUse")
            if isinstance(tool_use, dict):
                return self._tool_use(tool_use)
        elif kind == "tool_result":
            return self._tool_result(note, note.get("toolUseId"))
        elif kind == "error":
            message_text = note.get("message")
            if isinstance(message_text, str):
                self._turn_errors += 1
                return [Event(EventType.ERROR, f"droid: {droid_rpc.shown(message_text)}")]
        elif kind == "agent_turn_completed":
            return self._turn_completed(note)
        elif kind in QUIET_NOTIFICATIONS:
            return []
        return [Event(EventType.STDOUT, line)]

    def _message(self, message: dict[str, Any]) -> list[Event]:
        role = message.get("role")
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list):
            return []
        events: list[Event] = []
        for block in blocks:
            kind = block.get("type") if isinstance(block, dict) else None
            if not isinstance(block, dict) or not isinstance(kind, str):
                continue
            if role == "assistant" and kind == "text" and isinstance(block.get("text"), str):
                self._last_text = block["text"]
                events.append(Event(EventType.ASSISTANT, block["text"]))
            elif kind == "tool_use":
                events += self._tool_use(block)
            elif kind == "tool_result":
                events += self._tool_result(
                    block, block.get("tool_use_id") or block.get("toolUseId")
                )
            # the prompt echoed back (the input stream has it), thinking, images: not events
        return events

    def _seen(self, key: str) -> bool:
        if key in self._seen_tools:
            return True
        if len(self._seen_tools) >= MAX_SEEN_TOOLS:
            self._seen_tools.clear()
        self._seen_tools.add(key)
        return False

    def _tool_use(self, block: dict[str, Any]) -> list[Event]:
        use_id = block.get("id")
        if isinstance(use_id, str) and self._seen(f"use:{use_id}"):
            return []
        return [Event(EventType.TOOL_USE, dumps(block))]

    def _tool_result(self, block: dict[str, Any], use_id: object) -> list[Event]:
        if isinstance(use_id, str) and self._seen(f"result:{use_id}"):
            return []
        return [Event(EventType.TOOL_RESULT, dumps(block))]

    def _turn_completed(self, note: dict[str, Any]) -> list[Event]:
        self._completed = True
        self._close()  # the turn is over: droid exits at the end of its input
        reason = note.get("reason")
        is_error = reason != "completed"
        payload: dict[str, Any] = {"is_error": is_error}
        if isinstance(reason, str):
            payload["subtype"] = reason
        if self._session_id is not None:
            payload["session_id"] = self._session_id
        copy_number(note, "durationMs", payload, "duration_ms")
        if "duration_ms" not in payload:
            payload["duration_ms"] = int((time.monotonic() - self._started_at) * 1000)
        if self._last_text is not None:
            payload["result"] = self._last_text
        usage = note.get("tokenUsage")
        cumulative = note.get("cumulativeTokenUsage")
        if self._model is not None:
            payload["model"] = self._model
        # The turn's own tokens, charged as this input's cost: whether droid counts them per
        # turn or per session, charging them never counts less than was spent.
        if isinstance(usage, dict):
            payload["usage"] = usage
            payload[self.INPUT_COST] = factory_cost_usd(self._model, usage)
        elif isinstance(cumulative, dict):
            payload["usage"] = cumulative
            payload[self.SESSION_TOTAL] = factory_cost_usd(self._model, cumulative)
        events: list[Event] = []
        if is_error and not self._turn_errors:
            events.append(
                Event(EventType.ERROR, f"droid ended the turn without completing it ({reason})")
            )
        return events + self._hold_result(payload)
