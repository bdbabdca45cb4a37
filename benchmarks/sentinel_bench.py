"""Figure 10: Redis behind Sentinel — the price in normal operation, and a failover's gap.

It brings its own processes (a primary, a replica and three sentinels from
``tests/support/sentinel.py``, and ``worker-manager serve`` subprocesses with ``WM_EGRESS=off``:
no worker is started, ``status`` of an unknown worker is a full round trip all the same).

- 10: ``status`` round trip through a manager configured with the ``redis+sentinel://`` URL,
  against a manager configured with the plain URL of the same primary, alternating.
- 10b: what ``WAIT 1`` would add to a create's write: a create-sized ``XADD`` followed by
  ``WAIT 1 1000`` (the write is on one replica before the reply), against the ``XADD`` alone.
- 10c: a primary killed (SIGKILL) under a steady stream of ``status`` commands: from the kill to
  the first reply to a command sent after it; baseline: from the kill to the sentinels naming a
  promoted primary (Sentinel's own part, which no client can beat).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError

from benchmarks.harness import Figure, alternate
from benchmarks.requester import Requester
from tests.support.redis_server import free_port
from tests.support.sentinel import SentinelGroup
from worker_base.redis_urls import client_for
from worker_manager.core.keys import Keys

CREATE_SIZED = {"command": "create", "agent_type": "CUSTOM", "instructions": "x" * 2048}


@asynccontextmanager
async def _group(root: Path) -> AsyncIterator[SentinelGroup]:
    group = SentinelGroup(root / secrets.token_hex(3), binary=shutil.which("redis-server") or "")
    await asyncio.to_thread(group.start)
    try:
        yield group
    finally:
        await asyncio.to_thread(group.stop)


@asynccontextmanager
async def _manager(root: Path, url: str, prefix: str) -> AsyncIterator[Keys]:
    """``worker-manager serve`` on ``url`` with key prefix ``prefix``, answering commands."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WM_")}
    env |= {
        "WM_REDIS_URL": url,
        "WM_KEY_PREFIX": prefix,
        "WM_MANAGER_ID": f"bench-{prefix}",
        "WM_HTTP_ADDR": f"127.0.0.1:{free_port('127.0.0.1')}",
        "WM_EGRESS": "off",
        "WM_LOG_LEVEL": "warning",
        "WM_LOG_FORMAT": "json",
    }
    workdir = root / prefix
    workdir.mkdir(parents=True)
    with (workdir / "manager.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker_manager", "serve", "--grace", "2"],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    keys = Keys(prefix)
    try:
        probe = client_for(url, decode_responses=True)
        try:
            requester = Requester(probe, f"{keys.replies}:bench:probe")
            deadline = time.monotonic() + 60
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the manager exited ({process.returncode})")
                with contextlib.suppress(TimeoutError, RedisError):
                    await requester.call(keys.commands, {"command": "list"}, timeout=1.0)
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("the manager did not answer within 60 s")
        finally:
            await probe.aclose()
        yield keys
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, 20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def sentinel_figures(rt_runs: int, failover_runs: int) -> list[Figure]:
    root = Path(tempfile.mkdtemp(prefix="wm-bench-sentinel-"))
    try:
        async with _group(root) as group:
            figures = await _steady_figures(root, group, rt_runs)
        figures.append(await _failover_figure(root, failover_runs))
        return figures
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def _steady_figures(root: Path, group: SentinelGroup, runs: int) -> list[Figure]:
    plain_url = group.primary.url
    status = {"command": "status", "worker_id": "00000000-0000-0000-0000-000000000000"}
    async with (
        _manager(root, plain_url, f"plain{secrets.token_hex(3)}") as plain,
        _manager(root, group.url(), f"sent{secrets.token_hex(3)}") as sentinel,
    ):
        redis = Redis.from_url(plain_url, decode_responses=True)
        try:
            via_plain = Requester(redis, f"{plain.replies}:bench:rt")
            via_sentinel = Requester(redis, f"{sentinel.replies}:bench:rt")

            async def base(_i: int) -> float:
                return (await via_plain.call(plain.commands, status))[0]

            async def ours(_i: int) -> float:
                return (await via_sentinel.call(sentinel.commands, status))[0]

            b, o = await alternate(runs, base, ours, warmup=5)
            rt = Figure(
                name="sentinel.roundtrip",
                title="10. status round trip, Sentinel URL",
                unit="s",
                ours_label="manager on redis+sentinel://",
                baseline_label="manager on redis:// (same primary)",
                goal="ratio_max",
                bound=1.1,
                ours=o,
                baseline=b,
            )
            stream = f"{plain.replies}:bench:wait"

            async def xadd(_i: int) -> float:
                started = time.perf_counter()
                await redis.xadd(stream, CREATE_SIZED, maxlen=1000)
                return time.perf_counter() - started

            async def xadd_wait(_i: int) -> float:
                started = time.perf_counter()
                async with redis.pipeline(transaction=False) as pipe:
                    pipe.xadd(stream, CREATE_SIZED, maxlen=1000)
                    pipe.execute_command("WAIT", 1, 1000)
                    _, acked = await pipe.execute()
                if int(acked) < 1:
                    raise RuntimeError("WAIT 1: no replica acknowledged the write")
                return time.perf_counter() - started

            b, o = await alternate(runs, xadd, xadd_wait, warmup=5)
            wait = Figure(
                name="sentinel.wait",
                title="10b. a create's write with WAIT 1",
                unit="s",
                ours_label="XADD + WAIT 1 1000",
                baseline_label="XADD",
                ours=o,
                baseline=b,
            )
            await redis.delete(stream)
        finally:
            await redis.aclose()
    return [rt, wait]


