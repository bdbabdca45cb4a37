"""The gateway's meter and price table, without a network: what a worker is charged for.

The meter reads a stream as it passes in whatever pieces the socket delivers, so every test of
a stream feeds it split at every possible byte (an event cut anywhere must still be counted).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from worker_manager.egress import gateway, meter
from worker_manager.egress.meter import (
    BYTES_PER_TOKEN,
    UsageMeter,
    budget_refusal,
    estimated_tokens,
    increments,
    spend_of,
    usd,
)
from worker_manager.egress.pricing import (
    PRICES,
    SERVER_TOOL_REQUEST_USD,
    UNKNOWN_MODEL_PRICE,
    Price,
    Usage,
    price_of,
)


def sse(name: str, data: dict[str, Any], *, crlf: bool = False) -> bytes:
    text = f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
    return (text.replace("\n", "\r\n") if crlf else text).encode()


def stream(*, crlf: bool = False) -> bytes:
    """A stream as the API sends it: usage at the start, the cumulative count at the end, and a
    text delta that merely mentions the event names (it must not be taken for them)."""
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "model": "claude-haiku-4-5-20251001",
            "usage": {
                "input_tokens": 1000,
                "cache_creation_input_tokens": 2000,
                "cache_read_input_tokens": 3000,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 1500,
                    "ephemeral_1h_input_tokens": 500,
                },
                "output_tokens": 1,
            },
        },
    }
    tricky = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": 'message_delta "usage": {"output_tokens": 999999}'},
    }
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn"},
        "usage": {"output_tokens": 400},
    }
    return b"".join(
        [
            sse("message_start", start, crlf=crlf),
            sse("content_block_start", {"type": "content_block_start", "index": 0}, crlf=crlf),
            sse("ping", {"type": "ping"}, crlf=crlf),
            sse("content_block_delta", tricky, crlf=crlf),
            sse("content_block_stop", {"type": "content_block_stop", "index": 0}, crlf=crlf),
            sse("message_delta", delta, crlf=crlf),
            sse("message_stop", {"type": "message_stop"}, crlf=crlf),
        ]
    )


def metered(body: bytes, content_type: str, cut: int | None = None) -> Usage:
    answer = UsageMeter(content_type)
    if cut is None:
        answer.feed(body)
    else:
        answer.feed(body[:cut])
        answer.feed(body[cut:])
    return answer.finish()


def test_a_stream_is_metered_wherever_the_socket_cuts_it() -> None:
    body = stream()
    for cut in range(len(body) + 1):
        usage = metered(body, "text/event-stream; charset=utf-8", cut)
        assert (
            usage.input_tokens,
            usage.cache_creation_input_tokens,
            usage.cache_read_input_tokens,
            usage.cache_creation_1h_tokens,
            usage.output_tokens,
            usage.model,
        ) == (1000, 2000, 3000, 500, 400, "claude-haiku-4-5-20251001"), cut


def test_a_stream_in_one_byte_pieces_with_crlf_line_ends_is_metered() -> None:
    answer = UsageMeter("text/event-stream")
    for byte in stream(crlf=True):
        answer.feed(bytes([byte]))
    usage = answer.finish()
    assert (usage.input_tokens, usage.output_tokens) == (1000, 400)


def test_a_stream_without_its_final_newline_is_still_metered() -> None:
    usage = metered(stream().rstrip(b"\n"), "text/event-stream")
    assert usage.output_tokens == 400


def test_a_later_usage_report_supersedes_the_earlier_one() -> None:
    """Newer API versions repeat the input counts in ``message_delta``, cumulatively."""
    delta = {"type": "message_delta", "usage": {"input_tokens": 1200, "output_tokens": 7}}
    body = stream().replace(
        b"event: message_stop", sse("message_delta", delta) + b"event: message_stop"
    )
    usage = metered(body, "text/event-stream")
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_input_tokens) == (
        1200,
        7,
        3000,
    )


def test_a_long_stream_is_metered_from_its_head_and_its_end_in_bounded_memory() -> None:
    body = stream()
    middle = body.index(b"event: content_block_stop")
    filler = sse(
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "x" * 90},
        },
    )
    body = body[:middle] + filler * 50_000 + body[middle:]  # ~7 MB
    answer = UsageMeter("text/event-stream")
    piece = 64 * 1024
    for offset in range(0, len(body), piece):
        answer.feed(body[offset : offset + piece])
        assert sum(map(len, answer._recent)) <= meter.SSE_WINDOW + piece
    usage = answer.finish()
    assert (usage.input_tokens, usage.output_tokens, usage.model) == (
        1000,
        400,
        "claude-haiku-4-5-20251001",
    )


def test_a_stream_whose_head_holds_no_message_start_is_still_read_at_its_end() -> None:
    """Against the protocol, but the final count must not be lost with the head."""
    filler = sse("ping", {"type": "ping", "pad": "y" * 1000})
    body = (
        filler * (meter.MAX_SSE_LINE // len(filler) + 2)
        + stream().split(b"event: content_block_start")[1]
    )
    answer = UsageMeter("text/event-stream")
    for offset in range(0, len(body), 4096):
        answer.feed(body[offset : offset + 4096])
    assert answer.finish().output_tokens == 400


def text_stream(text: str, per_delta: int) -> bytes:
    """The head of a stream in the API's compact form, its text in deltas of ``per_delta``
    characters, cut off before its final count (no ``message_delta``)."""
    start = {
        "type": "message_start",
        "message": {
            "model": "claude-sonnet-4-5",
            "usage": {"input_tokens": 50, "output_tokens": 1},
        },
    }
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}
    deltas = [
        sse(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": text[i : i + per_delta]},
            },
        )
        for i in range(0, len(text), per_delta)
    ]
    return sse("message_start", start) + sse("content_block_start", block) + b"".join(deltas)


@pytest.mark.parametrize("per_delta", [1, 4, 40, 4000])
def test_a_stream_cut_before_its_final_count_is_charged_for_the_text_it_carried(
    per_delta: int,
) -> None:
    """A worker is charged what the API sent: with no final count, at least a token per delta
    and per ``BYTES_PER_TOKEN`` bytes of text (a tokenizer's ~4 bytes a token is less), and
    never more than a token per byte (no token is shorter)."""
    text = ("def answer():\n    return 42  # " * 2000)[:60_000]
    deltas = -(-len(text) // per_delta)
    answer = UsageMeter("text/event-stream")
    body = text_stream(text, per_delta)
    for offset in range(0, len(body), 1500):
        answer.feed(body[offset : offset + 1500])
    usage = answer.finish(cut=True)
    assert usage.input_tokens == 50
    assert usage.output_tokens >= max(deltas, len(text) // 4)
    assert usage.output_tokens >= len(text) // BYTES_PER_TOKEN
    assert usage.output_tokens <= len(text) + 2


def test_the_estimate_of_a_cut_stream_does_not_depend_on_how_the_socket_split_it() -> None:
    body = text_stream("abc" * 40, 2)
    whole = metered(body, "text/event-stream").output_tokens
    assert whole >= 60  # 60 deltas
    for cut in range(len(body) + 1):
        assert metered(body, "text/event-stream", cut).output_tokens == whole, cut
    answer = UsageMeter("text/event-stream")
    for byte in body:
        answer.feed(bytes([byte]))
    assert answer.finish().output_tokens == whole


def test_a_stream_cut_anywhere_is_charged_its_reported_counts_at_least() -> None:
    body = stream()
    start_end = body.index(b"\n", body.index(b"data:")) + 1
    delta_end = body.index(b"\n", body.index(b'data: {"type":"message_delta"')) + 1
    for cut in range(len(body) + 1):
        usage = metered(body[:cut], "text/event-stream")
        if cut >= start_end:
            assert (usage.input_tokens, usage.cache_read_input_tokens) == (1000, 3000), cut
            assert usage.output_tokens >= 1, cut
        if cut >= delta_end:
            assert usage.output_tokens == 400, cut  # the final count, no estimate


def test_a_complete_stream_is_charged_its_final_count_however_much_text_it_carried() -> None:
    text = "y" * 100_000
    body = text_stream(text, 10) + sse(
        "message_delta", {"type": "message_delta", "usage": {"output_tokens": 7}}
    )
    assert metered(body, "text/event-stream").output_tokens == 7


def test_a_json_answer_cut_short_is_charged_by_its_size() -> None:
    body = json.dumps(
        {"type": "message", "content": [{"type": "text", "text": "z" * 3000}], "usage": {}}
    ).encode()
    answer = UsageMeter("application/json")
    answer.feed(body[:2400])
    usage = answer.finish(cut=True)
    assert usage.output_tokens == estimated_tokens(2400) == 800
    assert usage.model is None and usage.cost_usd() > 0  # an unknown model: the highest price
    whole = UsageMeter("application/json")
    whole.feed(body[:2400])
    assert whole.finish().empty  # not cut: a body that is not JSON carries no usage


def test_what_an_answer_adds_to_the_usage_hash() -> None:
    usage = Usage(
        input_tokens=3, output_tokens=4, cache_creation_input_tokens=5, cache_read_input_tokens=6
    )
    assert increments(usage) == {
        "input_tokens": 3,
        "output_tokens": 4,
        "cache_creation_input_tokens": 5,
        "cache_read_input_tokens": 6,
        "requests": 1,
    }


@pytest.mark.parametrize(
    ("raw", "spend"),
    [(None, 0.0), (b"0.25", 0.25), ("1.5", 1.5), (b"garbled", 0.0), (b"\xff", 0.0)],
)
def test_the_spend_read_back_from_redis(raw: object, spend: float) -> None:
    assert spend_of(raw) == spend


def test_a_spent_budget_is_refused_in_dollars() -> None:
    assert budget_refusal(0.5, 0.5712) == (
        "worker-manager: this worker's budget of $0.50 is spent ($0.5712 so far); "
        "it takes no more API calls"
    )


def test_a_json_answer_is_metered_from_its_usage() -> None:
    body = json.dumps(
        {
            "type": "message",
            "model": "claude-3-5-haiku-20241022",
            "usage": {"input_tokens": 10, "output_tokens": 20},
        }
    ).encode()
    usage = metered(body, "application/json", 7)
    assert (usage.input_tokens, usage.output_tokens, usage.model) == (
        10,
        20,
        "claude-3-5-haiku-20241022",
    )


@pytest.mark.parametrize(
    "body",
    [
        b'{"input_tokens": 12}',
        b"not json",
        b'{"usage": {"input_tokens": -5, "output_tokens": true}}',
    ],
    ids=["count_tokens", "garbage", "nonsense-counts"],
)
def test_what_carries_no_usage_costs_nothing(body: bytes) -> None:
    usage = metered(body, "application/json")
    assert usage.empty and usage.cost_usd() == 0


def test_other_bodies_are_not_read() -> None:
    assert metered(stream(), "text/plain").empty


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("claude-opus-4-1-20250805", Price(15, 75)),
        ("claude-opus-4-20250514", Price(15, 75)),
        ("claude-sonnet-4-5-20250929", Price(3, 15)),
        ("claude-3-7-sonnet-20250219", Price(3, 15)),
        ("claude-3-5-sonnet-20241022", Price(3, 15)),
        ("claude-haiku-4-5-20251001", Price(1, 5)),
        ("claude-3-5-haiku-20241022", Price(0.8, 4)),
        ("claude-3-haiku-20240307", Price(0.25, 1.25)),
    ],
)
def test_each_family_has_its_list_price(model: str, expected: Price) -> None:
    price = price_of(model)
    assert (price.input, price.output) == (expected.input, expected.output)
    assert price.cache_write == pytest.approx(expected.input * 1.25)
    assert price.cache_read == pytest.approx(expected.input * 0.1)


@pytest.mark.parametrize("model", ["claude-mystery-9", "", None, "claude-haiku"])
def test_an_unknown_model_is_charged_the_most_expensive_price(model: str | None) -> None:
    assert price_of(model) == UNKNOWN_MODEL_PRICE
    assert all(UNKNOWN_MODEL_PRICE.output >= p.output for _, p in PRICES)
    assert all(UNKNOWN_MODEL_PRICE.input >= p.input for _, p in PRICES)


def test_the_cost_adds_every_kind_of_token_at_its_rate() -> None:
    usage = metered(stream(), "text/event-stream")  # haiku 4.5: 1 / 5 per million
    expected = (1000 * 1 + 400 * 5 + 1500 * 1.25 + 500 * 2.0 + 3000 * 0.1) / 1_000_000
    assert usage.cost_usd() == pytest.approx(expected)


def test_a_long_context_sonnet_4_prompt_costs_the_long_context_rate() -> None:
    short = Usage(input_tokens=200_000, output_tokens=1000, model="claude-sonnet-4-5")
    long = Usage(
        input_tokens=150_000,
        cache_read_input_tokens=60_000,
        output_tokens=1000,
        model="claude-sonnet-4-5",
    )
    assert short.cost_usd() == pytest.approx((200_000 * 3 + 1000 * 15) / 1e6)
    assert long.cost_usd() == pytest.approx((150_000 * 6 + 60_000 * 0.6 + 1000 * 22.5) / 1e6)


@pytest.mark.parametrize(
    ("value", "text"), [(5, "5.00"), (0.42, "0.42"), (0.0003, "0.0003"), (1.23456, "1.2346")]
)
def test_dollars_read_as_dollars(value: float, text: str) -> None:
    assert usd(value) == text


def test_connection_headers_stay_behind_and_a_decoded_body_loses_its_encoding() -> None:
    upstream = CIMultiDictProxy(
        CIMultiDict(
            [
                ("Content-Type", "application/json"),
                ("Content-Encoding", "gzip"),
                ("Content-Length", "123"),
                ("Connection", "keep-alive, X-Private"),
                ("X-Private", "1"),
                ("Transfer-Encoding", "chunked"),
                ("request-id", "req_1"),
            ]
        )
    )
    assert dict(gateway._client_headers(upstream)) == {
        "Content-Type": "application/json",
        "request-id": "req_1",
    }
    identity = CIMultiDictProxy(CIMultiDict([("Content-Length", "12"), ("Keep-Alive", "5")]))
    assert dict(gateway._client_headers(identity)) == {"Content-Length": "12"}


def test_server_tool_requests_are_charged_their_fee_and_counted() -> None:
    """Refused before the API, so never expected; should one get through, every kind of
    server-tool request costs web search's fee (more, not less)."""
    usage = Usage(input_tokens=100_000, model="claude-sonnet-4-5")
    usage.update(
        {
            "output_tokens": 0,
            "server_tool_use": {"web_search_requests": 3, "web_fetch_requests": 2, "x": "y"},
        }
    )
    assert usage.server_tool_requests == 5
    assert usage.cost_usd() == pytest.approx(0.3 + 5 * SERVER_TOOL_REQUEST_USD)
    assert increments(usage)["server_tool_requests"] == 5
    only_tools = Usage()
    only_tools.update({"server_tool_use": {"web_search_requests": 1}})
    assert not only_tools.empty


def test_a_stream_reporting_web_searches_is_charged_for_them() -> None:
    metered = UsageMeter("text/event-stream")
    metered.feed(
        sse(
            "message_start",
            {
                "type": "message_start",
                "message": {"model": "claude-sonnet-4-5", "usage": {"input_tokens": 0}},
            },
        )
        + sse(
            "message_delta",
            {
                "type": "message_delta",
                "usage": {"output_tokens": 0, "server_tool_use": {"web_search_requests": 4}},
            },
        )
    )
    assert metered.finish().cost_usd() == pytest.approx(4 * SERVER_TOOL_REQUEST_USD)


def test_usage_without_server_tools_adds_no_field() -> None:
    assert "server_tool_requests" not in Usage(input_tokens=5).counts()
