"""Factory's stream-jsonrpc protocol, as ``droid exec --input-format stream-jsonrpc
--output-format stream-jsonrpc`` speaks it, in the standard library only.

The protocol is the one Factory's Python SDK (``droid-sdk`` on PyPI, 0.5.0: its
``droid_sdk.schemas`` pydantic models and ``droid_sdk.protocol``) drives. The wrapper cannot ship
the SDK (it needs pydantic's compiled core), so the few shapes the FACTORY driver uses are
written here, and ``tests/agents/test_fake_droid_jsonrpc.py`` checks the fake droid, and every
request and answer this module writes, against the SDK's own models.

One JSON object per line, each with ``jsonrpc: "2.0"``, ``factoryApiVersion``,
``factoryProtocolVersion`` and a ``type``:

- ``request`` (``id``, ``method``, ``params``): ours (``droid.initialize_session``,
  ``droid.load_session``, ``droid.add_user_message``), or droid's to us mid-turn
  (``droid.request_permission``, ``droid.ask_user``), which must be answered or the turn waits;
- ``response`` (``id``, then ``result`` or ``error`` with ``code`` and ``message``): -32004 is an
  entity droid does not know (a session to load);
- ``notification`` (``method: droid.session_notification``, ``params.notification``): the turn
  (``create_message``, ``tool_call``, ``tool_result``, ``error``, ..., ``agent_turn_completed``
  last).

The permission policy (:func:`permission_verdict`) lives here too: droid asks only for what its
autonomy level does not cover, and the wrapper answers from ``allowed_commands``.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: What the wrapper announces (droid_sdk 0.5.0: ``schemas.constants``).
API_VERSION = "1.0.0"
PROTOCOL_VERSION = "1.221.0"

INITIALIZE_SESSION = "droid.initialize_session"
LOAD_SESSION = "droid.load_session"
ADD_USER_MESSAGE = "droid.add_user_message"
SESSION_NOTIFICATION = "droid.session_notification"
REQUEST_PERMISSION = "droid.request_permission"
ASK_USER = "droid.ask_user"

#: JSON-RPC error codes of the protocol (``droid_sdk.schemas.enums.JsonRpcErrorCode``).
ENTITY_NOT_FOUND = -32004
METHOD_NOT_FOUND = -32601

#: ``selectedOption`` values (``ToolConfirmationOutcome``).
PROCEED_ONCE = "proceed_once"
CANCEL = "cancel"

#: Shown at most this much of a command or question in an event.
MAX_SHOWN = 500


def _envelope(kind: str, **fields: object) -> str:
    message = {
        "jsonrpc": "2.0",
        "factoryApiVersion": API_VERSION,
        "factoryProtocolVersion": PROTOCOL_VERSION,
        "type": kind,
        **fields,
    }
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


def request(request_id: str, method: str, params: dict[str, Any]) -> str:
    return _envelope("request", id=request_id, method=method, params=params)


def response(request_id: str, result: dict[str, Any]) -> str:
    return _envelope("response", id=request_id, result=result)


def error_response(request_id: str, code: int, message: str) -> str:
    return _envelope("response", id=request_id, error={"code": code, "message": message})


@dataclass(frozen=True, slots=True)
class Message:
    """One line of droid's, read as the protocol's envelope."""

    type: str
    id: str | None = None
    method: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    error: dict[str, Any] | None = None

    @property
    def notification(self) -> dict[str, Any] | None:
        """The payload of a ``droid.session_notification``, if that is what this is."""
        if self.type != "notification" or self.method != SESSION_NOTIFICATION:
            return None
        payload = self.params.get("notification")
        return (
            payload if isinstance(payload, dict) and isinstance(payload.get("type"), str) else None
        )


def parse(line: str) -> Message | None:
    """The envelope on ``line``; None for anything else (text, truncated JSON, other shapes)."""
    try:
        value = json.loads(line)
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("jsonrpc") != "2.0":
        return None
    kind = value.get("type")
    raw_id = value.get("id")
    request_id = (
        str(raw_id) if isinstance(raw_id, str | int) and not isinstance(raw_id, bool) else None
    )
    method = value.get("method") if isinstance(value.get("method"), str) else None
    raw_params = value.get("params")
    params: dict[str, Any] = raw_params if isinstance(raw_params, dict) else {}
    error = value.get("error") if isinstance(value.get("error"), dict) else None
    if kind not in {"request", "response", "notification"}:
        # Older peers leave ``type`` out: decide by content, as the SDK's protocol does.
        if "result" in value or "error" in value:
            kind = "response"
        elif method is not None:
            kind = "request" if request_id is not None else "notification"
        else:
            return None
    if kind == "request" and (request_id is None or method is None):
        return None
    if kind == "response" and request_id is None:
        return None
    return Message(
        type=kind,
        id=request_id,
        method=method,
        params=params,
        result=value.get("result"),
        error=error,
    )


def error_text(error: dict[str, Any] | None) -> str:
    if not error:
        return "unknown error"
    message = error.get("message")
    code = error.get("code")
    text = message if isinstance(message, str) and message else "unknown error"
    return f"{text} (code {code})" if isinstance(code, int) else text


def shown(text: str) -> str:
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."


# --- Permission requests -----------------------------------------------------------------------

#: Shell builtins that only change the shell itself: never checked by the shims either.
_BUILTINS = frozenset({"cd", "pushd", "popd", "export", "unset", "set", ":", "true", "false"})
_SEPARATORS = frozenset({";", "&&", "||", "|", "&", "|&", ";;"})
_PUNCTUATION = frozenset("();<>|&")
#: Inside these the command line holds commands we cannot see without running a shell.
_OPAQUE = ("$(", "`", "<(", ">(")


def simple_commands(command: str) -> list[list[str]] | None:
    """The simple commands of a shell command line, as argv lists (leading ``NAME=value``
    assignments and redirections left out); None when it cannot be judged without a shell
    (command substitution, unbalanced quotes)."""
    if any(marker in command for marker in _OPAQUE):
        return None
    lexer = shlex.shlex(command.replace("\n", " ; "), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:
        return None
    commands: list[list[str]] = []
    current: list[str] = []
    skip_next = False
    for token in tokens:
        if skip_next:
            skip_next = False
            continue
        if token in {"{", "}"}:
            continue  # grouping: the commands inside are judged one by one
        if token and all(char in _PUNCTUATION for char in token):
            if token not in _SEPARATORS and ("<" in token or ">" in token):
                skip_next = True  # a redirection: its target is not a command word
            elif token in _SEPARATORS or any(char in ";|&" for char in token):
                if current:
                    commands.append(current)
                current = []
            # else parentheses (a subshell): the commands inside are judged one by one
        elif not current and "=" in token and not token.startswith("="):
            continue  # ``NAME=value cmd``
        else:
            current.append(token)
    if current:
        commands.append(current)
    return commands


def command_allowed(argv: Sequence[str], allowed: Sequence[str]) -> bool:
    """Whether ``allowed`` has an entry that ``argv`` starts with, word by word (the rule of
    the shims: ``npm test`` allows ``npm test --watch``, not ``npm install``)."""
    if not argv:
        return True
    if argv[0] in _BUILTINS:
        return True
    for entry in allowed:
        try:
            words = shlex.split(entry)
        except ValueError:
            words = entry.split()
        if words and list(argv[: len(words)]) == words:
            return True
    return False


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to answer one ``droid.request_permission``, and what to say about it."""

    approve: bool
    #: One sentence per refused tool use (``error`` events).
    refusals: list[str]


