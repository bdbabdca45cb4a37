"""Claude Code in headless mode: ``claude -p --output-format stream-json --verbose``.

One process per input, the prompt on stdin (no argv length limit, no option injection). Later
inputs continue the conversation with ``--resume <session_id>``; the id comes from the ``system``
``init`` line and from the final ``result`` line, and is kept among the wrapper's private files
(``worker_base.identity``) so a restarted wrapper resumes it too. ``CLAUDE_CONFIG_DIR`` points
at ``<state_dir>/claude/config`` (the agent's own), which lives as long as the worker's home
volume, so the sessions it stores do.
When the transcript behind the session is gone, the CLI says ``No conversation found with
session ID`` and fails; the driver then forgets the session and the input runs once more in a
new one (``take_retry``).

What the real CLI (2.1.x) prints and how it maps to events:

- ``assistant`` messages: text blocks -> ``assistant``, ``tool_use`` blocks -> ``tool_use``; an
  API failure arrives as an assistant message marked ``is_api_error_message`` and becomes an
  ``error`` event with its text (the ``result`` that follows is an error too);
- ``user`` messages carrying ``tool_result`` blocks -> ``tool_result``;
- ``result``: held until exit, then emitted with ``cost_usd`` (this input: the CLI reports the
  session's running total) and ``total_cost_usd`` (the worker's); its ``permission_denials``
  and ``errors`` become ``error`` events naming what was refused or went wrong.

Permissions: headless Claude cannot ask anyone. Unrestricted workers run with
``--permission-mode bypassPermissions`` (the container is the boundary; the worker's uid is not
root, which the CLI requires for that mode). Restricted workers run with ``dontAsk``, in which
the CLI itself refuses every tool call no rule allows: one ``Bash(<entry>:*)`` rule per allowed
entry plus the file tools, and a sentence in the system prompt. The shims of
``worker_base.allowlist`` hold the same list underneath, applied through
``CLAUDE_CODE_SHELL_PREFIX`` to the commands of the Bash tool only, so the CLI's own helpers
(``git ls-files``, ``/etc/profile``'s ``id -u``) are never refused, and its shell functions
(``grep``/``find``/``rg`` running the CLI's embedded tools) cannot step around them.

Teams (SPEC §12): a worker of a team is told what its teammates post in front of its next prompt
(the wrapper's doing), and with Claude Code also during a long turn, through the CLI's hooks.
Every run of a team's worker gets ``--settings`` with a ``PostToolUse`` and a
``PostToolUseFailure`` hook (:func:`team_hook_settings`): after each tool call the CLI runs
``[ ! -e <pending flag> ] || exec <wm-team> notices --hook <event>``, a shell test that costs a
millisecond or two while nothing is new; when the wrapper holds notices, ``wm-team`` takes them
over the team socket and answers with ``additionalContext``, which the CLI adds to what the model
reads next (the notices are then not repeated in front of the next prompt). The settings come on
the command line, not from a file the agent could edit; the flag and ``wm-team`` are the
wrapper's (root's) files, and the text is the wrapper's rendering of the board: the agent can
neither make the hook say something else nor hear its teammates under another name. A worker of
no team gets no hook. With ``allowed_commands``, the CLI runs the hook through
``CLAUDE_CODE_SHELL_PREFIX`` like its Bash commands: both commands are absolute paths or shell
builtins, and ``wm-team`` is always allowed.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from worker_base import forks, team
from worker_base.agents.base import Event, Invocation
from worker_base.agents.stream_json import (
    SessionStore,
    StreamJsonDriver,
    copy_number,
    dumps,
    parse_line,
)
from worker_base.allowlist import describe_allowed, resolve_program
from worker_base.events import EventType
from worker_base.identity import AgentIdentity, IdentityConfig, private_dir
from worker_base.ledger import CostLedger, format_usd

#: What the CLI prints on stderr when ``--resume`` names a session it has no transcript for.
LOST_SESSION = "No conversation found with session ID"
#: The CLI's tools that only touch files in the workspace: allowed for restricted workers too,
#: since ``allowed_commands`` limits shell commands, not editing.
FILE_TOOLS = ("Read", "Edit", "Write", "NotebookEdit")
#: Variables for an unattended CLI in a container: no self-update, no telemetry.
QUIET_ENV = {
    "DISABLE_AUTOUPDATER": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
}
SHELL_PREFIX_ENV = "CLAUDE_CODE_SHELL_PREFIX"
#: The hook events after which a team's worker is told its new notices (a failed tool call too).
TEAM_HOOK_EVENTS = ("PostToolUse", "PostToolUseFailure")
#: Seconds the CLI gives the hook; ``wm-team`` gives up well before (its ``HOOK_TIMEOUT``).
TEAM_HOOK_TIMEOUT = 10


class ClaudeConfig(IdentityConfig, Protocol):
    """The fields of the wrapper's configuration this driver reads."""

    @property
    def allowed_commands(self) -> Sequence[str] | None: ...

    @property
    def max_turns(self) -> int | None: ...

    @property
    def max_cost_usd(self) -> float | None: ...


