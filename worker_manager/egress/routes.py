"""Which requests the LLM gateway forwards: an allow-list of endpoints per API, as data.

The gateway adds the operator's credential to what it forwards, so whatever it forwards is done
with the operator's account. An agent needs a handful of endpoints (Claude Code: the Messages
API, token counting, the model list); the rest of an account (message batches, files, the admin
API) is for the operator, and a batch is not even charged to the worker as it is made. So the
gateway forwards a request only when its method and path are one of its API's :class:`Route`\\ s,
and refuses everything else before the API (``permission_error``, ``not_found_error`` for a path
not in normal form). OpenAI's Responses API, for Codex, is another tuple of routes
(:data:`OPENAI_ROUTES`), relative to OpenAI's base URL (which names the version, ``…/v1``).

A path is judged as the worker sent it, still percent-encoded, and only a path already in normal
form is forwarded: segments of RFC 3986 unreserved characters (letters, digits, ``-._~``), none
empty, none ``.`` or ``..``. So ``/v1/../admin``, ``/v1/%2e%2e/admin``, ``//v1/messages`` and
``/v1/messages%2fbatches`` never reach an upstream whose base URL has a path of its own (where
``..`` would climb out of it), whatever the upstream makes of them. Every real endpoint's path is
in normal form already, so a real client never meets this rule.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = [
    "ANTHROPIC_BODY",
    "ANTHROPIC_ROUTES",
    "OPENAI_BODY",
    "OPENAI_ROUTES",
    "BodyPolicy",
    "BodyRefused",
    "PathVerdict",
    "Route",
    "body_refusal",
    "checked_body",
    "forwarded_betas",
    "is_normal_path",
    "judge",
    "openai_fetched",
]

#: One segment of a path in normal form: RFC 3986 unreserved characters only.
_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint a worker may call: a method and a path, in which a segment written in
    braces (``{model_id}``) stands for any one segment."""

    method: str
    path: str

    def matches(self, method: str, path: str) -> bool:
        """Whether a request (its path in normal form, without its query) is this endpoint."""
        if method != self.method:
            return False
        want, got = self.path.split("/"), path.split("/")
        return len(want) == len(got) and all(
            w == g or (w.startswith("{") and w.endswith("}") and bool(g))
            for w, g in zip(want, got, strict=True)
        )

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


#: What Claude Code calls (seen with the real CLI through the gateway, tests/integration/
#: test_gateway_claude.py): ``POST /v1/messages`` (streamed or not, with ``?beta=true``),
#: ``count_tokens``, and the model list the Agent SDK may read.
ANTHROPIC_ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/messages"),
    Route("POST", "/v1/messages/count_tokens"),
    Route("GET", "/v1/models"),
    Route("GET", "/v1/models/{model_id}"),
)


#: What the Codex CLI calls (seen with the real CLI through the gateway, tests/integration/
#: test_codex_real.py): ``POST /responses``, streamed; and the model list, which OpenAI's SDKs
#: and Codex's model picker may read. Not ``GET``/``DELETE /responses/{id}`` (Codex sends
#: ``store: false`` and never reads a stored response back), nor files, batches, fine-tuning,
#: vector stores or the admin API: those are the operator's.
OPENAI_ROUTES: tuple[Route, ...] = (
    Route("POST", "/responses"),
    Route("GET", "/models"),
)


class PathVerdict(StrEnum):
    """What the gateway does with a request's method and path."""

    ALLOWED = "allowed"
    #: In normal form, but not an endpoint a worker may call (refused: ``permission_error``).
    NOT_ALLOWED = "not_allowed"
    #: Not in normal form (refused: ``not_found_error``; no endpoint has such a path).
    BAD_PATH = "bad_path"


def is_normal_path(path: str) -> bool:
    """Whether ``path`` (percent-encoded, without its query) is in normal form: it starts with
    ``/`` and every segment is unreserved characters, not empty, not ``.`` or ``..``."""
    if not path.startswith("/"):
        return False
    return all(
        segment not in (".", "..") and _SEGMENT.fullmatch(segment) is not None
        for segment in path[1:].split("/")
    )


def judge(routes: tuple[Route, ...], method: str, target: str) -> PathVerdict:
    """The verdict on a request: ``target`` is its request-target as sent (path and query)."""
    path = target.partition("?")[0]
    if "#" in target or not is_normal_path(path):
        return PathVerdict.BAD_PATH
    if any(route.matches(method, path) for route in routes):
        return PathVerdict.ALLOWED
    return PathVerdict.NOT_ALLOWED


