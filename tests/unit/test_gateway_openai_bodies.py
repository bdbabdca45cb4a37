"""What a Responses API body may ask OpenAI to fetch, without a network: the ``input[]`` walk of
:func:`worker_manager.egress.routes.openai_fetched`, and the OpenAI words of the gateway's
refusals.

An image or a file given to the Responses API by URL is fetched by the API, past the worker's
egress grant; one given by ``file_id`` is read from the operator's account. Only content the
body carries itself (a ``data:`` URI, text, base64 ``file_data``) is forwarded.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from worker_manager.egress.gateway import openai_error
from worker_manager.egress.routes import OPENAI_BODY, BodyRefused, checked_body, openai_fetched

PNG = "data:image/png;base64,iVBORw0KGgo="


def _body(*items: Any) -> dict[str, Any]:
    return {"model": "gpt-5-codex", "stream": True, "store": False, "input": list(items)}


def _user(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": list(parts)}


def test_what_codex_sends_passes() -> None:
    """A conversation as Codex sends it: text, its own tool calls and their outputs, reasoning,
    an earlier answer whose annotations cite a file (not fetched), images it read itself."""
    body = _body(
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "x"}]},
        _user({"type": "input_text", "text": "look"}, {"type": "input_image", "image_url": PNG}),
        {"type": "reasoning", "summary": [], "encrypted_content": None},
        {"type": "function_call", "name": "exec_command", "arguments": "{}", "call_id": "c1"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        {
            "type": "function_call_output",
            "call_id": "c2",
            "output": [{"type": "input_image", "image_url": "DATA:image/png;base64,AA"}],
        },
        {
            "type": "message",
            "role": "assistant",
            "content": [
                {
                    "type": "output_text",
                    "text": "see",
                    "annotations": [{"type": "file_citation", "file_id": "file-1", "index": 0}],
                }
            ],
        },
        _user({"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;"}),
        _user({"type": "input_image", "image_url": PNG, "file_id": None, "detail": "auto"}),
    )
    assert openai_fetched(body) is None
    assert json.loads(checked_body(OPENAI_BODY, json.dumps(body).encode())) == body
    assert openai_fetched({"model": "m", "input": "a plain string"}) is None


@pytest.mark.parametrize(
    ("item", "named"),
    [
        (_user({"type": "input_image", "image_url": "https://evil.example/x.png"}), "image_url"),
        (_user({"type": "input_image", "image_url": "http://169.254.169.254/"}), "image_url"),
        (_user({"type": "input_image", "image_url": " data:image/png;base64,AA"}), "image_url"),
        (_user({"type": "input_image", "image_url": {"url": "https://e.example"}}), "image_url"),
        (_user({"type": "input_image", "image_url": 7}), "image_url"),
        (_user({"type": "input_image", "file_id": "file-abc"}), "file_id"),
        (_user({"type": "input_file", "file_url": "https://evil.example/a.pdf"}), "file_url"),
        (_user({"type": "input_file", "file_id": "file-abc"}), "file_id"),
        (
            {
                "type": "function_call_output",
                "call_id": "c1",
                "output": [{"type": "input_image", "image_url": "https://evil.example/y"}],
            },
            "image_url",
        ),
        (
            {
                "type": "custom_tool_call_output",
                "call_id": "c1",
                "output": [{"type": "input_file", "file_id": "file-x"}],
            },
            "file_id",
        ),
        (
            {
                "type": "computer_call_output",
                "call_id": "c1",
                "output": {"type": "computer_screenshot", "image_url": "https://evil.example"},
            },
            "image_url",
        ),
    ],
    ids=[
        "image-https",
        "image-metadata-ip",
        "image-space-before-data",
        "image-url-object",
        "image-url-not-a-string",
        "image-file-id",
        "file-url",
        "file-file-id",
        "image-in-function-output",
        "file-id-in-custom-tool-output",
        "screenshot-url",
    ],
)
def test_an_input_the_api_would_fetch_is_refused_named(item: dict[str, Any], named: str) -> None:
    body = _body(_user({"type": "input_text", "text": "hi"}), item)
    refusal = openai_fetched(body)
    assert refusal is not None and named in refusal
    with pytest.raises(BodyRefused) as refused:
        checked_body(OPENAI_BODY, json.dumps(body).encode())
    assert refused.value.status == 403 and refused.value.kind == "permission_error"
    assert named in str(refused.value)


@pytest.mark.parametrize(
    ("kind", "status", "error_type", "code"),
    [
        ("rate_limit_error", 429, "requests", "rate_limit_exceeded"),
        ("request_too_large", 413, "invalid_request_error", "request_too_large"),
        ("permission_error", 403, "invalid_request_error", "permission_denied"),
        ("insufficient_quota", 429, "insufficient_quota", "insufficient_quota"),
    ],
)
def test_the_gateways_refusals_in_openais_words(
    kind: str, status: int, error_type: str, code: str
) -> None:
    response = openai_error(status, kind, "worker-manager: no")
    assert response.status == status
    assert response.text is not None
    error = json.loads(response.text)["error"]
    assert (error["type"], error["code"], error["message"]) == (
        error_type,
        code,
        "worker-manager: no",
    )
