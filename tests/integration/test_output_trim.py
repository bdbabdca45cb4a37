"""One trim round takes a flooded output stream back under its cap (issue: hostile workers, 6).

A worker's ACL user may ``XADD`` to its own output as fast as Redis takes it. An approximate
``XTRIM`` removes at most 100 × ``stream-node-max-entries`` (10 000) entries a call unless told
otherwise, so a worker writing faster than that stayed many times over its cap round after
round. These tests flood a live worker's output (with the admin connection, as fast as its own
user could) with more than one such call removes, but less than the overflow factor allows in one
round (so the worker is trimmed, not stopped), and look at the stream after exactly one round.
"""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from redis.asyncio import Redis

from tests.support.flows import Harness
from worker_manager.service.manager import Manager

pytestmark = [pytest.mark.redis, pytest.mark.docker]

#: What one approximate ``XTRIM`` removes at Redis's defaults when no ``LIMIT`` is given.
IMPLICIT_LIMIT = 100 * 100
#: A trim round that never comes during a test: the test runs the rounds it looks at itself.
NEVER = 3600.0
DROPPED = re.compile(r'^wm_worker_writes_dropped_total\{kind="output"\} (\S+)$', re.MULTILINE)


async def start_cat(harness: Harness) -> str:
    reply = await harness.client.create(agent_type="CUSTOM", agent_command=["cat"])
    assert reply.ok and reply.worker_id, reply
    assert await harness.wait_status(reply.worker_id, "RUNNING", "FAILED") == "RUNNING"
    return reply.worker_id


async def flood(redis: Redis, key: str, count: int, *, batch: int = 10_000) -> None:
    """``count`` entries, ``batch`` to a pipeline; ``batch >= count`` lands them in one MULTI,
    all at once as far as a trim round can tell."""
    atomic = batch >= count
    for start in range(0, count, batch):
        async with redis.pipeline(transaction=atomic) as pipe:
            for i in range(start, min(count, start + batch)):
                pipe.xadd(key, {"type": "stdout", "content": f"flood {i}"})
            await pipe.execute()


async def node_slack(redis: Redis) -> int:
    """How far over its cap an approximate trim may leave a stream: less than one node."""
    config = await redis.config_get("stream-node-max-entries")
    return int(config["stream-node-max-entries"])


def dropped(manager: Manager) -> float:
    found = DROPPED.search(manager.metrics.render().decode())
    assert found, "wm_worker_writes_dropped_total{kind=output} is not exported"
    return float(found.group(1))


async def test_one_round_takes_a_flood_back_under_the_default_cap(harness: Harness) -> None:
    # Default cap and factor; the manager's own rounds wait an hour, so the one round here is
    # the only one that trims.
    manager = await harness.start(output_trim_interval_seconds=NEVER)
    cap, factor = manager.settings.output_maxlen, manager.settings.output_overflow_factor
    assert (cap, factor) == (10_000, 20)  # the defaults are what this test is about
    worker_id = await start_cat(harness)
    key = harness.keys.output(worker_id)
    count = 15 * cap  # far past what one implicit-limit call removes, below the overflow factor
    assert count - cap > IMPLICIT_LIMIT and count < factor * cap
    await flood(harness.redis, key, count)
    before = int(await harness.redis.xlen(key))
    assert before >= count
    dropped_before = dropped(manager)

    await manager.output_guard.round()

    after = int(await harness.redis.xlen(key))
    assert cap <= after <= cap + await node_slack(harness.redis), (before, after)
    # Trimmed, not stopped (below the factor), and every entry removed is counted.
    assert await harness.redis.hget(harness.keys.worker(worker_id), "status") == "RUNNING"
    assert dropped(manager) - dropped_before == before - after


async def test_a_flood_past_the_factor_in_one_round_fails_the_worker_at_the_default_cap(
    harness: Harness,
) -> None:
    # With the old per-call limit one round never removed more than 10 000 entries, so at the
    # default cap the verdict "more than 20 × 10 000 in one round" could not be reached at all.
    manager = await harness.start(output_trim_interval_seconds=NEVER)
    cap, factor = manager.settings.output_maxlen, manager.settings.output_overflow_factor
    calm, flooding = await start_cat(harness), await start_cat(harness)
    key = harness.keys.output(flooding)
    await flood(harness.redis, key, factor * cap + 2 * cap)

    await manager.output_guard.round()

    assert await harness.wait_status(flooding, "FAILED", timeout=30) == "FAILED"
    record = await harness.redis.hgetall(harness.keys.worker(flooding))
    assert record["reason"] == "output_overflow", record
    assert int(await harness.redis.xlen(key)) <= cap + await node_slack(harness.redis)
    assert await harness.redis.hget(harness.keys.worker(calm), "status") == "RUNNING"


async def test_the_trim_loop_takes_a_flood_back_under_a_small_cap_in_one_round(
    harness: Harness,
) -> None:
    # The manager's own loop this time. A cap of 100 with the default factor would stop any
    # worker that writes more than one implicit-limit call removes, so the factor is raised.
    cap, interval = 100, 2.0
    manager = await harness.start(
        output_maxlen=cap, output_overflow_factor=200, output_trim_interval_seconds=interval
    )
    worker_id = await start_cat(harness)
    key = harness.keys.output(worker_id)
    count = 150 * cap
    assert count - cap > IMPLICIT_LIMIT and count < 200 * cap
    state = manager.supervisor.loops["output-trim"]
    loop = asyncio.get_running_loop()

    async def next_round(after: float | None, timeout: float = 10 * interval) -> float:
        """When the first round finishing after ``after`` did (``time.monotonic``)."""
        deadline = loop.time() + timeout
        while (finished := state.last_round) is None or finished == after:
            assert loop.time() < deadline, f"no trim round finished within {timeout}s"
            await asyncio.sleep(0.01)
        return finished

    # Right after a round, so the whole flood (one MULTI) is in before the next round starts
    # (it sleeps ``interval`` first): the next round is the one round that sees all of it.
    finished = await next_round(state.last_round)
    await flood(harness.redis, key, count, batch=count)
    pushed = time.monotonic()
    assert pushed - finished < interval, "the flood took longer than a round; cannot tell"
    before = int(await harness.redis.xlen(key))
    assert before >= count
    dropped_before = dropped(manager)

    await next_round(finished)

    after = int(await harness.redis.xlen(key))  # long before the round after that (interval)
    assert cap <= after <= cap + await node_slack(harness.redis), (before, after)
    assert await harness.redis.hget(harness.keys.worker(worker_id), "status") == "RUNNING"
    assert dropped(manager) - dropped_before == before - after