# --- what a forwarded body may ask the API to do -----------------------------------------------
# An allowed endpoint is not enough: in ``POST /v1/messages`` the API itself will act for the
# agent when the body asks it to. A server tool (``web_search_*``, ``web_fetch_*``) fetches or
# searches what the agent names; ``mcp_servers`` has the API connect to any URL (with any token
# the agent writes in it); an image or document whose ``source`` is a ``url`` is fetched by the
# API; ``container``, ``code_execution_*`` and ``file`` sources run code on, or read, the
# operator's account. Each is a way off the container that no egress grant controls, paid by the
# operator. So the body of a forwarded request is checked against its API's :class:`BodyPolicy`
# (allow-lists, as data), and what passes is what is sent: the gateway forwards the JSON it
# checked, re-encoded, never the worker's bytes (a duplicate key read one way here and another
# way upstream cannot slip through). Tools the *client* runs (custom tools, Anthropic's
# ``bash_*``/``text_editor_*``/``computer_*``/``memory_*`` schemas) stay on the worker's side of
# its grant, and are allowed. Beta flags are cut down to an allow-list too (a beta is how most
# of these features are switched on); an unknown flag is dropped, not refused, so a newer CLI
# that sends one still works without the feature.


@dataclass(frozen=True, slots=True)
class BodyPolicy:
    """What the JSON body of a forwarded request may hold, for one API."""

    #: Top-level fields a request may carry (anything else is refused, named).
    fields: frozenset[str]
    #: ``tools[].type`` values allowed exactly; a tool without ``type`` is a custom tool.
    tool_types: frozenset[str]
    #: ``tools[].type`` prefixes allowed (versioned client-executed tools: ``bash_20250124``).
    tool_prefixes: tuple[str, ...]
    #: ``source.type`` values of content blocks the API would fetch or read for the agent.
    refused_sources: frozenset[str]
    #: Beta flags forwarded (``anthropic-beta``); the rest are dropped.
    betas: frozenset[str]
    #: ``body`` -> what in it the API would fetch or read for the agent, named, or None; for a
    #: body shaped unlike the Messages API's (OpenAI's ``input[]``, :func:`openai_fetched`).
    fetched: Callable[[dict[str, Any]], str | None] | None = None


#: What Claude Code sends (seen with the real CLI, tests/integration/test_gateway_claude.py:
#: custom tools only, and the fields and betas below), plus the Messages API's other plain
#: fields. Not ``mcp_servers`` or ``container``.
ANTHROPIC_BODY = BodyPolicy(
    fields=frozenset(
        {
            "model",
            "messages",
            "system",
            "max_tokens",
            "metadata",
            "stop_sequences",
            "stream",
            "temperature",
            "top_k",
            "top_p",
            "tools",
            "tool_choice",
            "thinking",
            "service_tier",
            "context_management",
            "output_config",
            "output_format",
        }
    ),
    tool_types=frozenset({"custom"}),
    tool_prefixes=("bash_", "text_editor_", "computer_", "memory_"),
    refused_sources=frozenset({"url", "file"}),
    betas=frozenset(
        {
            # Sent by Claude Code (the pinned CLI).
            "claude-code-20250219",
            "interleaved-thinking-2025-05-14",
            "context-management-2025-06-27",
            "per-turn-control-2026-07-01",
            "mid-conversation-tool-changes-2026-07-01",
            "thinking-token-count-2026-05-13",
            "advanced-tool-use-2025-11-20",
            "effort-2025-11-24",
            "thinking-display-updates-2026-08-18",
            # Sent by Claude Code on other models or settings; none acts outside the request.
            "oauth-2025-04-20",
            "context-1m-2025-08-07",
            "fine-grained-tool-streaming-2025-05-14",
            "token-efficient-tools-2025-02-19",
            "prompt-caching-2024-07-31",
            "output-128k-2025-02-19",
            "structured-outputs-2025-11-13",
        }
    ),
)


#: What Codex sends to ``POST /responses`` (seen with the real CLI 0.163, tests/integration/
#: test_codex_real.py), plus the Responses API's other plain fields. Tools: ``function`` and
#: ``custom`` (tools Codex runs), ``namespace`` (groups of those), ``local_shell``; not the
#: hosted tools the API runs itself (``web_search``, ``file_search``, ``code_interpreter``,
#: ``mcp`` with its ``server_url``, ``image_generation``), nor ``background``, ``conversation``
#: or ``prompt`` (work kept on the operator's account).
OPENAI_BODY = BodyPolicy(
    fields=frozenset(
        {
            "model",
            "input",
            "instructions",
            "stream",
            "tools",
            "tool_choice",
            "parallel_tool_calls",
            "reasoning",
            "store",
            "include",
            "prompt_cache_key",
            "client_metadata",
            "text",
            "max_output_tokens",
            "temperature",
            "top_p",
            "truncation",
            "service_tier",
            "metadata",
            "safety_identifier",
            "user",
        }
    ),
    tool_types=frozenset({"function", "custom", "namespace", "local_shell"}),
    tool_prefixes=(),
    refused_sources=frozenset(),
    betas=frozenset(),
    fetched=lambda body: openai_fetched(body),  # defined below, with the other checks
)


