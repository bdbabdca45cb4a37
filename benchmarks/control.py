"""Figures 2 and 3: the control plane's round trip and throughput, against the echo consumer.

Both sides get the very same client code (:class:`Requester`) and the very same ``status``
entries; only the stream differs: ``<prefix>:commands`` (the manager) or the echo consumer's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis

from benchmarks.env import AGENT_COMMAND, BenchEnv
from benchmarks.harness import Figure, alternate
from benchmarks.requester import Requester
from benchmarks.workers import create_worker, delete_worker


async def roundtrip_figures(env: BenchEnv, worker_id: str, runs: int) -> list[Figure]:
    status = {"command": "status", "worker_id": worker_id}
    ours_client = Requester(env.redis, f"{env.keys.replies}:bench:rt-ours")
    echo_client = Requester(env.redis, f"{env.keys.replies}:bench:rt-echo")

    async def ours(_i: int) -> float:
        seconds, reply = await ours_client.call(env.keys.commands, status)
        if reply.get("ok") != "true":
            raise RuntimeError(f"status failed: {reply}")
        return seconds

    async def echo(_i: int) -> float:
        return (await echo_client.call(env.echo_stream, status))[0]

    base, mine = await alternate(runs, echo, ours, warmup=5)
    rt = Figure(
        name="control.roundtrip",
        title="2. status round trip",
        unit="s",
        ours_label="status via manager",
        baseline_label="echo consumer",
        goal="ratio_max",
        bound=1.5,
        ours=mine,
        baseline=base,
    )

    container_name = f"{env.prefix}-{worker_id}"

    def inspect_sync() -> float:
        started = time.perf_counter()
        attrs = env.docker.api.inspect_container(container_name)
        _ = attrs["State"]["Status"]
        return time.perf_counter() - started

    async def inspect(_i: int) -> float:
        # Timed inside the thread: the thread hop is ours to pay, not the naive user's.
        return await asyncio.to_thread(inspect_sync)

    base2, naive = await alternate(runs, ours, inspect, warmup=3)
    naive_fig = Figure(
        name="control.naive_inspect",
        title="2b. naive: docker inspect per status",
        unit="s",
        ours_label="docker inspect",
        baseline_label="our status",
        ours=naive,
        baseline=base2,
        note="ratio = docker inspect / our status (higher: ours is that much faster)",
    )
    return [rt, naive_fig]


async def _throughput_window(
    redis: Redis, stream: str, clients: list[Requester], fields: dict[str, str], seconds: float
) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def loop(client: Requester) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await client.call(stream, fields)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop(c) for c in clients))
    return done / (time.perf_counter() - started)


@asynccontextmanager
async def build_in_flight(env: BenchEnv) -> AsyncIterator[list[str]]:
    """Keep a create of a never-seen image shape building for as long as the block runs.

    Yields the list of worker ids it created (for the report). Each round gives the overlay a
    new ``LABEL`` (a new hash, so a full build), waits for the worker to settle, deletes it and
    removes its image, then starts the next.
    """
    stop = asyncio.Event()
    created: list[str] = []
    first_started = asyncio.Event()

    async def rounds() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            env.overlay.unique(f"{env.token}-tp{n}")
            worker_id = await create_worker(env, AGENT_COMMAND, wait=False)
            created.append(worker_id)
            first_started.set()
            try:
                await wait_settled(env, worker_id, stop_early=None)
            finally:
                env.overlay.reset()
                tag = await env.redis.hget(env.keys.worker(worker_id), "image")
                await delete_worker(env, worker_id)
                if tag:
                    await asyncio.to_thread(env.remove_image, tag)

    task = asyncio.create_task(rounds())
    await first_started.wait()
    await asyncio.sleep(1.0)  # the build itself, not just the create's reply
    try:
        yield created
    finally:
        stop.set()
        await task


async def wait_settled(env: BenchEnv, worker_id: str, stop_early: asyncio.Event | None) -> str:
    key = env.keys.worker(worker_id)
    while True:
        status = await env.redis.hget(key, "status")
        if status in ("RUNNING", "FAILED", "STOPPED"):
            return str(status)
        if stop_early is not None and stop_early.is_set():
            return str(status)
        await asyncio.sleep(0.2)


async def throughput_figures(
    env: BenchEnv, worker_id: str, runs: int, window: float, levels: tuple[int, ...]
) -> list[Figure]:
    status = {"command": "status", "worker_id": worker_id}
    figures: list[Figure] = []
    for n in levels:
        ours_clients = [
            Requester(env.redis, f"{env.keys.replies}:bench:tp-ours-{n}-{i}") for i in range(n)
        ]
        echo_clients = [
            Requester(env.redis, f"{env.keys.replies}:bench:tp-echo-{n}-{i}") for i in range(n)
        ]

        async def ours(_i: int, clients: list[Requester] = ours_clients) -> float:
            return await _throughput_window(env.redis, env.keys.commands, clients, status, window)

        async def echo(_i: int, clients: list[Requester] = echo_clients) -> float:
            return await _throughput_window(env.redis, env.echo_stream, clients, status, window)

        top = n == max(levels)
        builds: list[str] = []
        if top:
            async with build_in_flight(env) as builds:
                base, mine = await alternate(runs, echo, ours, warmup=1)
        else:
            base, mine = await alternate(runs, echo, ours, warmup=1)
        figures.append(
            Figure(
                name=f"control.throughput_{n}",
                title=f"3. status/s, {n} client{'s' if n > 1 else ''}"
                + (" + build in flight" if top else ""),
                unit="cmd/s",
                ours_label="manager",
                baseline_label="echo consumer",
                goal="ratio_min" if top else "none",
                bound=0.6 if top else float("nan"),
                higher_is_better=True,
                ours=mine,
                baseline=base,
                extra={"clients": n, "window_s": window, "builds_during": len(builds)},
            )
        )
    return figures
