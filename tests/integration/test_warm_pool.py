"""Warm pools: pooled workers taken by creates, handed over, isolated, refilled, adopted."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from typing import Any

import pytest

from tests.support.flows import Harness
from worker_manager.contract.labels import LABEL_POOL, LABEL_WORKER
from worker_manager.service.manager import Manager

pytestmark = [pytest.mark.docker, pytest.mark.redis]

POOL = {"CUSTOM": 2}
FAST = {"warm_pool": POOL, "warm_pool_interval_seconds": 0.3, "reconcile_interval_seconds": 1.0}


async def ready_ids(harness: Harness, manager: Manager, count: int) -> set[str]:
    """The pooled ids once the pool holds ``count`` (polled: filling has no event)."""
    key = harness.keys.pool(manager.settings.manager_id, "CUSTOM")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while True:
        members: set[str] = await harness.redis.smembers(key)
        if len(members) == count:
            return members
        assert loop.time() < deadline, f"the pool holds {members}, not {count}"
        await asyncio.sleep(0.1)


def env_of(container: Any) -> dict[str, str]:
    pairs = (item.partition("=") for item in container.attrs["Config"]["Env"])
    return {name: value for name, _, value in pairs}


async def answer(harness: Harness, worker_id: str, prompt: str) -> list[dict[str, str]]:
    input_id = await harness.client.send_input(worker_id, prompt)
    events = await harness.events_until_done(worker_id, input_id=input_id, timeout=60)
    return [e for e in events if e.get("input_id") == input_id]


async def test_creates_take_pooled_workers_isolated_then_fall_back_and_the_pool_refills(
    harness: Harness,
) -> None:
    manager = await harness.start(**FAST)
    pooled = await ready_ids(harness, manager, 2)
    for worker_id in pooled:
        container = harness.container(worker_id)
        # Before a create takes it, a pooled worker has nothing to act with: no Redis user,
        # no Redis URL, no agent command; it is in no list and no lifecycle.
        assert not await manager.acl.exists(worker_id)
        env = env_of(container)
        assert "WM_REDIS_URL" not in env and "WM_AGENT_COMMAND" not in env
        assert container.labels[LABEL_POOL] == "CUSTOM"
    assert (await harness.client.request("list")).workers == []

    made = {}
    for name in ("alpha", "beta", "gamma"):
        reply = await harness.client.create(
            agent_type="CUSTOM",
            agent_command=["sh", "-c", f'echo "{name} got: $(cat)"; cat AGENTS.md'],
            instructions=f"instructions of {name}",
            allowed_commands=["echo", "cat"],
            metadata={"who": name},
            prompt=f"first prompt of {name}",
        )
        assert reply.ok and reply.worker_id, reply
        made[name] = reply.worker_id
    taken = {made["alpha"], made["beta"]}
    assert taken == pooled  # two from the pool...
    assert made["gamma"] not in pooled  # ...and the third the ordinary way
    for name, worker_id in made.items():
        assert await harness.wait_status(worker_id, "RUNNING", "FAILED") == "RUNNING"
        # Its own record, labels, Redis user, command, instructions and first prompt.
        record = await harness.redis.hgetall(harness.keys.worker(worker_id))
        assert json.loads(record["metadata"]) == {"who": name}
        assert harness.container(worker_id).labels[LABEL_WORKER] == worker_id
        assert await manager.acl.exists(worker_id)
        first = await harness.events_until(worker_id, lambda e: e.get("type") == "done", timeout=60)
        stdout = [e["content"] for e in first if e["type"] == "stdout"]
        assert stdout == [f"{name} got: first prompt of {name}", f"instructions of {name}"]
        later = await answer(harness, worker_id, "again")
        assert next(e["content"] for e in later if e["type"] == "stdout") == f"{name} got: again"
        changes = [
            (fields["from"], fields["to"])
            for _id, fields in await harness.redis.xrange(harness.keys.lifecycle)
            if fields["worker_id"] == worker_id
        ]
        assert changes == [("", "STARTING"), ("STARTING", "RUNNING")]
    # Nothing of one create reached another: each output names only its own worker.
    for name, worker_id in made.items():
        text = json.dumps(await harness.redis.xrange(harness.keys.output(worker_id)))
        assert all(other not in text for other in made if other != name)

    refilled = await ready_ids(harness, manager, 2)
    assert not refilled & taken
    metrics = manager.metrics.render().decode()
    assert 'wm_pool_takes_total{shape="CUSTOM"} 2.0' in metrics
    assert 'wm_pool_misses_total{shape="CUSTOM"} 1.0' in metrics
    listed = await harness.client.request("list")
    assert sorted(w["worker_id"] for w in listed.workers or []) == sorted(made.values())


async def test_the_pool_is_adopted_after_a_restart_and_a_dead_member_replaced(
    harness: Harness,
) -> None:
    manager = await harness.start(**FAST)
    first = await ready_ids(harness, manager, 2)
    await harness.close()  # a manager stop leaves worker and pool containers running
    await harness.redis.delete(harness.keys.pool(manager.settings.manager_id, "CUSTOM"))
    again = await harness.start(**FAST)
    assert await ready_ids(harness, again, 2) == first  # adopted, not replaced, not orphaned
    dead = sorted(first)[0]
    await asyncio.to_thread(harness.container(dead).kill)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:
        members = await ready_ids(harness, again, 2)
        if dead not in members:
            break
        assert loop.time() < deadline, "the dead pooled worker was never replaced"
        await asyncio.sleep(0.1)
    await harness.wait_container_gone(dead)
    # The reconciler never took the unassigned ones for orphans meanwhile.
    assert all(harness.container(worker_id) is not None for worker_id in members)


async def test_concurrent_creates_on_two_managers_never_share_a_pooled_worker(
    harness: Harness,
) -> None:
    one = await harness.start(**FAST)
    two = await harness.start(**FAST, manager_id=f"{harness.settings.manager_id}-2")
    pooled = await ready_ids(harness, one, 2) | await ready_ids(harness, two, 2)
    replies = await asyncio.gather(
        *(harness.client.create(agent_type="CUSTOM", agent_command=["cat"]) for _ in range(6))
    )
    ids = [r.worker_id for r in replies]
    assert all(r.ok for r in replies) and len(set(ids)) == 6
    assert len(set(ids) & pooled) <= 4
    for worker_id in ids:
        assert worker_id is not None
        assert await harness.wait_status(worker_id, "RUNNING", "FAILED") == "RUNNING"


async def test_a_pool_member_older_than_the_start_timeout_starts_in_time(
    harness: Harness,
) -> None:
    """The start timeout counts from the hand-over, not from when the pooled container was
    started: a worker taken from a pool that has waited longer than the timeout still runs."""
    manager = await harness.start(**FAST, start_timeout_seconds=3.0)
    pooled = await ready_ids(harness, manager, 2)
    started = {harness.container(w).attrs["State"]["StartedAt"] for w in pooled}
    # Let the pool age past the start timeout (time passing is the condition itself).
    oldest = min(datetime.fromisoformat(t[:26] + "+00:00") for t in started).timestamp()
    while time.time() - oldest < 4.0:
        await asyncio.sleep(0.1)
    reply = await harness.client.create(agent_type="CUSTOM", agent_command=["cat"])
    assert reply.ok and reply.worker_id in pooled, reply
    assert harness.container(reply.worker_id).attrs["State"]["StartedAt"] in started
    assert await harness.wait_status(reply.worker_id, "RUNNING", "FAILED") == "RUNNING"
    record = await harness.redis.hgetall(harness.keys.worker(reply.worker_id))
    assert record["status"] == "RUNNING", record
    assert (await harness.client.request("delete", worker_id=reply.worker_id)).ok
