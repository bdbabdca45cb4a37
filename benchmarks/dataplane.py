"""Figure 4: the wrapper's output path, throughput and latency, against plain redis-py.

Throughput is read off the stream itself: the rate between the first and the last ``stdout``
entry's IDs (Redis' own millisecond clock), so neither side is timed by a reader that might lag.
The baseline is a plain pipelined XADD loop from this process writing the same entries (same
fields, same ``MAXLEN ~``) in batches of the wrapper's size.

Latency: the slow agent prints its own clock every 10 ms; a reader here follows the stream with
a blocking XREAD and takes arrival time minus printed time (container and host share the
kernel's clock). The baseline is this process XADDing its clock every 10 ms to another stream,
read by the same reader: the floor of Redis plus the reader.
"""

from __future__ import annotations

import asyncio
import time

from benchmarks.env import BenchEnv
from benchmarks.harness import Figure, alternate
from benchmarks.streams import collect
from worker_base.clock import iso_now

BATCH = 500


def _ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


async def _stdout_span(env: BenchEnv, stream: str, after: str, n: int) -> float:
    """Events per second between the first and the last of the ``n`` stdout entries."""
    redis = env.redis
    head = await redis.xrange(stream, min=f"({after}" if after != "0-0" else "-", count=20)
    first = next(eid for eid, f in head if f.get("type") == "stdout")
    tail = await redis.xrevrange(stream, count=20)
    last = next(eid for eid, f in tail if f.get("type") == "stdout")
    landed = await redis.xlen(stream)
    if landed < n:
        raise RuntimeError(f"only {landed} of {n} events landed in {stream}")
    span_ms = max(1, _ms(last) - _ms(first))
    return (n - 1) / (span_ms / 1000)


async def _wait_done(env: BenchEnv, stream: str, after: str, timeout: float) -> str:
    """Follow the output until ``done``; returns the last ID seen."""
    deadline = time.monotonic() + timeout
    last = after
    while (left := deadline - time.monotonic()) > 0:
        response = await env.redis.xread(
            {stream: last}, count=10_000, block=max(1, int(min(left, 1.0) * 1000))
        )
        for _s, entries in response or []:
            for entry_id, fields in entries:
                last = entry_id
                if fields.get("type") == "done":
                    return str(last)
    raise TimeoutError(f"no done on {stream} within {timeout:g}s")


async def _stream_tail(env: BenchEnv, stream: str) -> str:
    newest = await env.redis.xrevrange(stream, count=1)
    return str(newest[0][0]) if newest else "0-0"


async def throughput_figure(env: BenchEnv, worker_id: str, lines: int, runs: int) -> Figure:
    out = env.keys.output(worker_id)
    base_stream = f"{env.prefix}:bench:plain:output"

    async def ours(_i: int) -> float:
        await env.redis.xtrim(out, maxlen=0)
        after = await _stream_tail(env, out)
        await env.redis.xadd(
            env.keys.input(worker_id), {"type": "prompt", "content": f"fast:{lines}"}
        )
        await _wait_done(env, out, after, timeout=600)
        rate = await _stdout_span(env, out, after, lines)
        await env.redis.xtrim(out, maxlen=0)
        return rate

    async def plain(_i: int) -> float:
        await env.redis.delete(base_stream)
        input_id = "0-1"
        for start in range(0, lines, BATCH):
            pipe = env.redis.pipeline(transaction=False)
            stamp = iso_now()
            for i in range(start, min(start + BATCH, lines)):
                pipe.execute_command(
                    "XADD",
                    base_stream,
                    "MAXLEN",
                    "~",
                    250_000,
                    "*",
                    "type",
                    "stdout",
                    "content",
                    f"line {i:07d}",
                    "timestamp",
                    stamp,
                    "input_id",
                    input_id,
                )
            await pipe.execute()
        rate = await _stdout_span(env, base_stream, "0-0", lines)
        await env.redis.delete(base_stream)
        return rate

    base, mine = await alternate(runs, plain, ours, warmup=1)
    return Figure(
        name="data.throughput",
        title=f"4. output events/s ({lines:,} lines)",
        unit="ev/s",
        ours_label="CUSTOM agent via wrapper",
        baseline_label="redis-py pipelined XADD",
        goal="ratio_min",
        bound=0.5,
        higher_is_better=True,
        ours=mine,
        baseline=base,
        extra={"lines": lines, "batch": BATCH},
    )


async def _follow_latencies(
    env: BenchEnv, stream: str, after: str, count: int, timeout: float
) -> list[float]:
    """Arrival time minus the printed clock of ``count`` stdout lines, in seconds."""

    def pick(_entry_id: str, fields: dict[str, str], now: float) -> float | None:
        return now - float(fields["content"]) if fields.get("type") == "stdout" else None

    return await collect(env.redis, stream, after, count, timeout, pick, "lines")


async def latency_figure(
    env: BenchEnv, worker_id: str, lines_per_run: int, runs: int, every: float = 0.01
) -> Figure:
    out = env.keys.output(worker_id)
    base_stream = f"{env.prefix}:bench:plain:latency"
    ours_all: list[float] = []
    base_all: list[float] = []

    async def ours(_i: int) -> float:
        after = await _stream_tail(env, out)
        reader = asyncio.create_task(_follow_latencies(env, out, after, lines_per_run, timeout=120))
        await env.redis.xadd(
            env.keys.input(worker_id),
            {"type": "prompt", "content": f"slow:{lines_per_run}:{every}"},
        )
        got = await reader
        await _wait_done(env, out, after, timeout=60)
        ours_all.extend(got)
        return sorted(got)[len(got) // 2]

    async def plain(_i: int) -> float:
        after = await _stream_tail(env, base_stream)
        reader = asyncio.create_task(
            _follow_latencies(env, base_stream, after, lines_per_run, timeout=120)
        )
        for _ in range(lines_per_run):
            await env.redis.xadd(base_stream, {"type": "stdout", "content": f"{time.time():.6f}"})
            await asyncio.sleep(every)
        got = await reader
        base_all.extend(got)
        return sorted(got)[len(got) // 2]

    await alternate(runs, plain, ours, warmup=0)
    await env.redis.delete(base_stream)
    ours_ms = [s * 1000 for s in ours_all]
    base_ms = [s * 1000 for s in base_all]
    from benchmarks.harness import percentile

    return Figure(
        name="data.latency",
        title="4b. line printed → event readable (10 ms agent)",
        unit="ms",
        ours_label="wrapper",
        baseline_label="direct XADD",
        goal="value_max",
        bound=50.0,
        ours=ours_ms,
        baseline=base_ms,
        extra={
            "goal_on": "p99",
            "p99_ms": percentile(ours_ms, 99),
            "p50_ms": percentile(ours_ms, 50),
            "baseline_p99_ms": percentile(base_ms, 99),
            "baseline_p50_ms": percentile(base_ms, 50),
            "runs": runs,
            "lines_per_run": lines_per_run,
        },
    )
