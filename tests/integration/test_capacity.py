"""Capacity: the live-worker limit (per manager) and the per-owner limit hold under concurrency."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.support.flows import Harness
from worker_manager.contract.reply import Reply

pytestmark = [pytest.mark.docker, pytest.mark.redis]

CAT = json.dumps(["cat"])


async def test_fifty_concurrent_creates_never_exceed_the_limit(harness: Harness) -> None:
    manager = await harness.start(max_workers=5, capacity_retry_after_seconds=7)
    replies: list[Reply] = await asyncio.gather(
        *(
            harness.client.create(agent_type="CUSTOM", agent_command=CAT, timeout=60)
            for _ in range(50)
        )
    )
    accepted = [r for r in replies if r.ok]
    refused = [r for r in replies if not r.ok]
    assert len(accepted) == 5, [r.error for r in replies]
    assert all(r.error == "capacity_exceeded" and r.retry_after == 7 for r in refused)
    assert all(r.message and "maximum of 5" in r.message for r in refused)
    assert await harness.redis.scard(manager.store.live_key) == 5
    # Nothing was started for a refused create: no record, so no container either.
    index = await harness.redis.zrange(harness.keys.index, 0, -1)
    assert sorted(index) == sorted(str(r.worker_id) for r in accepted)
    for reply in accepted:
        assert reply.worker_id
        assert await harness.wait_status(reply.worker_id, "RUNNING", "FAILED") == "RUNNING"
    # A slot freed is a slot usable again.
    assert (await harness.client.request("delete", worker_id=str(accepted[0].worker_id))).ok
    again = await harness.client.create(agent_type="CUSTOM", agent_command=CAT)
    assert again.ok, again
    for reply in [*accepted[1:], again]:
        assert (await harness.client.request("delete", worker_id=str(reply.worker_id))).ok


async def test_owner_limit_is_separate_and_released_on_end(harness: Harness) -> None:
    await harness.start(max_workers=10, max_workers_per_owner=2)

    def create(owner: str) -> asyncio.Future[Reply]:
        return asyncio.ensure_future(
            harness.client.create(
                agent_type="CUSTOM", agent_command=CAT, metadata={"owner": owner}, timeout=60
            )
        )

    alice = await asyncio.gather(*(create("alice") for _ in range(6)))
    bob = await create("bob")
    assert sum(r.ok for r in alice) == 2
    refused = [r for r in alice if not r.ok]
    assert all(r.error == "capacity_exceeded" and r.retry_after for r in refused)
    assert all("owner 'alice'" in str(r.message) for r in refused)
    assert bob.ok
    assert await harness.redis.scard(harness.keys.owner_live("alice")) == 2

    first = next(r for r in alice if r.ok)
    assert (await harness.client.request("delete", worker_id=str(first.worker_id))).ok
    assert await harness.redis.scard(harness.keys.owner_live("alice")) == 1
    later = await create("alice")
    assert later.ok, later
    for reply in [*(r for r in alice if r.ok), bob, later]:
        assert (await harness.client.request("delete", worker_id=str(reply.worker_id))).ok
    assert await harness.redis.scard(harness.keys.owner_live("alice")) == 0