def permission_verdict(
    params: dict[str, Any], allowed: Sequence[str] | None, autonomy: str
) -> Verdict:
    """Droid asks only for what its autonomy level (``WM_FACTORY_AUTO``) does not cover. The
    wrapper approves a request when every tool use in it is a shell command ``allowed_commands``
    lists (what ``commandAllowlist`` granted under ``droid exec --auto``), and refuses it
    otherwise: any other tool asking past the level (edits, MCP tools, missions, spec mode),
    and any command when ``allowed_commands`` is not set (then the autonomy level is the
    ceiling, as it was with ``--auto``). One refused use refuses the request: droid's answer
    covers them all."""
    uses = params.get("toolUses")
    if not isinstance(uses, list) or not uses:
        return Verdict(False, ["refused: droid asked for permission without naming a tool use"])
    refusals: list[str] = []
    for use in uses:
        details = use.get("details") if isinstance(use, dict) else None
        kind = details.get("type") if isinstance(details, dict) else None
        if not isinstance(details, dict) or kind != "exec":
            refusals.append(_tool_refusal(use, kind, autonomy))
            continue
        full = details.get("fullCommand")
        command = full if isinstance(full, str) and full else details.get("command")
        if not isinstance(command, str) or not command:
            refusals.append("refused: droid asked to run a command it did not name")
            continue
        if allowed is None:
            refusals.append(
                f"refused: `{shown(command)}` is above droid's autonomy level ({autonomy}, "
                "WM_FACTORY_AUTO) and allowed_commands does not list it"
            )
            continue
        if not _exec_allowed(command, details.get("extractedCommands"), allowed):
            described = ", ".join(e.strip() for e in allowed if e.strip()) or "none"
            refusals.append(
                f"refused: `{shown(command)}` is not an allowed command (allowed: {described})"
            )
    return Verdict(not refusals, refusals)


def _exec_allowed(command: str, extracted: object, allowed: Sequence[str]) -> bool:
    lines = [command]
    if isinstance(extracted, list):
        lines += [item for item in extracted if isinstance(item, str)]
    for line in lines:
        commands = simple_commands(line)
        if commands is None:
            return False
        if not all(command_allowed(argv, allowed) for argv in commands):
            return False
    return True


def _tool_refusal(use: object, kind: object, autonomy: str) -> str:
    tool_use = use.get("toolUse") if isinstance(use, dict) else None
    name = tool_use.get("name") if isinstance(tool_use, dict) else None
    what = f"the {name} tool" if isinstance(name, str) and name else "a tool"
    if isinstance(kind, str) and kind:
        what += f" ({kind})"
    return (
        f"refused: droid asked to use {what} above its autonomy level ({autonomy}, "
        "WM_FACTORY_AUTO); only shell commands allowed_commands lists are approved"
    )


def questions_of(params: dict[str, Any]) -> list[str]:
    """The question texts of a ``droid.ask_user``."""
    questions = params.get("questions")
    if not isinstance(questions, list):
        return []
    return [
        shown(q["question"])
        for q in questions
        if isinstance(q, dict) and isinstance(q.get("question"), str)
    ]
