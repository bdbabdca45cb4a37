"""Figure 5: idle workers at growing fleet sizes: memory, and whether ``status`` stays flat.

At each size the manager's resident memory is read from ``/proc/<pid>/status`` (it is a
separate process), worker containers' memory from Docker's stats (cgroup usage less page cache,
as ``docker stats`` shows it), and ``status`` round trips alternate with the echo consumer's, so a
drift of the machine shows up in the echo column rather than as a false slope.
"""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path
from typing import Any

import docker.errors

from benchmarks.env import AGENT_COMMAND, BenchEnv
from benchmarks.harness import Figure, alternate
from benchmarks.requester import Requester
from benchmarks.workers import create_worker

CREATE_CONCURRENCY = 8
MEMORY_SAMPLE = 10


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def _container_mib(env: BenchEnv, name: str) -> float | None:
    try:
        stats: dict[str, Any] = env.docker.api.stats(name, stream=False, one_shot=True)
    except docker.errors.NotFound:
        return None
    memory = stats.get("memory_stats") or {}
    usage = memory.get("usage")
    if usage is None:
        return None
    detail = memory.get("stats") or {}
    cache = detail.get("total_inactive_file", detail.get("inactive_file", detail.get("cache", 0)))
    return float(usage - cache) / (1024 * 1024)


async def grow(env: BenchEnv, fleet: list[str], size: int) -> None:
    gate = asyncio.Semaphore(CREATE_CONCURRENCY)

    async def one() -> None:
        async with gate:
            fleet.append(await create_worker(env, AGENT_COMMAND, timeout=600))

    await asyncio.gather(*(one() for _ in range(size - len(fleet))))


async def scale_figures(
    env: BenchEnv, fleet: list[str], sizes: tuple[int, ...], rt_runs: int
) -> list[Figure]:
    per_size: dict[int, dict[str, Any]] = {}
    samples: dict[int, list[float]] = {}
    echo_samples: dict[int, list[float]] = {}
    rss: dict[int, list[float]] = {}
    container_mem: list[float] = []
    for size in sizes:
        await grow(env, fleet, size)
        await asyncio.sleep(2.0)  # let the creates' garbage and the first beats settle
        target = fleet[-1]
        status = {"command": "status", "worker_id": target}
        ours_client = Requester(env.redis, f"{env.keys.replies}:bench:scale-ours-{size}")
        echo_client = Requester(env.redis, f"{env.keys.replies}:bench:scale-echo-{size}")
        readings: list[float] = []

        async def ours(
            _i: int,
            c: Requester = ours_client,
            s: dict[str, str] = status,
            r: list[float] = readings,
        ) -> float:
            seconds = (await c.call(env.keys.commands, s))[0]
            if _i % 10 == 0:
                r.append(rss_mib(env.manager_pid))
            return seconds

        async def echo(_i: int, c: Requester = echo_client, s: dict[str, str] = status) -> float:
            return (await c.call(env.echo_stream, s))[0]

        base, mine = await alternate(rt_runs, echo, ours, warmup=5)
        samples[size], echo_samples[size], rss[size] = mine, base, readings
        names = [f"{env.prefix}-{w}" for w in fleet[-MEMORY_SAMPLE:]]
        mems = [
            m
            for m in await asyncio.gather(
                *(asyncio.to_thread(_container_mib, env, n) for n in names)
            )
            if m is not None
        ]
        if size == max(sizes):
            container_mem = mems
        per_size[size] = {
            "workers": len(fleet),
            "status_median_ms": statistics.median(mine) * 1000,
            "echo_median_ms": statistics.median(base) * 1000,
            "manager_rss_mib": statistics.median(readings),
            "container_mib_median": statistics.median(mems) if mems else None,
        }
    small, large = min(sizes), max(sizes)
    ratio_echo = statistics.median(echo_samples[large]) / statistics.median(echo_samples[small])
    raw = statistics.median(samples[large]) / statistics.median(samples[small])
    return [
        Figure(
            name="scale.status",
            title=f"5. status round trip, {large} vs {small} worker(s)",
            unit="s",
            ours_label=f"{large} workers",
            baseline_label=f"{small} worker",
            goal="ratio_max",
            bound=1.2,
            ours=samples[large],
            baseline=samples[small],
            note=f"ratio corrected for drift: raw {raw:.2f} / the echo consumer's own "
            f"{large}-vs-{small} ratio {ratio_echo:.2f}",
            extra={
                "per_size": per_size,
                "raw_ratio": raw,
                "echo_ratio": ratio_echo,
                "ratio": raw / ratio_echo,
            },
        ),
        Figure(
            name="scale.manager_rss",
            title=f"5b. manager RSS at {large} workers",
            unit="MiB",
            ours_label=f"{large} workers",
            baseline_label=f"{small} worker",
            goal="value_max",
            bound=150.0,
            ours=rss[large],
            baseline=rss[small],
            extra={"per_size": {s: per_size[s]["manager_rss_mib"] for s in sizes}},
        ),
        Figure(
            name="scale.container_memory",
            title="5c. memory per idle worker container",
            unit="MiB",
            ours_label=f"{len(container_mem)} sampled",
            ours=container_mem,
            extra={"per_size": {s: per_size[s]["container_mib_median"] for s in sizes}},
        ),
    ]
