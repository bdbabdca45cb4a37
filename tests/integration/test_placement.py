"""Placement: a full manager stops taking creates while another has room."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.flows import Harness
from worker_manager.workers.fleet.placement import Offer, may_take, offer_of


def test_the_verdict() -> None:
    assert may_take(0, 1, 0, [])  # room here
    assert may_take(1, 1, 0, [])  # full, alone: take them, and answer capacity_exceeded
    assert may_take(1, 1, 0, [Offer(0), Offer(0)])  # everyone is full: the same
    assert not may_take(1, 1, 0, [Offer(0), Offer(3)])  # full, another has room: leave it
    # A ready pooled worker elsewhere (with room) wins over a cold start here...
    assert not may_take(0, 5, 0, [Offer(room=2, pooled=1)])
    assert may_take(0, 5, 0, [Offer(room=0, pooled=1)])  # ...unless that one is full
    assert may_take(0, 5, 1, [Offer(room=2, pooled=1)])  # ...or this one has one too
    assert offer_of('{"at": "x", "room": 4, "pooled": 2}') == Offer(4, 2)
    for value in (None, "", "2026-11-25T10:00:00.000Z", '{"room": "lots"}', '{"room": -1}'):
        assert offer_of(value) == Offer()


@pytest.mark.docker
@pytest.mark.redis
async def test_creates_flow_to_the_manager_with_room(harness: Harness) -> None:
    full = await harness.start(max_workers=1, manager_id=f"{harness.settings.manager_id}-full")
    first = await harness.client.create(agent_type="CUSTOM", agent_command=["cat"])
    assert first.ok and first.worker_id
    assert await harness.wait_status(first.worker_id, "RUNNING", "FAILED") == "RUNNING"
    roomy = await harness.start(max_workers=10, manager_id=f"{harness.settings.manager_id}-roomy")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not full.placement.paused:  # it sees the other's room at its next read
        assert loop.time() < deadline, "the full manager never stepped aside"
        await asyncio.sleep(0.05)
    replies = [
        await harness.client.create(agent_type="CUSTOM", agent_command=["cat"]) for _ in range(4)
    ]
    assert all(r.ok for r in replies), [r for r in replies if not r.ok]  # no capacity_exceeded
    for reply in replies:
        assert reply.worker_id
        owner = await harness.redis.hget(harness.keys.worker(reply.worker_id), "manager_id")
        assert owner == roomy.settings.manager_id
        assert await harness.wait_status(reply.worker_id, "RUNNING", "FAILED") == "RUNNING"
    # The full one still answers what it reads on its own stream, and status from anywhere.
    status = await harness.client.request("status", worker_id=first.worker_id)
    assert status.ok and status.status == "RUNNING"


@pytest.mark.docker
@pytest.mark.redis
async def test_a_manager_with_a_ready_pooled_worker_wins(harness: Harness) -> None:
    cold = await harness.start(manager_id=f"{harness.settings.manager_id}-cold")
    warm = await harness.start(
        manager_id=f"{harness.settings.manager_id}-warm",
        warm_pool={"CUSTOM": 1},
        warm_pool_interval_seconds=0.3,
        presence_ttl_seconds=3,
    )
    key = harness.keys.pool(warm.settings.manager_id, "CUSTOM")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not (await harness.redis.scard(key) and cold.placement.paused):
        assert loop.time() < deadline, "the pool never filled, or the cold manager never yielded"
        await asyncio.sleep(0.05)
    pooled = await harness.redis.smembers(key)
    reply = await harness.client.create(agent_type="CUSTOM", agent_command=["cat"])
    assert reply.ok and reply.worker_id and reply.worker_id in pooled, (reply, pooled)
    assert await harness.wait_status(reply.worker_id, "RUNNING", "FAILED") == "RUNNING"
