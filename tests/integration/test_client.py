"""``from worker_manager import Client``: the README's example as written, typed errors, streams."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
import redis.asyncio

from tests.support.flows import Harness
from tests.support.readme import run_example
from tests.support.records import seed_records
from tests.support.redis_server import RedisServer
from worker_manager import (
    BuildFailedError,
    CapacityExceededError,
    Client,
    InvalidCommandError,
    NotFoundError,
    WorkerEnded,
)

pytestmark = [pytest.mark.redis]


@pytest.mark.docker
async def test_the_readme_example_runs_as_written(harness: Harness, tmp_path: Path) -> None:
    await harness.start()
    text = await run_example(
        "client-example",
        tmp_path,
        {"WM_REDIS_URL": harness.settings.redis_url, "WM_KEY_PREFIX": harness.settings.key_prefix},
    )
    assert "exit 0 text you said: hello" in text
    assert "RUNNING CUSTOM {'team': 'docs'} 20" in text
    assert "stdout you said: hello" in text and "done 0" in text
    assert "workers listed" in text


async def test_errors_are_typed(harness: Harness) -> None:
    manager = await harness.start(max_workers=1, base_image="worker-manager/missing:none")
    async with Client.from_url(
        harness.settings.redis_url, key_prefix=harness.settings.key_prefix, timeout=10
    ) as client:
        with pytest.raises(NotFoundError) as missing:
            await client.worker(str(uuid.uuid4())).status()
        assert missing.value.code == "not_found" and "no worker" in missing.value.message
        with pytest.raises(InvalidCommandError):
            await client.create(agent_type="ROBOT")
        with pytest.raises(BuildFailedError) as no_droid:
            await client.create(agent_type="FACTORY")
        assert "WM_FACTORY_BINARY" in no_droid.value.message
        # The base image is missing: the worker fails while we wait for it.
        worker = await client.create(agent_type="CUSTOM", agent_command=["cat"])
        with pytest.raises(WorkerEnded) as ended:
            await worker.wait_running(timeout=60)
        assert ended.value.status == "FAILED" and ended.value.reason.startswith("build_failed")
        # The one slot is free again; hold it, then ask for a second.
        await harness.redis.sadd(manager.store.live_key, str(uuid.uuid4()))
        with pytest.raises(CapacityExceededError) as full:
            await client.create(agent_type="CUSTOM", agent_command=["cat"])
        assert full.value.retry_after == harness.settings.capacity_retry_after_seconds


async def test_list_pages_and_lifecycle(harness: Harness) -> None:
    manager = await harness.start(base_image="worker-manager/missing:none")
    async with Client.from_url(
        harness.settings.redis_url, key_prefix=harness.settings.key_prefix
    ) as client:
        newest = await client.redis.xrevrange(client.keys.lifecycle, count=1)
        changes = client.lifecycle(after=newest[0][0] if newest else "0")
        first = asyncio.ensure_future(anext(changes))
        ids = await seed_records(manager.store, 5)
        listed = await client.list(page_size=2)
        listed_ids = [w.worker_id for w in listed]
        assert sorted(listed_ids) == sorted(ids)  # each once, across three pages
        assert all(w.status == "STARTING" and w.agent_type == "CUSTOM" for w in listed)
        change = await asyncio.wait_for(first, 10)
        assert change.worker_id == ids[0] and change.to_status == "STARTING"
        await changes.aclose()


async def test_events_resume_after_redis_restarts(redis_server: RedisServer) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    worker_id = str(uuid.uuid4())
    async with Client.from_url(redis_server.url, key_prefix=prefix) as client:
        stream = client.keys.output(worker_id)
        events = client.worker(worker_id).events()
        await client.redis.xadd(stream, {"type": "stdout", "content": "before"})
        assert (await asyncio.wait_for(anext(events), 10)).content == "before"
        await asyncio.to_thread(redis_server.restart)  # the data goes, the reader stays
        after = asyncio.ensure_future(anext(events))
        writer = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            await writer.xadd(stream, {"type": "stdout", "content": "after"})
        finally:
            await writer.aclose()
        assert (await asyncio.wait_for(after, 20)).content == "after"
        await events.aclose()
