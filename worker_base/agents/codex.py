"""OpenAI's Codex CLI non-interactively: ``codex exec --json``, one process per input.

The prompt goes on stdin (``-``: no argv length limit, no option injection). The first input
starts a thread; its id (``thread.started``) is kept among the wrapper's private files
(:class:`~worker_base.agents.stream_json.SessionStore`) and every later input continues it with
``codex exec resume <thread id>``, also after a wrapper restart or a suspend/resume, since
``CODEX_HOME`` (where Codex keeps its threads) is ``<state_dir>/codex``, on the worker's home
volume. A thread Codex no longer has (``no rollout found``) is forgotten and the input runs once
more in a new one. ``instructions`` are the workspace's ``AGENTS.md``, which Codex reads itself.

How it is run (flags of ``codex exec`` 0.163):

- ``--sandbox danger-full-access`` and ``approval_policy="never"``: Codex's own sandbox
  (Landlock and seccomp, or bubblewrap) needs kernel features a worker container does not grant
  (no user namespaces under ``no-new-privileges``, the default seccomp profile), and headless
  Codex has no one to ask. The container is the boundary (SPEC §7), as for Claude Code.
- the provider is the LLM gateway: ``model_providers.wm`` with ``base_url`` from
  ``OPENAI_BASE_URL``, ``env_key="OPENAI_API_KEY"`` (the worker's gateway token) and
  ``wire_api="responses"``; ``OPENAI_MODEL`` picks the model when set; ``CODEX_MAX_RETRIES``
  (the manager's ``WM_CODEX_MAX_RETRIES``), when set, is the provider's ``request_max_retries``
  and ``stream_max_retries`` (Codex retries a failed request or stream about five times by
  default, 6-15 s before a 401 or a 500 fails the turn);
- ``allow_login_shell=false``: Codex runs commands as ``bash -c`` rather than ``bash -lc``,
  whose ``/etc/profile`` would reset ``PATH``; ``web_search="disabled"``: a search OpenAI runs
  on the worker's behalf would step around the egress proxy; :data:`DISABLED_FEATURES` and
  ``analytics.enabled=false`` turn off what calls chatgpt.com and GitHub by itself (connectors,
  plugins, update checks, analytics: seen as ``egress denied`` on the output) and request
  compression (which would hide bodies from the gateway's checks).

``allowed_commands``: Codex has no "refuse everything else" of its own (its ``.rules`` only add
allow/prompt/forbidden decisions to a sandbox that cannot run here), so its layer is a
``developer_instructions`` sentence naming the allowed commands, and the refusal comes from the
shims of :mod:`worker_base.allowlist`, set as the ``PATH`` of every command Codex runs
(``shell_environment_policy.set.PATH``). The Codex process keeps its own ``PATH``, so its own
``git`` calls are not refused.

What ``--json`` prints and how it maps to events (SPEC §4):

- ``item.started`` of a ``command_execution``, ``mcp_tool_call`` or ``web_search`` ->
  ``tool_use``; ``item.completed`` of those and of a ``file_change`` -> ``tool_result`` with
  ``exit_code`` (a file change: 0 applied, 1 failed; it also gets its ``tool_use``);
- ``agent_message`` -> ``assistant``; ``reasoning`` is dropped (the model's private thoughts);
  an ``error`` item (a warning such as unknown model metadata) and a top-level ``error`` that
  says Codex is reconnecting -> ``stderr``;
- ``turn.completed`` -> the held ``result``: its ``usage`` is the *thread's* running total, priced
  with :mod:`worker_base.agents.openai_pricing` and charged to the ledger as a session total;
- ``turn.failed`` and a final top-level ``error`` -> ``error`` events and an error ``result``;
- a command Codex's own guard rejects (it logs ``exec_command failed: … Rejected(…)`` on stderr,
  e.g. for ``rm -rf``) -> ``error`` ``refused by Codex: …``.

``max_turns``: Codex has no turn limit, so the driver counts the model's requests (one per tool
call, plus the answer) and stops the run when the next one would pass the limit
(:meth:`take_stop`), with an error result ``error_max_turns``, as Claude Code reports it.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from worker_base.agents.base import Event, Invocation
from worker_base.agents.openai_pricing import openai_cost_usd
from worker_base.agents.stream_json import SessionStore, StreamJsonDriver, dumps, parse_line
from worker_base.allowlist import AllowlistConfig, resolve_program, shim_dir
from worker_base.events import EventType
from worker_base.identity import AgentIdentity, IdentityConfig, private_dir
from worker_base.ledger import CostLedger

#: What ``codex exec resume`` prints on stderr when it has no thread of that id.
LOST_THREAD = "no rollout found for thread id"
#: The model provider the driver configures: the LLM gateway (or the operator's endpoint).
PROVIDER = "wm"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: Codex features that reach OpenAI's or GitHub's services by themselves (connectors, plugins,
#: update checks), have the API act for the agent (hosted image generation), or compress request
#: bodies (which the gateway must read): off, one ``--disable`` each.
DISABLED_FEATURES = (
    "apps",
    "plugins",
    "remote_plugin",
    "image_generation",
    "enable_request_compression",
    "in_app_updates",
)
#: Items that are tool calls: announced when started, answered when completed.
TOOL_ITEMS = ("command_execution", "mcp_tool_call", "web_search")
RECONNECTING = "Reconnecting..."
#: How Codex logs a command its own guard refused (``rm -rf``-style commands under
#: ``approval_policy="never"``): the reason is named on the output as a refusal.
REJECTED = re.compile(r'exec_command failed: .*?Rejected\(\\?"(.+?)\\?"\)')


class CodexConfig(IdentityConfig, AllowlistConfig, Protocol):
    """The fields of the wrapper's configuration this driver reads."""

    @property
    def allowed_commands(self) -> Sequence[str] | None: ...

    @property
    def max_turns(self) -> int | None: ...

    @property
    def max_cost_usd(self) -> float | None: ...