async def _failover_figure(root: Path, runs: int) -> Figure:
    to_answer: list[float] = []
    to_promotion: list[float] = []
    for _ in range(runs):
        async with _group(root) as group:
            prefix = f"fo{secrets.token_hex(3)}"
            async with _manager(root, group.url(), prefix) as keys:
                answer, promotion = await _one_failover(group, keys)
        to_answer.append(answer)
        to_promotion.append(promotion)
    return Figure(
        name="sentinel.failover",
        title="10c. primary killed → first answer",
        unit="s",
        ours_label="kill → first reply to a command sent after it",
        baseline_label="kill → sentinels name a promoted primary",
        ours=to_answer,
        baseline=to_promotion,
    )


async def _one_failover(group: SentinelGroup, keys: Keys) -> tuple[float, float]:
    """One kill; the manager's gap and Sentinel's own, both from the kill."""
    redis = client_for(group.url(), decode_responses=True, socket_timeout=2)
    reply_to = f"{keys.replies}:bench:failover"
    sent: dict[str, float] = {}
    stop = asyncio.Event()

    async def load() -> None:
        n = 0
        while not stop.is_set():
            request_id = f"fo-{n}"
            n += 1
            with contextlib.suppress(RedisError, OSError):
                await redis.xadd(
                    keys.commands,
                    {
                        "command": "status",
                        "request_id": request_id,
                        "reply_to": reply_to,
                        "worker_id": "00000000-0000-0000-0000-000000000000",
                    },
                )
                sent[request_id] = time.monotonic()
            await asyncio.sleep(0.02)

    loader = asyncio.create_task(load())
    try:
        await asyncio.sleep(0.5)  # a steady stream before the kill
        old = await asyncio.to_thread(group.kill_primary)
        killed = time.monotonic()
        await asyncio.to_thread(group.wait_failover, old, 60.0)
        promoted = time.monotonic()
        last = "0-0"
        while time.monotonic() - killed < 60:
            with contextlib.suppress(RedisError, OSError):
                response = await redis.xread({reply_to: last}, block=100, count=100)
                for _s, entries in response or []:
                    for entry_id, fields in entries:
                        last = entry_id
                        if sent.get(fields.get("request_id", ""), 0) > killed:
                            return time.monotonic() - killed, promoted - killed
            await asyncio.sleep(0.01)
        raise RuntimeError("no command sent after the kill was answered within 60 s")
    finally:
        stop.set()
        await loader
        await redis.aclose()
