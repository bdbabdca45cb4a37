"""The gateway's meter and prices for OpenAI's Responses API, without a network.

A stream is fed split at every possible byte: a final event cut anywhere must still be read.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from worker_base.agents.openai_pricing import (
    OPENAI_PRICES,
    UNKNOWN_OPENAI_PRICE,
    openai_cost_usd,
    openai_price_of,
)
from worker_manager.egress.gateway import OPENAI_API, openai_error
from worker_manager.egress.meter import ResponsesMeter, increments
from worker_manager.egress.pricing import OpenAIUsage
from worker_manager.egress.routes import OPENAI_ROUTES, PathVerdict, judge

USAGE = {
    "input_tokens": 1200,
    "input_tokens_details": {"cached_tokens": 200},
    "output_tokens": 300,
    "output_tokens_details": {"reasoning_tokens": 100},
    "total_tokens": 1500,
}


def sse(data: dict[str, Any]) -> bytes:
    return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()


def stream(text: str = "hello", *, final: bool = True) -> bytes:
    response = {"id": "resp_1", "model": "gpt-5-codex", "status": "in_progress", "output": []}
    parts = [
        sse({"type": "response.created", "response": response}),
        sse({"type": "response.output_text.delta", "delta": text}),
        # A delta that merely mentions the final event is text, not the end.
        sse({"type": "response.output_text.delta", "delta": "data: response.completed"}),
    ]
    if final:
        done = {**response, "status": "completed", "output": [{"text": text}], "usage": USAGE}
        parts.append(sse({"type": "response.completed", "response": done}))
    return b"".join(parts)


def metered(body: bytes, cut_at: int | None = None) -> OpenAIUsage:
    meter = ResponsesMeter("text/event-stream; charset=utf-8", request_bytes=900)
    if cut_at is None:
        meter.feed(body)
    else:
        meter.feed(body[:cut_at])
        meter.feed(body[cut_at:])
    return meter.finish()


def test_the_final_usage_is_read_wherever_the_stream_is_split() -> None:
    body = stream()
    for cut in range(len(body) + 1):
        usage = metered(body, cut)
        assert (usage.input_tokens, usage.cached_tokens) == (1200, 200), cut
        assert (usage.output_tokens, usage.reasoning_tokens) == (300, 100), cut
        assert usage.model == "gpt-5-codex"


def test_a_long_final_event_is_read_whole() -> None:
    """The final event repeats the whole answer: it may be far longer than any window."""
    body = stream("x" * 300_000)
    meter = ResponsesMeter("text/event-stream", 10)
    for start in range(0, len(body), 4096):
        meter.feed(body[start : start + 4096])
    assert meter.finish().output_tokens == 300


def test_a_stream_without_its_final_event_is_charged_an_estimate() -> None:
    body = stream("y" * 6000, final=False)
    usage = metered(body)
    assert usage.output_tokens >= 2000  # every byte, three a token
    assert usage.input_tokens >= 300  # the request's 900 bytes
    assert usage.model == "gpt-5-codex"


def test_a_json_answer_and_a_cut_one() -> None:
    answer = json.dumps({"model": "gpt-5-mini", "usage": USAGE}).encode()
    meter = ResponsesMeter("application/json", 0)
    meter.feed(answer)
    assert meter.finish().input_tokens == 1200
    cut = ResponsesMeter("application/json", 0)
    cut.feed(answer[:30])
    assert cut.finish(cut=True).output_tokens > 0


def test_prices_cached_input_and_reasoning() -> None:
    usage = OpenAIUsage()
    usage.update(USAGE)
    usage.model = "gpt-5-codex"
    price = openai_price_of("gpt-5-codex")
    expected = (1000 * price.input + 200 * price.cached_input + 300 * price.output) / 1e6
    assert usage.cost_usd() == pytest.approx(expected)
    assert increments(usage) == {
        "input_tokens": 1000,
        "output_tokens": 300,
        "cache_read_input_tokens": 200,
        "reasoning_tokens": 100,
        "requests": 1,
    }
    # More cached than input (a garbled report) is all of it, never a negative charge.
    assert openai_cost_usd("gpt-5", 10, 50, 0) == pytest.approx(10 * 0.125 / 1e6)


def test_the_most_specific_row_wins_and_unknown_models_pay_the_most() -> None:
    assert openai_price_of("gpt-5-mini-2025-08-07").input == 0.25
    assert openai_price_of("gpt-5.1-codex-mini").input == 0.25
    assert openai_price_of("gpt-5-codex").input == 1.25
    assert openai_price_of("some-new-model") == UNKNOWN_OPENAI_PRICE
    assert all(UNKNOWN_OPENAI_PRICE.output >= price.output for _, price in OPENAI_PRICES)


def test_routes_forward_only_what_codex_needs() -> None:
    assert judge(OPENAI_ROUTES, "POST", "/responses") is PathVerdict.ALLOWED
    assert judge(OPENAI_ROUTES, "GET", "/models") is PathVerdict.ALLOWED
    for method, path in (
        ("GET", "/responses/resp_1"),
        ("POST", "/files"),
        ("POST", "/batches"),
        ("GET", "/organization/costs"),
        ("POST", "/v1/messages"),
    ):
        assert judge(OPENAI_ROUTES, method, path) is PathVerdict.NOT_ALLOWED, path
    assert judge(OPENAI_ROUTES, "POST", "/responses/../files") is PathVerdict.BAD_PATH


def test_errors_and_the_budget_refusal_are_openais_shape() -> None:
    response = openai_error(429, OPENAI_API.budget_kind, "spent")
    assert response.status == 429 == OPENAI_API.budget_status
    assert response.body is not None
    body = json.loads(response.body)  # type: ignore[arg-type]
    assert body == {
        "error": {
            "message": "spent",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    }
