"""The LLM gateway speaking OpenAI's Responses API, for real: on a Unix socket, in front of the
scripted Responses API, with the session's Redis holding each worker's usage.

What a contained CODEX worker relies on (SPEC §7): its token works only here and is swapped for
the operator's key (``Authorization: Bearer``); the stream passes through unchanged; the API's
own ``usage`` becomes the worker's spend; refusals and a spent budget come back in OpenAI's own
error shape, before anything reaches the API; an answer the API breaks off is charged for what
it carried.
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from pydantic import SecretStr
from redis.asyncio import Redis

from tests.support.fake_openai import FakeOpenAI
from worker_manager.core.keys import Keys
from worker_manager.egress.gateway import (
    MAX_BODY_BYTES_PER_WORKER,
    OPENAI_API,
    GatewayWorker,
    LlmGateway,
)
from worker_manager.egress.pricing import OpenAIUsage
from worker_manager.settings import Settings

pytestmark = [pytest.mark.redis]

OPERATOR_KEY = "sk-proj-operator-key-not-for-workers-8e01"
MODEL = "gpt-5-codex"


@pytest.fixture
def fake_openai() -> AsyncIterator[FakeOpenAI] | Any:
    server = FakeOpenAI().start()
    try:
        yield server
    finally:
        server.stop()


class Gw:
    def __init__(self, worker: GatewayWorker, client: aiohttp.ClientSession, redis: Redis) -> None:
        self.worker = worker
        self.client = client
        self.redis = redis

    def usage_key(self) -> str:
        return Keys(self.worker.key_prefix).usage(self.worker.worker_id)

    async def usage(self) -> dict[str, str]:
        return dict(await self.redis.hgetall(self.usage_key()))

    def post(self, prompt: str, *, token: str | None = None, stream: bool = True) -> Any:
        body = {
            "model": MODEL,
            "stream": stream,
            "input": [
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": prompt}],
                }
            ],
        }
        return self.client.post(
            "http://gateway/responses",
            json=body,
            headers={"Authorization": f"Bearer {token or self.worker.token}"},
        )


Factory = Callable[..., Awaitable[Gw]]


@pytest.fixture
async def start_gateway(
    settings: Settings, redis: Redis, fake_openai: FakeOpenAI
) -> AsyncIterator[Factory]:
    root = Path(tempfile.mkdtemp(prefix="wm-gwo-"))
    cleanups: list[Callable[[], Awaitable[None]]] = []

    async def start(
        *,
        max_cost_usd: float | None = None,
        upstream_url: str | None = None,
        max_body_bytes_per_worker: int = MAX_BODY_BYTES_PER_WORKER,
    ) -> Gw:
        socket = root / f"{len(cleanups)}" / "gateway.sock"
        socket.parent.mkdir()
        worker = GatewayWorker(
            worker_id=f"w-{secrets.token_hex(4)}",
            key_prefix=settings.key_prefix,
            token=f"wm-gw-{secrets.token_urlsafe(24)}",
            max_cost_usd=max_cost_usd,
        )
        gateway = LlmGateway(
            redis=redis,
            upstream_url=upstream_url or fake_openai.url,
            api_key=SecretStr(OPERATOR_KEY),
            oauth_token=None,
            resolve={str(socket): worker}.get,
            api=OPENAI_API,
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
        return Gw(worker, client, redis)

    try:
        yield start
    finally:
        for stop in reversed(cleanups):
            await stop()
        shutil.rmtree(root, ignore_errors=True)


def expected_cost(fake: FakeOpenAI, since: int = 0) -> float:
    return sum(
        OpenAIUsage(a.input_tokens, a.cached_tokens, a.output_tokens, model=a.model).cost_usd()
        for a in fake.answered[since:]
    )


async def test_a_stream_goes_through_with_the_operators_key_and_is_metered(
    start_gateway: Factory, fake_openai: FakeOpenAI
) -> None:
    gw = await start_gateway()
    async with gw.post("FAKE tokens 30000\nFAKE say through") as response:
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        body = await response.read()
    assert b"event: response.completed" in body and b"through" in body
    upstream = fake_openai.requests[-1]
    assert upstream.headers["Authorization"] == f"Bearer {OPERATOR_KEY}"
    assert gw.worker.token not in json.dumps(upstream.headers)
    usage = await gw.usage()
    assert float(usage["cost_usd"]) == pytest.approx(expected_cost(fake_openai))
    assert usage["input_tokens"] == "30000" and usage["requests"] == "1"
    # A JSON answer is metered too.
    async with gw.post("FAKE say plain", stream=False) as response:
        assert response.status == 200 and (await response.json())["status"] == "completed"
    usage = await gw.usage()
    assert float(usage["cost_usd"]) == pytest.approx(expected_cost(fake_openai))
    assert usage["requests"] == "2"


async def test_refusals_come_in_openais_error_shape(
    start_gateway: Factory, fake_openai: FakeOpenAI
) -> None:
    gw = await start_gateway()
    calls = len(fake_openai.calls)
    async with gw.post("FAKE say x", token="sk-wrong") as response:
        assert response.status == 401
        error = (await response.json())["error"]
        assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
    headers = {"Authorization": f"Bearer {gw.worker.token}"}
    for method, path in (
        ("GET", "/files"),
        ("POST", "/batches"),
        ("GET", "/responses/resp_1"),
        ("POST", "/v1/messages"),  # Anthropic's API is not this worker's
    ):
        async with gw.client.request(method, f"http://gateway{path}", headers=headers) as r:
            assert r.status == 403, path
            error = (await r.json())["error"]
            assert error["code"] == "permission_denied" and "POST /responses" in error["message"]
    async with gw.client.get("http://gateway/../v1/models", headers=headers) as response:
        assert response.status in (403, 404)
    async with gw.client.get("http://gateway/models", headers=headers) as response:
        assert response.status == 200
    assert fake_openai.calls[calls:] == [("GET", "/v1/models")]
    # A body asking the API to act for the agent (a hosted tool, background work) never leaves.
    for extra in (
        {"tools": [{"type": "mcp", "server_url": "https://evil.example", "server_label": "x"}]},
        {"tools": [{"type": "web_search"}]},
        {"background": True},
    ):
        body = {"model": MODEL, "input": "FAKE say x", **extra}
        async with gw.client.post("http://gateway/responses", json=body, headers=headers) as r:
            assert r.status == 403, extra
            assert (await r.json())["error"]["code"] == "permission_denied"
    function = {"type": "function", "name": "exec_command", "parameters": {}}
    body = {"model": MODEL, "input": "FAKE say fine", "tools": [function]}
    async with gw.client.post("http://gateway/responses", json=body, headers=headers) as r:
        assert r.status == 200
    assert fake_openai.calls[calls:] == [("GET", "/v1/models"), ("POST", "/v1/responses")]


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _asking(part: dict[str, Any], *, in_tool_output: bool = False) -> dict[str, Any]:
    text = {"type": "input_text", "text": "FAKE say fetched"}
    if in_tool_output:
        items: list[Any] = [
            {"type": "message", "role": "user", "content": [text]},
            {"type": "function_call_output", "call_id": "c1", "output": [part]},
        ]
    else:
        items = [{"type": "message", "role": "user", "content": [text, part]}]
    return {"model": MODEL, "stream": True, "input": items}


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (_asking({"type": "input_image", "image_url": "https://evil.example/a.png"}), "image_url"),
        (_asking({"type": "input_image", "file_id": "file-operator"}), "file_id"),
        (_asking({"type": "input_file", "file_url": "https://evil.example/a.pdf"}), "file_url"),
        (_asking({"type": "input_file", "file_id": "file-operator"}), "file_id"),
        (
            _asking(
                {"type": "input_image", "image_url": "http://169.254.169.254/"},
                in_tool_output=True,
            ),
            "image_url",
        ),
    ],
    ids=["image-url", "image-file-id", "file-url", "file-file-id", "url-in-tool-output"],
)
async def test_an_input_the_api_would_fetch_never_reaches_it(
    start_gateway: Factory, fake_openai: FakeOpenAI, body: dict[str, Any], named: str
) -> None:
    gw = await start_gateway()
    headers = {"Authorization": f"Bearer {gw.worker.token}"}
    calls = len(fake_openai.calls)
    refused = counter("wm_gateway_requests_total", outcome="refused_body")
    async with gw.client.post("http://gateway/responses", json=body, headers=headers) as r:
        assert r.status == 403
        error = (await r.json())["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "permission_denied"
    assert named in error["message"] and "data: URI" in error["message"]
    assert fake_openai.calls[calls:] == []
    assert counter("wm_gateway_requests_total", outcome="refused_body") == refused + 1
    assert "cost_usd" not in await gw.usage()
    # The same image carried in the body itself (a data: URI) goes through.
    image = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}
    async with gw.client.post(
        "http://gateway/responses", json=_asking(image, in_tool_output=True), headers=headers
    ) as r:
        assert r.status == 200
        await r.read()
    assert fake_openai.calls[calls:] == [("POST", "/v1/responses")]


async def test_a_worker_past_its_bounds_is_told_in_openais_words(
    start_gateway: Factory, fake_openai: FakeOpenAI
) -> None:
    """Codex retries OpenAI's rate limit (``type: requests``), and stops on a too-large body."""
    gw = await start_gateway(max_body_bytes_per_worker=256 * 1024)
    too_many = counter("wm_gateway_requests_total", outcome="too_many")
    async with gw.post("FAKE say big\n" + "x" * (300 * 1024)) as response:
        assert response.status == 429
        error = (await response.json())["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert counter("wm_gateway_requests_total", outcome="too_many") == too_many + 1
    gw = await start_gateway()
    body = b'{"model": "x", "input": "' + b"a" * (33 * 1024 * 1024) + b'"}'
    headers = {"Authorization": f"Bearer {gw.worker.token}", "content-type": "application/json"}
    async with gw.client.post("http://gateway/responses", data=body, headers=headers) as r:
        assert r.status == 413
        error = (await r.json())["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large")
    assert "32 MiB" in error["message"]
    assert fake_openai.calls == []


async def test_a_spent_budget_is_refused_as_insufficient_quota(
    start_gateway: Factory, fake_openai: FakeOpenAI
) -> None:
    gw = await start_gateway(max_cost_usd=0.05)
    async with gw.post("FAKE tokens 50000\nFAKE say pricey") as response:
        assert response.status == 200
        await response.read()
    assert float((await gw.usage())["cost_usd"]) >= 0.05
    calls = len(fake_openai.calls)
    async with gw.post("FAKE say more") as response:
        assert response.status == 429
        error = (await response.json())["error"]
        assert error["type"] == "insufficient_quota" and "budget" in error["message"]
    assert len(fake_openai.calls) == calls
    assert (await gw.usage())["budget_exceeded"] == "1"


async def test_a_stream_the_api_breaks_off_is_charged_for_what_it_carried(
    start_gateway: Factory,
) -> None:
    async def broken(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        created = {"type": "response.created", "response": {"id": "r", "model": MODEL}}
        await response.write(f"event: response.created\ndata: {json.dumps(created)}\n\n".encode())
        delta = {"type": "response.output_text.delta", "delta": "x" * 3000}
        await response.write(
            f"event: response.output_text.delta\ndata: {json.dumps(delta)}\n\n".encode()
        )
        assert request.transport is not None
        request.transport.close()  # the API breaks off: no response.completed
        return response

    app = web.Application()
    app.router.add_post("/v1/responses", broken)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        gw = await start_gateway(upstream_url=f"http://127.0.0.1:{port}/v1")
        async with gw.post("FAKE say x") as response:
            body = await response.read()
        assert b"event: error" in body and b"broke off" in body
        usage = await gw.usage()
        # At least the 3000 bytes of text it carried, at 3 bytes a token, at gpt-5's price.
        assert int(usage["output_tokens"]) >= 1000
        assert float(usage["cost_usd"]) >= 1000 * 10 / 1_000_000
    finally:
        await runner.cleanup()