@runtime_checkable
class TeamConfig(Protocol):
    """A configuration that may name a team (the wrapper's does)."""

    @property
    def team(self) -> str: ...

    @property
    def wrapper_dir(self) -> Path: ...


def team_hook_command(config: team.Layout, event: str) -> str:
    """The hook's shell command: ``wm-team`` only when the wrapper flags pending notices."""
    flag = shlex.quote(str(team.pending_flag(config)))
    command = shlex.quote(str(team.command_path(config)))
    return f"[ ! -e {flag} ] || exec {command} notices --hook {event}"


def team_hook_settings(config: team.Layout) -> dict[str, Any]:
    """Claude Code settings (``--settings``) that tell the agent its team's notices between
    tool calls (every tool: no ``matcher``)."""
    return {
        "hooks": {
            event: [
                {
                    "hooks": [
                        {
                            "type": "command",
                            "command": team_hook_command(config, event),
                            "timeout": TEAM_HOOK_TIMEOUT,
                        }
                    ]
                }
            ]
            for event in TEAM_HOOK_EVENTS
        }
    }


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
        self._identity = AgentIdentity.of(config)
        super().__init__(
            SessionStore(private_dir(config) / "claude-session"),
            CostLedger(private_dir(config), config.max_cost_usd),
        )
        #: This run resumes with ``--fork-session`` (``worker_base.forks``).
        self._forking = False

    def _remember_session(self, value: object) -> None:
        super()._remember_session(value)
        # The new id the fork got: the next input resumes it like any other.
        if self._forking and isinstance(value, str) and value and value != self._resumed_from:
            forks.forked(private_dir(self._config))
            self._forking = False

    @property
    def config_dir(self) -> Path:
        return self._config.state_dir / "claude" / "config"

    def invocation(self, prompt: str) -> Invocation:
        resume = self._start_run()
        with self._identity.acting_as_agent():
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
            # A copy of another worker (SPEC §10): its first resume forks the session, so the
            # copies' threads go on under ids of their own.
            self._forking = forks.fork_pending(private_dir(self._config))
            if self._forking:
                argv += ["--fork-session"]
        if self._config.max_turns is not None:
            argv += ["--max-turns", str(self._config.max_turns)]
        remaining = self.ledger.remaining_usd if self.ledger is not None else None
        if remaining is not None:
            argv += ["--max-budget-usd", format_usd(remaining)]
        allowed = self._config.allowed_commands
        if allowed is None:
            argv += ["--permission-mode", "bypassPermissions"]
        else:
            argv += ["--permission-mode", "dontAsk"]
            argv += ["--allowedTools", *allowed_tools(allowed), *FILE_TOOLS]
            argv += ["--append-system-prompt", allowlist_prompt(allowed)]
        if isinstance(self._config, TeamConfig) and self._config.team:
            argv += ["--settings", json.dumps(team_hook_settings(self._config))]
        env = {**QUIET_ENV, "CLAUDE_CONFIG_DIR": str(self.config_dir)}
        if Path("/bin/bash").exists():
            env["SHELL"] = "/bin/bash"  # the CLI's Bash tool wants bash (or zsh), not sh
        return Invocation(
            argv=argv,
            stdin=prompt.encode("utf-8"),
            env=env,
            shell_prefix_env=SHELL_PREFIX_ENV,
        )

    def on_stderr(self, line: str) -> list[Event]:
        if LOST_SESSION in line:
            self._session_missing = True
        return [Event(EventType.STDERR, line)]

    def on_stdout(self, line: str) -> list[Event]:
        obj = parse_line(line)
        if obj is None:
            return [Event(EventType.STDOUT, line)]
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
        return [Event(EventType.STDOUT, line)] if events is None else events

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
        if obj.get("is_api_error_message"):
            texts = [content] if isinstance(content, str) else _texts(content)
            status = obj.get("api_error_status")
            sentence = " ".join(texts) or f"the API failed ({obj.get('error') or 'unknown'})"
            if isinstance(status, int) and str(status) not in sentence:
                sentence += f" (HTTP {status})"
            return [Event(EventType.ERROR, f"Claude Code could not reach the model: {sentence}")]
        if isinstance(content, str):
            return [Event(EventType.ASSISTANT, content)]
        events: list[Event] = []
        for block in content:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text" and isinstance(block.get("text"), str):
                events.append(Event(EventType.ASSISTANT, block["text"]))
            elif kind == "tool_use":
                events.append(Event(EventType.TOOL_USE, dumps(block)))
            elif kind in {"thinking", "redacted_thinking"}:
                continue  # the model's private reasoning is not part of the answer
            else:
                events.append(Event(EventType.STDOUT, dumps(block)))
        return events

    def _user(self, obj: dict[str, Any]) -> list[Event] | None:
        content = self._content(obj)
        if content is None:
            return None
        if isinstance(content, str):
            return []  # the prompt echoed back: the input stream already has it
        return [
            Event(EventType.TOOL_RESULT, dumps(block))
            for block in content
            if isinstance(block, dict) and block.get("type") == "tool_result"
        ]

    def _result(self, obj: dict[str, Any]) -> list[Event]:
        self._remember_session(obj.get("session_id"))
        subtype = obj.get("subtype")
        if (
            self._resumed_from is not None
            and subtype == "error_during_execution"
            and obj.get("num_turns") == 0
        ):
            self._session_missing = True  # the same verdict as the stderr line, if it was lost
        payload: dict[str, Any] = {
            "is_error": bool(obj.get("is_error")) or subtype != "success",
        }
        if isinstance(subtype, str):
            payload["subtype"] = subtype
        if isinstance(obj.get("session_id"), str):
            payload["session_id"] = obj["session_id"]
        copy_number(obj, "total_cost_usd", payload, self.SESSION_TOTAL)
        copy_number(obj, "duration_ms", payload, "duration_ms")
        copy_number(obj, "num_turns", payload, "num_turns")
        if isinstance(obj.get("result"), str):
            payload["result"] = obj["result"]
        errors = self._refusals(obj.get("permission_denials"))
        reported = obj.get("errors")
        if isinstance(reported, list):
            errors += [
                Event(EventType.ERROR, f"Claude Code: {e}") for e in reported if isinstance(e, str)
            ]
        return self._hold_result(payload, errors)

    def _refusals(self, denials: object) -> list[Event]:
        if not isinstance(denials, list):
            return []
        allowed = describe_allowed(self._config.allowed_commands or [])
        events = []
        for denial in denials:
            if not isinstance(denial, dict):
                continue
            tool = denial.get("tool_name")
            tool_input = denial.get("tool_input")
            command = tool_input.get("command") if isinstance(tool_input, dict) else None
            if isinstance(command, str):
                shown = command if len(command) <= 500 else command[:500] + "..."
                sentence = (
                    f"refused by Claude Code: `{shown}` is not an allowed command "
                    f"(allowed: {allowed})"
                )
            else:
                sentence = f"refused by Claude Code: the {tool or 'tool'} tool is not allowed here"
            events.append(Event(EventType.ERROR, sentence))
        return events


def _texts(content: list[Any]) -> list[str]:
    return [
        block["text"]
        for block in content
        if isinstance(block, dict) and isinstance(block.get("text"), str)
    ]