class BodyRefused(ValueError):
    """A body the gateway does not forward; ``status`` and ``kind`` as the API would word it."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


#: A refusal names a field or a type up to this many characters (they come from the agent).
_SHOWN = 80


def _shown(value: object) -> str:
    return json.dumps(value)[:_SHOWN] if not isinstance(value, str) else value[:_SHOWN]


def checked_body(policy: BodyPolicy, body: bytes) -> bytes:
    """The bytes to forward for ``body`` (the parsed JSON, re-encoded), or :exc:`BodyRefused`:
    400 ``invalid_request_error`` for a body that is not a JSON object, 403 ``permission_error``
    naming what the policy refuses."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        raise BodyRefused(
            400, "invalid_request_error", "worker-manager: the body is not valid JSON"
        ) from None
    if not isinstance(parsed, dict):
        raise BodyRefused(
            400, "invalid_request_error", "worker-manager: the body is not a JSON object"
        )
    refusal = body_refusal(policy, parsed)
    if refusal is not None:
        raise BodyRefused(403, "permission_error", f"worker-manager: {refusal}")
    # ASCII with escapes: any string the parser took (a lone surrogate too) encodes.
    return json.dumps(parsed, separators=(",", ":")).encode()


def body_refusal(policy: BodyPolicy, body: dict[str, Any]) -> str | None:
    """Why the gateway does not forward ``body`` (a parsed request), or None."""
    extra = sorted(field for field in body if field not in policy.fields)
    if extra:
        return (
            f"the gateway does not forward the field {_shown(extra[0])!r} (it would have the "
            "API act for the agent outside its egress grant, or on the operator's account)"
        )
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind is None or (
            isinstance(kind, str)
            and (kind in policy.tool_types or kind.startswith(policy.tool_prefixes))
        ):
            continue
        return (
            f"the gateway does not forward the server tool {_shown(kind)!r} (the API would "
            "run it for the agent outside its egress grant); tools the client runs are allowed"
        )
    messages = body.get("messages")
    for source in _sources(messages if isinstance(messages, list) else []):
        if source in policy.refused_sources:
            return (
                f"the gateway does not forward a content source of type {_shown(source)!r} "
                "(the API would fetch it for the agent); send the content itself (base64 or "
                "text)"
            )
    return policy.fetched(body) if policy.fetched is not None else None


#: Keys of a Responses API input part that name something the API fetches: an image or a file
#: by URL (only a ``data:`` URI carries the content itself), or one of the account's files.
_URL_KEYS = ("image_url", "file_url")


def openai_fetched(body: dict[str, Any]) -> str | None:
    """What in a Responses API request's ``input`` the API would fetch or read for the agent,
    named, or None: an ``input_image``/``input_file`` (anywhere: in a message's content, in a
    tool call's output, a screenshot) given by an ``image_url``/``file_url`` that is not a
    ``data:`` URI, or by a ``file_id`` (the account's files are the operator's). Annotations
    (citations of a file in the model's own earlier answer) are not fetched, and are skipped."""
    pending: list[Any] = [body.get("input")]
    while pending:
        value = pending.pop()
        if isinstance(value, list):
            pending.extend(value)
            continue
        if not isinstance(value, dict):
            continue
        if value.get("file_id") is not None:
            return (
                f"the gateway does not forward an input by file_id ({_shown(value['file_id'])!r}:"
                " the account's files are the operator's); send the content itself (a data: URI)"
            )
        for key in _URL_KEYS:
            url = value.get(key)
            if isinstance(url, dict):  # ``{"url": …}``, as Chat Completions words it
                url = url.get("url")
            if url is not None and not (isinstance(url, str) and url[:5].lower() == "data:"):
                return (
                    f"the gateway does not forward an input by URL ({key} {_shown(url)!r}: the "
                    "API would fetch it for the agent); send the content itself (a data: URI)"
                )
        pending.extend(v for k, v in value.items() if k != "annotations")
    return None


def _sources(messages: list[Any]) -> Iterator[Any]:
    """The ``source.type`` of every content block of ``messages``, nested ones included (a
    tool result's content, a document's own content); never inside a tool call's ``input``."""
    blocks: list[Any] = [m.get("content") for m in messages if isinstance(m, dict)]
    while blocks:
        content = blocks.pop()
        if not isinstance(content, list):
            continue
        for block in content:
            if not isinstance(block, dict):
                continue
            source = block.get("source")
            if isinstance(source, dict):
                yield source.get("type")
                blocks.append(source.get("content"))
            if block.get("type") != "tool_use":
                blocks.append(block.get("content"))


def forwarded_betas(policy: BodyPolicy, values: Iterable[str]) -> list[str]:
    """The flags of ``anthropic-beta`` header values that the policy forwards, in order."""
    flags = [flag.strip() for value in values for flag in value.split(",")]
    return [flag for flag in dict.fromkeys(flags) if flag in policy.betas]
