"""What the LLM gateway forwards, without a network: its allow-list and the normal form of a path.

The gateway forwards with the operator's credential, so a request it forwards is done as the
operator: only the endpoints an agent needs, by method and path, and only a path that means to
every upstream what it means here.
"""

from __future__ import annotations

import pytest

from worker_manager.egress.routes import (
    ANTHROPIC_ROUTES,
    PathVerdict,
    Route,
    is_normal_path,
    judge,
)


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("POST", "/v1/messages"),
        ("POST", "/v1/messages?beta=true"),
        ("POST", "/v1/messages/count_tokens?beta=true"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models?limit=20"),
        ("GET", "/v1/models/claude-sonnet-4-5-20250929"),
    ],
)
def test_what_claude_code_calls_is_forwarded(method: str, target: str) -> None:
    assert judge(ANTHROPIC_ROUTES, method, target) is PathVerdict.ALLOWED


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("POST", "/v1/messages/batches"),
        ("GET", "/v1/messages/batches"),
        ("GET", "/v1/messages/batches/msgbatch_01/results"),
        ("GET", "/v1/files"),
        ("POST", "/v1/files"),
        ("GET", "/v1/organizations/api_keys"),
        ("GET", "/v1/messages"),  # the right path, the wrong method
        ("DELETE", "/v1/models/claude-sonnet-4-5"),
        ("HEAD", "/v1/models"),
        ("post", "/v1/messages"),  # methods are case-sensitive (RFC 9110 §9.1)
        ("POST", "/v1/complete"),
        ("POST", "/v1/messages/count_tokens/extra"),
        ("GET", "/v1/models/a/b"),
        ("POST", "/V1/Messages"),
    ],
)
def test_the_rest_of_the_account_is_not_forwarded(method: str, target: str) -> None:
    assert judge(ANTHROPIC_ROUTES, method, target) is PathVerdict.NOT_ALLOWED


@pytest.mark.parametrize(
    "target",
    [
        "/v1/../v1/messages",
        "/v1/messages/..",
        "/v1/./messages",
        "/../admin",
        "/v1/%2e%2e/admin",
        "/v1/%2E%2E/admin",
        "/v1/.%2e/admin",
        "/v1/messages%2fbatches",
        "/v1/messages%2Fbatches",
        "//v1/messages",
        "/v1//messages",
        "/v1/messages/",
        "/v1\\..\\messages",
        "/v1/messages;x=1",
        "/v1/messages#frag",
        "/v1/messages?beta=true#frag",
        "v1/messages",
        "http://api.anthropic.com/v1/messages",
        "*",
        "",
    ],
)
def test_a_path_not_in_normal_form_is_refused_whatever_it_names(target: str) -> None:
    assert judge(ANTHROPIC_ROUTES, "POST", target) is PathVerdict.BAD_PATH


def test_normal_form_is_unreserved_segments_none_empty_none_dots() -> None:
    assert is_normal_path("/v1/models/claude-3.5_haiku~x")
    assert not is_normal_path("/")  # one empty segment
    assert not is_normal_path("/v1/.")
    assert not is_normal_path("/v1/a b")
    assert not is_normal_path("/v1/é")


def test_a_second_api_is_a_list_of_routes() -> None:
    """OpenAI's Responses API (for Codex) is data like Anthropic's, no code."""
    responses = (Route("POST", "/v1/responses"), Route("GET", "/v1/models/{model}"))
    assert judge(responses, "POST", "/v1/responses") is PathVerdict.ALLOWED
    assert judge(responses, "GET", "/v1/models/gpt-5-codex") is PathVerdict.ALLOWED
    assert judge(responses, "POST", "/v1/messages") is PathVerdict.NOT_ALLOWED
    assert judge(responses, "GET", "/v1/models/") is PathVerdict.BAD_PATH
    assert str(responses[0]) == "POST /v1/responses"


def test_a_placeholder_matches_one_segment_only() -> None:
    route = Route("GET", "/v1/models/{model_id}")
    assert route.matches("GET", "/v1/models/x")
    assert not route.matches("GET", "/v1/models")
    assert not route.matches("GET", "/v1/models/x/y")
    assert not route.matches("GET", "/v1/{model_id}/x")
