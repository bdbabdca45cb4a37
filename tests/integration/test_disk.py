"""A worker's writes are bounded (SPEC §7): its volumes are measured, and past
``WM_CONTAINER_DISK`` it is FAILED ``disk_exceeded``, its container and volumes removed."""

from __future__ import annotations

import asyncio
import json

import docker.errors
import pytest

from tests.support.flows import Harness
from worker_manager.contract.limits import parse_size
from worker_manager.service.manager import Manager

pytestmark = [pytest.mark.docker, pytest.mark.redis]

#: Writes ``int(prompt)`` MiB into the workspace, then says so.
WRITER = (
    "import sys; n = int(sys.stdin.read()); "
    "f = open('/workspace/blob', 'ab'); "
    "[f.write(b'x' * (1 << 20)) for _ in range(n)]; f.close(); print('wrote', n)"
)


def volumes_of(harness: Harness, worker_id: str) -> list[str]:
    found = []
    for suffix in ("home", "workspace"):
        name = f"{harness.settings.key_prefix}-{worker_id}-{suffix}"
        try:
            harness.docker.volumes.get(name)
            found.append(name)
        except docker.errors.NotFound:
            pass
    return found


async def measured_twice(manager: Manager) -> None:
    """Until the guard has measured twice more: time enough for a wrong verdict to show."""
    loop = asyncio.get_running_loop()
    deadline, target = loop.time() + 30, manager.disk_guard.measured + 2
    while manager.disk_guard.measured < target:
        assert loop.time() < deadline, "the disk guard does not measure"
        await asyncio.sleep(0.05)


async def write(harness: Harness, worker_id: str, mib: int) -> list[dict[str, str]]:
    input_id = await harness.client.send_input(worker_id, str(mib))
    return await harness.events_until_done(worker_id, input_id=input_id, timeout=60)


async def test_a_worker_past_its_disk_limit_is_failed_and_its_volumes_go(
    harness: Harness,
) -> None:
    manager = await harness.start(container_disk="16m", disk_check_interval_seconds=0.5)
    reply = await harness.client.request(
        "create", agent_type="CUSTOM", agent_command=json.dumps(["python3", "-c", WRITER])
    )
    assert reply.ok, reply
    worker_id = str(reply.worker_id)
    assert await harness.wait_status(worker_id, "RUNNING", "FAILED") == "RUNNING"
    assert len(volumes_of(harness, worker_id)) == 2

    # Under the limit: it keeps running (measured a few rounds).
    await write(harness, worker_id, 4)
    await measured_twice(manager)
    assert await harness.redis.hget(harness.keys.worker(worker_id), "status") == "RUNNING"

    # Past it: FAILED disk_exceeded, and nothing of it is left.
    await write(harness, worker_id, 24)
    assert await harness.wait_status(worker_id, "FAILED", timeout=30) == "FAILED"
    record = await harness.redis.hgetall(harness.keys.worker(worker_id))
    assert record["reason"] == "disk_exceeded", record
    await harness.wait_container_gone(worker_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while volumes_of(harness, worker_id):
        assert loop.time() < deadline, "the worker's volumes outlived it"
        await asyncio.sleep(0.1)


async def test_the_default_limit_is_ten_gibibytes_and_lets_ordinary_work_through(
    harness: Harness,
) -> None:
    """Defaults-sized: 10 GiB (too much to write in a test), and 64 MiB is nowhere near it."""
    manager = await harness.start(disk_check_interval_seconds=0.5)
    assert manager.disk_guard.limit == parse_size("10g") == 10 * 1024**3
    reply = await harness.client.request(
        "create", agent_type="CUSTOM", agent_command=json.dumps(["python3", "-c", WRITER])
    )
    worker_id = str(reply.worker_id)
    assert await harness.wait_status(worker_id, "RUNNING", "FAILED") == "RUNNING"
    events = await write(harness, worker_id, 64)
    assert [e["content"] for e in events if e["type"] == "stdout"] == ["wrote 64"]
    await measured_twice(manager)
    assert await harness.redis.hget(harness.keys.worker(worker_id), "status") == "RUNNING"
    assert (await harness.client.request("delete", worker_id=worker_id)).ok
    await harness.wait_container_gone(worker_id)
    assert volumes_of(harness, worker_id) == []
