"""What a forwarded body may ask of the API, without a network: the body policy of
:mod:`worker_manager.egress.routes` (server tools, MCP servers, fetched sources, beta flags).

In ``POST /v1/messages`` the API itself acts for the agent when the body asks it to: it
searches, fetches, connects to MCP servers, runs code. None of that is bounded by the worker's
egress grant, and all of it is paid by the operator; the gateway forwards only what the client
runs itself.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from worker_manager.egress.routes import (
    ANTHROPIC_BODY,
    BodyRefused,
    body_refusal,
    checked_body,
    forwarded_betas,
)

PLAIN: dict[str, Any] = {
    "model": "claude-sonnet-4-5-20250929",
    "max_tokens": 64,
    "stream": True,
    "messages": [{"role": "user", "content": "hi"}],
}


def _message(*content: dict[str, Any]) -> dict[str, Any]:
    return {**PLAIN, "messages": [{"role": "user", "content": list(content)}]}


def test_what_claude_code_sends_passes() -> None:
    """The shape of the pinned CLI's request (seen through the gateway): custom tools, thinking,
    context management, effort."""
    body = {
        **PLAIN,
        "system": [{"type": "text", "text": "You are Claude Code"}],
        "metadata": {"user_id": "{}"},
        "thinking": {"type": "adaptive", "display": "updates"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "medium"},
        "tools": [{"name": "Bash", "description": "d", "input_schema": {"type": "object"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "go"}]},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "t",
                        "name": "Bash",
                        # A tool call's input is the model's, never read as content.
                        "input": {"source": {"type": "url", "url": "https://x"}},
                    }
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t",
                        "content": [
                            {
                                "type": "image",
                                "source": {"type": "base64", "media_type": "image/png", "data": ""},
                            }
                        ],
                    }
                ],
            },
        ],
    }
    assert body_refusal(ANTHROPIC_BODY, body) is None


@pytest.mark.parametrize(
    "tool",
    [
        {"name": "x", "input_schema": {}},
        {"type": None, "name": "x", "input_schema": {}},
        {"type": "custom", "name": "x", "input_schema": {}},
        {"type": "bash_20250124", "name": "bash"},
        {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
        {"type": "computer_20250124", "name": "computer", "display_width_px": 1024},
        {"type": "memory_20250818", "name": "memory"},
    ],
)
def test_tools_the_client_runs_pass(tool: dict[str, Any]) -> None:
    assert body_refusal(ANTHROPIC_BODY, {**PLAIN, "tools": [tool]}) is None


@pytest.mark.parametrize(
    "kind",
    [
        "web_search_20250305",
        "web_fetch_20250910",
        "code_execution_20250825",
        "tool_search_tool_regex_20251119",
        "mcp_toolset",
        "anything_new_20270101",
        "",
        7,
    ],
)
def test_every_other_tool_type_is_refused_named(kind: object) -> None:
    refusal = body_refusal(ANTHROPIC_BODY, {**PLAIN, "tools": [{"type": kind, "name": "t"}]})
    assert refusal is not None and "server tool" in refusal and str(kind) in refusal


@pytest.mark.parametrize("field", ["mcp_servers", "container", "betas", "unknown_field"])
def test_fields_off_the_list_are_refused_named(field: str) -> None:
    refusal = body_refusal(ANTHROPIC_BODY, {**PLAIN, field: []})
    assert refusal is not None and repr(field) in refusal


@pytest.mark.parametrize(
    "body",
    [
        _message({"type": "image", "source": {"type": "url", "url": "https://x/a.png"}}),
        _message({"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}}),
        _message({"type": "document", "source": {"type": "file", "file_id": "file_1"}}),
        _message(
            {
                "type": "document",
                "source": {
                    "type": "content",
                    "content": [{"type": "image", "source": {"type": "url", "url": "https://x"}}],
                },
            }
        ),
        _message(
            {
                "type": "tool_result",
                "tool_use_id": "t",
                "content": [{"type": "image", "source": {"type": "url", "url": "https://x"}}],
            }
        ),
    ],
)
def test_a_source_the_api_would_fetch_is_refused(body: dict[str, Any]) -> None:
    refusal = body_refusal(ANTHROPIC_BODY, body)
    assert refusal is not None and "content source" in refusal


def test_what_is_forwarded_is_what_was_checked() -> None:
    raw = b'{"model": "m", "tools": [{"type": "web_search_20250305"}], "tools": []}'
    assert json.loads(checked_body(ANTHROPIC_BODY, raw)) == {"model": "m", "tools": []}
    assert checked_body(ANTHROPIC_BODY, raw).count(b'"tools"') == 1
    # A lone surrogate stays escaped rather than failing the request.
    assert json.loads(checked_body(ANTHROPIC_BODY, b'{"model": "\\ud800"}')) == {"model": "\ud800"}


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"{", 400),
        (b"[]", 400),
        (b"[" * 100_000 + b"]" * 100_000, 400),
        (b'"text"', 400),
        (b'{"mcp_servers": []}', 403),
    ],
)
def test_a_refused_body_says_how_the_api_would(raw: bytes, status: int) -> None:
    with pytest.raises(BodyRefused) as refused:
        checked_body(ANTHROPIC_BODY, raw)
    assert refused.value.status == status
    assert refused.value.kind == ("permission_error" if status == 403 else "invalid_request_error")
    assert str(refused.value).startswith("worker-manager: ")


def test_beta_flags_are_cut_down_to_the_allow_list_in_order() -> None:
    values = [
        "claude-code-20250219, mcp-client-2025-11-20",
        "files-api-2025-04-14,interleaved-thinking-2025-05-14,claude-code-20250219",
        "",
    ]
    assert forwarded_betas(ANTHROPIC_BODY, values) == [
        "claude-code-20250219",
        "interleaved-thinking-2025-05-14",
    ]
