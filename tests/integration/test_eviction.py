"""Idle eviction and maximum lifetime; a busy worker is never evicted as idle."""

from __future__ import annotations

import json

import pytest

from tests.support.flows import Harness

pytestmark = [pytest.mark.docker, pytest.mark.redis]

CAT = json.dumps(["cat"])


async def reasons(harness: Harness, worker_id: str) -> list[tuple[str, str]]:
    return [
        (f["to"], f["reason"])
        for _id, f in await harness.redis.xrange(harness.keys.lifecycle)
        if f["worker_id"] == worker_id
    ]


async def test_idle_worker_is_stopped(harness: Harness) -> None:
    await harness.start(idle_timeout_seconds=2, eviction_interval_seconds=0.2)
    reply = await harness.client.create(agent_type="CUSTOM", agent_command=CAT)
    assert reply.worker_id
    assert await harness.wait_status(reply.worker_id, "RUNNING", "FAILED") == "RUNNING"
    assert await harness.wait_status(reply.worker_id, "STOPPED", "FAILED", timeout=30) == "STOPPED"
    record = await harness.redis.hgetall(harness.keys.worker(reply.worker_id))
    assert record["reason"] == "idle"
    assert (await reasons(harness, reply.worker_id))[-1] == ("STOPPED", "idle")
    output = await harness.redis.xrange(harness.keys.output(reply.worker_id))
    assert json.loads(output[-1][1]["content"]) == {"worker_status": "STOPPED", "reason": "idle"}
    await harness.wait_container_gone(reply.worker_id)


async def test_busy_worker_is_not_evicted_and_own_timeout_is_capped(harness: Harness) -> None:
    await harness.start(
        idle_timeout_seconds=600, max_idle_timeout_seconds=2, eviction_interval_seconds=0.2
    )
    # A run of 5 s, longer than the 2 s idle timeout the create asks for (capped at 2).
    reply = await harness.client.create(
        agent_type="CUSTOM",
        agent_command=json.dumps(["sh", "-c", "sleep 5; echo finished"]),
        idle_timeout_seconds="1000",
    )
    assert reply.worker_id
    record = await harness.redis.hgetall(harness.keys.worker(reply.worker_id))
    assert record["idle_timeout_seconds"] == "2"
    assert await harness.wait_status(reply.worker_id, "RUNNING", "FAILED") == "RUNNING"
    input_id = await harness.client.send_input(reply.worker_id, "go")
    events = await harness.events_until_done(reply.worker_id, input_id=input_id, timeout=30)
    assert any(e["type"] == "stdout" and e["content"] == "finished" for e in events)
    # Through the whole run it stayed RUNNING: no terminal status event before the run's done.
    # (The manager's STARTING events with a "progress" are what it did before, not changes.)
    changes = [
        json.loads(e["content"])
        for e in events
        if e["type"] == "status" and e["content"].startswith("{")  # the wrapper's are words
    ]
    statuses = [
        c["worker_status"] for c in changes if c.get("worker_status") and "progress" not in c
    ]
    assert statuses == ["RUNNING"]
    assert (await reasons(harness, reply.worker_id))[-1] == ("RUNNING", "ready")
    # Idle afterwards: stopped about 2 s later.
    assert await harness.wait_status(reply.worker_id, "STOPPED", "FAILED", timeout=30) == "STOPPED"
    assert (await reasons(harness, reply.worker_id))[-1] == ("STOPPED", "idle")


async def test_maximum_lifetime(harness: Harness) -> None:
    await harness.start(max_lifetime_seconds=4, eviction_interval_seconds=0.2)
    reply = await harness.client.create(agent_type="CUSTOM", agent_command=CAT)
    assert reply.worker_id
    assert await harness.wait_status(reply.worker_id, "STOPPED", "FAILED", timeout=60) == "STOPPED"
    assert (await reasons(harness, reply.worker_id))[-1] == ("STOPPED", "ttl")
    await harness.wait_container_gone(reply.worker_id)
