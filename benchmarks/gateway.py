"""Figure 8: a streamed Messages call through the LLM gateway against the same call made direct.

Three processes, as in production: the scripted Messages API (``python -m
tests.support.fake_anthropic``), the gateway (``python -m benchmarks.gateway SOCKET UPSTREAM``,
the real :class:`~worker_manager.egress.gateway.LlmGateway` on a Unix socket, with a private
``redis-server`` for its usage hash and a budget, so its one spend read per request is paid),
and this process, the client, which talks to the API either through the gateway's socket or
straight over TCP, alternately, each over its own kept-alive connection.

- 8. time to first byte: request sent → first body byte of a short streamed answer, with a
  request body of about the size the CLI sends (~100 KB: system prompt and tools). The goal is
  on the difference, gateway − direct, per pair: at most 5 ms (median).
- 8b. bytes/s of a call with a large streamed answer (several MB of ~100-byte text deltas, the
  shape the API streams in), request sent → last byte, the fake encoding each 64 KiB batch of
  events just before writing it, as an API produces as it goes (only far faster: the fake
  produces tens of MB/s where the API produces kB/s). Goal: ratio ≥ 0.9.
- 8d. time to first byte of a streamed Responses API call (OpenAI's, what CODEX workers make),
  through the gateway serving that API (:data:`~worker_manager.egress.gateway.OPENAI_API`)
  against the same call direct to :mod:`tests.support.fake_openai`: the same goal as 8.
- 8c. the relay's capacity, reported without a goal: the same answer encoded whole before its
  first byte (``FAKE size N at-once``), first byte → last byte, so that the direct client reads
  at the speed of the socket and the gateway, a Python process copying every byte between two
  sockets, is the bottleneck by construction.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from redis.asyncio import Redis

from benchmarks.env import REPO_ROOT
from benchmarks.harness import Figure, alternate
from tests.support.redis_server import RedisServer
from worker_manager.egress.gateway import APIS, GatewayWorker, LlmGateway

#: The worker's token (the gateway's only worker; not a secret of anyone's).
TOKEN = "wm-gw-bench-token"
PADDING = "You are a careful coding agent. " * 3200  # ~100 KB, about a Claude Code request


def _body(prompt: str, *, padded: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 32000,
        "stream": True,
        "messages": [{"role": "user", "content": prompt}],
    }
    if padded:
        body["system"] = PADDING
    return body


async def _stream(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], key: str
) -> tuple[float, float, int]:
    """(seconds to the first body byte, seconds to the last, bytes) of one streamed call."""
    headers = {
        "x-api-key": key,
        "authorization": f"Bearer {key}",
        "anthropic-version": "2023-06-01",
    }
    started = time.perf_counter()
    async with session.post(url, json=body, headers=headers) as response:
        if response.status != 200:
            raise RuntimeError(f"{url}: HTTP {response.status}: {await response.text()}")
        first = await response.content.readany()
        ttfb = time.perf_counter() - started
        size = len(first)
        async for chunk in response.content.iter_any():
            size += len(chunk)
    return ttfb, time.perf_counter() - started, size


class GatewayBench:
    """The three processes and the two clients; :meth:`close` ends what it started."""

    def __init__(self, api: str = "anthropic") -> None:
        self.api = api
        self.tmp = Path(tempfile.mkdtemp(prefix="wm-gwb-"))
        self.socket = self.tmp / "gateway.sock"
        self.redis = RedisServer(self.tmp / "redis", binary=shutil.which("redis-server") or "")
        self.processes: list[subprocess.Popen[bytes]] = []
        self.api_url = ""
        self.direct: aiohttp.ClientSession | None = None
        self.through: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if not self.redis.binary:
            raise RuntimeError("redis-server is not installed (make redis-server)")
        await asyncio.to_thread(self.redis.start)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WM_", "ANTHROPIC_"))}
        fake = subprocess.Popen(
            [sys.executable, "-m", f"tests.support.fake_{self.api}", "0"],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        self.processes.append(fake)
        assert fake.stdout is not None
        self.api_url = (await asyncio.to_thread(fake.stdout.readline)).decode().strip()
        if not self.api_url.startswith("http"):
            raise RuntimeError("the fake Messages API did not start")
        gateway = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.gateway", str(self.socket), self.api_url, self.api],
            cwd=REPO_ROOT,
            env={**env, "BENCH_REDIS_URL": self.redis.url},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        self.processes.append(gateway)
        assert gateway.stdout is not None
        if (await asyncio.to_thread(gateway.stdout.readline)).strip() != b"ready":
            raise RuntimeError("the gateway did not start")
        self.direct = aiohttp.ClientSession()
        self.through = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(self.socket)))

    async def call(self, via_gateway: bool, body: dict[str, Any]) -> tuple[float, float, int]:
        if self.api == "openai":  # the base URL names the version: the gateway's root is it
            if via_gateway:
                assert self.through is not None
                return await _stream(self.through, "http://worker/responses", body, TOKEN)
            assert self.direct is not None
            return await _stream(self.direct, f"{self.api_url}/responses", body, "sk-direct")
        if via_gateway:
            assert self.through is not None
            return await _stream(self.through, "http://worker/v1/messages", body, TOKEN)
        assert self.direct is not None
        return await _stream(self.direct, f"{self.api_url}/v1/messages", body, "sk-direct")

    async def close(self) -> None:
        for session in (self.direct, self.through):
            if session is not None:
                await session.close()
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                await asyncio.to_thread(process.wait, 10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        await asyncio.to_thread(self.redis.stop)
        shutil.rmtree(self.tmp, ignore_errors=True)


async def gateway_figures(ttfb_runs: int, answer_bytes: int, bytes_runs: int) -> list[Figure]:
    bench = GatewayBench()
    try:
        await bench.start()
        short = _body("FAKE say hello", padded=True)

        async def direct_ttfb(_: int) -> float:
            return (await bench.call(False, short))[0] * 1000

        async def gateway_ttfb(_: int) -> float:
            return (await bench.call(True, short))[0] * 1000

        direct_ms, gateway_ms = await alternate(ttfb_runs, direct_ttfb, gateway_ttfb, warmup=3)
        sizes: set[int] = set()

        async def rate(via_gateway: bool, at_once: bool) -> float:
            mode = " at-once" if at_once else ""
            body = _body(f"FAKE size {answer_bytes}{mode}", padded=False)
            first, last, size = await bench.call(via_gateway, body)
            sizes.add(size)
            return size / (last - first if at_once else last)

        async def direct_rate(_: int) -> float:
            return await rate(False, False)

        async def gateway_rate(_: int) -> float:
            return await rate(True, False)

        async def direct_capacity(_: int) -> float:
            return await rate(False, True)

        async def gateway_capacity(_: int) -> float:
            return await rate(True, True)

        direct_bps, gateway_bps = await alternate(bytes_runs, direct_rate, gateway_rate)
        direct_cap, gateway_cap = await alternate(bytes_runs, direct_capacity, gateway_capacity)
    finally:
        await bench.close()
    added = [g - d for d, g in zip(direct_ms, gateway_ms, strict=True)]
    ttfb = Figure(
        name="gateway.ttfb",
        title="8. gateway: time to first byte, streamed call (~100 KB request)",
        unit="ms",
        ours_label="added by the gateway (gateway − direct, per pair)",
        baseline_label="direct",
        goal="value_max",
        bound=5.0,
        ours=added,
        baseline=direct_ms,
        note=f"through the gateway: median {statistics.median(gateway_ms):.2f} ms",
        extra={
            "ratio": statistics.median(gateway_ms) / statistics.median(direct_ms),
            "gateway_ms": gateway_ms,
        },
    )
    throughput = Figure(
        name="gateway.bytes_per_second",
        title=f"8b. gateway: streamed answer of {answer_bytes / 2**20:.0f} MiB text, bytes/s",
        unit="B/s",
        ours_label="through the gateway",
        baseline_label="direct",
        goal="ratio_min",
        bound=0.9,
        higher_is_better=True,
        ours=gateway_bps,
        baseline=direct_bps,
        note=f"stream sizes {sorted(sizes)} bytes",
    )
    capacity = Figure(
        name="gateway.capacity",
        title="8c. gateway: relay capacity (answer sent at socket speed), bytes/s",
        unit="B/s",
        ours_label="through the gateway, first → last byte",
        baseline_label="direct",
        higher_is_better=True,
        ours=gateway_cap,
        baseline=direct_cap,
    )
    return [ttfb, throughput, capacity]


def _responses_body(prompt: str) -> dict[str, Any]:
    """A Codex-sized Responses request: ~100 KB of instructions, one user message."""
    return {
        "model": "gpt-5-codex",
        "stream": True,
        "instructions": PADDING,
        "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": prompt}]}
        ],
    }


async def responses_figure(ttfb_runs: int) -> Figure:
    """8d: the gateway's added time to first byte for a streamed Responses API call."""
    bench = GatewayBench("openai")
    try:
        await bench.start()
        body = _responses_body("FAKE say hello")

        async def direct_ttfb(_: int) -> float:
            return (await bench.call(False, body))[0] * 1000

        async def gateway_ttfb(_: int) -> float:
            return (await bench.call(True, body))[0] * 1000

        direct_ms, gateway_ms = await alternate(ttfb_runs, direct_ttfb, gateway_ttfb, warmup=3)
    finally:
        await bench.close()
    return Figure(
        name="gateway.responses_ttfb",
        title="8d. gateway: time to first byte, streamed Responses call (~100 KB request)",
        unit="ms",
        ours_label="added by the gateway (gateway − direct, per pair)",
        baseline_label="direct",
        goal="value_max",
        bound=5.0,
        ours=[g - d for d, g in zip(direct_ms, gateway_ms, strict=True)],
        baseline=direct_ms,
        note=f"through the gateway: median {statistics.median(gateway_ms):.2f} ms",
        extra={"gateway_ms": gateway_ms},
    )


async def _serve(socket: str, upstream: str, api: str = "anthropic") -> None:
    """The gateway process of the benchmark: one worker, with a budget it never reaches."""
    redis = Redis.from_url(os.environ["BENCH_REDIS_URL"], decode_responses=True)
    worker = GatewayWorker("bench", "bench", TOKEN, max_cost_usd=1e9)
    gateway = LlmGateway(
        redis=redis,
        upstream_url=upstream,
        api_key=None,
        oauth_token=None,
        resolve=lambda name: worker if name == socket else None,
        api=APIS[api],
    )
    runner = web.AppRunner(gateway.app(), access_log=None)
    await runner.setup()
    await web.UnixSite(runner, socket).start()
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await gateway.close()
        with contextlib.suppress(Exception):
            await redis.aclose()


if __name__ == "__main__":
    asyncio.run(_serve(*sys.argv[1:4]))