def toml_string(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's, for what ``json.dumps`` emits)."""
    return json.dumps(value)


def allowlist_instructions(allowed: Sequence[str]) -> str:
    entries = [entry.strip() for entry in allowed if entry.strip()]
    if not entries:
        return (
            "In this environment you may not run any shell command; every command is refused. "
            "Work by editing files only."
        )
    listed = ", ".join(f"`{entry}`" for entry in entries)
    return (
        f"In this environment you may run only these commands, each optionally followed by "
        f"more arguments: {listed}. Do not run any other program (no absolute paths to get "
        f"around this): anything else is refused."
    )


def provider_config(base_url: str, max_retries: int | None = None) -> str:
    """The ``model_providers.wm`` table: the Responses API at ``base_url``, keyed by
    ``OPENAI_API_KEY`` (the worker's gateway token when contained); ``max_retries``, when given,
    bounds both Codex's retries of a request and of a broken stream (unset: Codex's default)."""
    retries = (
        ""
        if max_retries is None
        else f", request_max_retries={max_retries}, stream_max_retries={max_retries}"
    )
    return (
        f"{{name={toml_string(PROVIDER)}, base_url={toml_string(base_url)}, "
        f'env_key="OPENAI_API_KEY", wire_api="responses"{retries}}}'
    )


def max_retries_of(value: str | None) -> int | None:
    """``CODEX_MAX_RETRIES`` as a count, or None (unset, or not a count ≥ 0: Codex's default)."""
    text = (value or "").strip()
    return int(text) if text.isascii() and text.isdigit() else None


class CodexDriver(StreamJsonDriver):
    agent_name = "codex"

    def __init__(self, config: CodexConfig, executable: str = "codex") -> None:
        self._config = config
        self._executable = executable
        self._identity = AgentIdentity.of(config)
        super().__init__(
            SessionStore(private_dir(config) / "codex-thread"),
            CostLedger(private_dir(config), config.max_cost_usd),
        )
        self._model = os.environ.get("OPENAI_MODEL") or None
        self._max_retries = max_retries_of(os.environ.get("CODEX_MAX_RETRIES"))
        self._started_at = 0.0
        self._requests = 0
        self._last_message: str | None = None
        self._errors: list[str] = []
        self._stop = False

    @property
    def codex_home(self) -> Path:
        return self._config.state_dir / "codex"

    def invocation(self, prompt: str) -> Invocation:
        resume = self._start_run()
        self._started_at = time.monotonic()
        self._requests = 0
        self._last_message = None
        self._errors = []
        self._stop = False
        with self._identity.acting_as_agent():
            self.codex_home.mkdir(parents=True, exist_ok=True, mode=0o700)
        base_url = os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        argv = [
            *resolve_program(self._executable, os.environ.get("PATH")),
            "exec",
            "--json",
            "--color",
            "never",
            "--skip-git-repo-check",
            "--sandbox",
            "danger-full-access",
            "-c",
            'approval_policy="never"',
            "-c",
            "allow_login_shell=false",
            "-c",
            'web_search="disabled"',
            "-c",
            "analytics.enabled=false",
            *(arg for feature in DISABLED_FEATURES for arg in ("--disable", feature)),
            "-c",
            f"model_providers.{PROVIDER}={provider_config(base_url, self._max_retries)}",
            "-c",
            f"model_provider={toml_string(PROVIDER)}",
        ]
        if self._model:
            argv += ["-m", self._model]
        allowed = self._config.allowed_commands
        if allowed is not None:
            path = toml_string(str(shim_dir(self._config)))
            argv += ["-c", f"shell_environment_policy.set={{PATH={path}}}"]
            argv += ["-c", f"developer_instructions={toml_string(allowlist_instructions(allowed))}"]
        if resume is not None:
            argv += ["resume", resume]
        argv.append("-")
        env = {"CODEX_HOME": str(self.codex_home)}
        return Invocation(
            argv=argv, stdin=prompt.encode("utf-8"), env=env, shims_by_agent=allowed is not None
        )

    def take_stop(self) -> bool:
        stop, self._stop = self._stop, False
        return stop

    # --- lines ---------------------------------------------------------------------------
    def on_stderr(self, line: str) -> list[Event]:
        if LOST_THREAD in line:
            self._session_missing = True
        events = [Event(EventType.STDERR, line)]
        rejected = REJECTED.search(line)
        if rejected is not None:
            reason = rejected.group(1).replace("\\", "").replace('"', '"')
            events.append(Event(EventType.ERROR, f"refused by Codex: {reason[:500]}"))
        return events

    def on_stdout(self, line: str) -> list[Event]:
        obj = parse_line(line)
        if obj is None:
            return [Event(EventType.STDOUT, line)]
        kind = obj["type"]
        if kind == "thread.started":
            self._remember_session(obj.get("thread_id"))
            return []
        if kind == "turn.started":
            return []
        if kind in ("item.started", "item.completed"):
            item = obj.get("item")
            if isinstance(item, dict):
                return self._item(item, done=kind == "item.completed")
        elif kind == "item.updated":
            return []
        elif kind == "turn.completed":
            return self._turn_completed(obj)
        elif kind == "turn.failed":
            return self._turn_failed(obj)
        elif kind == "error":
            return self._error(obj.get("message"))
        return [Event(EventType.STDOUT, line)]

    def _item(self, item: dict[str, Any], *, done: bool) -> list[Event]:
        kind = item.get("type")
        if kind == "agent_message":
            text = item.get("text")
            if not done or not isinstance(text, str):
                return []
            self._last_message = text
            return [Event(EventType.ASSISTANT, text)]
        if kind == "reasoning":
            return []
        if kind == "error":
            message = item.get("message")
            return [Event(EventType.STDERR, f"codex: {message}")] if done and message else []
        if kind in TOOL_ITEMS:
            if not done:
                return self._tool_use(item)
            return [Event(EventType.TOOL_RESULT, dumps(_tool_result(item)))]
        if kind == "file_change" and done:
            self._count_request()
            use = {"id": item.get("id"), "type": "file_change", "changes": item.get("changes")}
            failed = item.get("status") == "failed"
            result = {
                "id": item.get("id"),
                "type": "file_change",
                "status": item.get("status"),
                "exit_code": 1 if failed else 0,
            }
            return [
                Event(EventType.TOOL_USE, dumps(use)),
                Event(EventType.TOOL_RESULT, dumps(result)),
            ]
        if not done:
            return []
        return [Event(EventType.STDOUT, dumps(item))]

    def _tool_use(self, item: dict[str, Any]) -> list[Event]:
        events = [Event(EventType.TOOL_USE, dumps(_tool_use(item)))]
        return events + self._count_request()

    def _count_request(self) -> list[Event]:
        """One more model request went into this tool call; past ``max_turns``, stop."""
        self._requests += 1
        limit = self._config.max_turns
        if limit is None or self._requests < limit or self._stop:
            return []
        # The answer to this call would be request ``limit + 1``: stop the run here.
        self._stop = True
        reason = f"codex reached max_turns ({limit}) for this input, so it was stopped"
        self._errors.append(reason)
        payload: dict[str, Any] = {
            "is_error": True,
            "subtype": "error_max_turns",
            "num_turns": self._requests,
            "duration_ms": self._elapsed_ms(),
        }
        if self._session_id is not None:
            payload["session_id"] = self._session_id
        return [Event(EventType.ERROR, reason), *self._hold_result(payload)]

    def _error(self, message: object) -> list[Event]:
        if not isinstance(message, str) or not message:
            return []
        if message.startswith(RECONNECTING):
            return [Event(EventType.STDERR, f"codex: {message}")]
        if message in self._errors:
            return []
        self._errors.append(message)
        return [Event(EventType.ERROR, f"Codex could not complete the turn: {message}")]

    def _turn_failed(self, obj: dict[str, Any]) -> list[Event]:
        error = obj.get("error")
        message = error.get("message") if isinstance(error, dict) else None
        events = self._error(message if isinstance(message, str) else "the turn failed")
        payload: dict[str, Any] = {
            "is_error": True,
            "subtype": "error_during_execution",
            "num_turns": self._requests + 1,
            "duration_ms": self._elapsed_ms(),
        }
        if isinstance(message, str):
            payload["result"] = message
        if self._session_id is not None:
            payload["session_id"] = self._session_id
        return events + self._hold_result(payload)

    def _turn_completed(self, obj: dict[str, Any]) -> list[Event]:
        payload: dict[str, Any] = {
            "is_error": False,
            "subtype": "success",
            "num_turns": self._requests + 1,
            "duration_ms": self._elapsed_ms(),
        }
        if self._session_id is not None:
            payload["session_id"] = self._session_id
        if self._last_message is not None:
            payload["result"] = self._last_message
        usage = obj.get("usage")
        if isinstance(usage, dict):
            payload["usage"] = usage
            payload[self.SESSION_TOTAL] = openai_cost_usd(
                self._model,
                _count(usage, "input_tokens"),
                _count(usage, "cached_input_tokens"),
                _count(usage, "output_tokens"),
            )
        return self._hold_result(payload)

    def _elapsed_ms(self) -> int:
        return int((time.monotonic() - self._started_at) * 1000)


def _count(usage: dict[str, Any], key: str) -> int:
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _tool_use(item: dict[str, Any]) -> dict[str, Any]:
    keep = ("id", "type", "command", "server", "tool", "arguments", "query")
    return {key: item[key] for key in keep if key in item}


def _tool_result(item: dict[str, Any]) -> dict[str, Any]:
    keep = ("id", "type", "command", "status")
    result: dict[str, Any] = {key: item[key] for key in keep if key in item}
    if item.get("type") == "command_execution":
        result["exit_code"] = item.get("exit_code")
        result["output"] = item.get("aggregated_output", "")
    else:
        failed = item.get("status") == "failed" or item.get("error")
        result["exit_code"] = 1 if failed else 0
        for key in ("result", "error"):
            if key in item:
                result[key] = item[key]
    return result
