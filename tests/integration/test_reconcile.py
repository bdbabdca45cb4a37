"""Crash safety: SIGKILL the manager at each stage of a create, start it again, and find exactly
one container and a truthful record; Redis and Docker brought back into agreement."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import docker
import pytest
from redis.asyncio import Redis

from tests.support.flows import Harness
from tests.support.manager_process import ManagerProcess
from worker_manager.client.requests import CommandClient
from worker_manager.contract.labels import LABEL_WORKER
from worker_manager.settings import Settings

pytestmark = [pytest.mark.docker, pytest.mark.redis]

CAT = json.dumps(["cat"])


def containers_of(client: docker.DockerClient, worker_id: str) -> list[Any]:
    return list(client.containers.list(all=True, filters={"label": f"{LABEL_WORKER}={worker_id}"}))


class DockerEventWaiter:
    """Waits for one Docker event of a worker's container (no polling of `docker ps`)."""

    def __init__(self, client: docker.DockerClient, worker_id: str, action: str) -> None:
        self.seen = threading.Event()
        self._thread = threading.Thread(
            target=self._read, args=(client, worker_id, action), daemon=True
        )
        self._ready = threading.Event()
        self._thread.start()
        self._ready.wait(10)

    def _read(self, client: docker.DockerClient, worker_id: str, action: str) -> None:
        stream = client.events(
            decode=True,
            since=int(time.time()) - 1,
            until=int(time.time()) + 180,
            filters={"type": "container", "event": action, "label": f"{LABEL_WORKER}={worker_id}"},
        )
        self._ready.set()
        for _event in stream:
            self.seen.set()
            break
        stream.close()

    async def wait(self, timeout: float) -> None:
        assert await asyncio.to_thread(self.seen.wait, timeout), "docker event never came"


@pytest.fixture
async def process(
    settings: Settings, tmp_path: Path, redis: Redis, docker_client: docker.DockerClient
) -> AsyncIterator[ManagerProcess]:
    proc = ManagerProcess(
        settings.model_copy(
            update={"reconcile_interval_seconds": 2.0, "build_lock_ttl_seconds": 5}
        ),
        tmp_path,
    )
    try:
        yield proc
    finally:
        proc.kill()


async def wait_record(redis: Redis, key: str, field: str, timeout: float = 120) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := await redis.hget(key, field)):
        assert loop.time() < deadline, f"{key} never got {field}"
        await asyncio.sleep(0.02)
    return str(value)


def slow_build_overlay(root: Path) -> Path:
    """A CUSTOM snippet of a shape never built before, whose build takes a few seconds."""
    overlay = root / "overlay"
    (overlay / "agents").mkdir(parents=True)
    (overlay / "agents" / "CUSTOM.Dockerfile").write_text(
        f"# test build {secrets.token_hex(8)}\nRUN sleep 4\n"
    )
    return overlay


@pytest.mark.parametrize("stage", ["accepted", "building", "container_created"])
async def test_sigkill_during_create_then_restart(
    stage: str,
    process: ManagerProcess,
    redis: Redis,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    keys = process.settings.keys
    if stage == "building":
        process.env["WM_IMAGES_OVERLAY"] = str(slow_build_overlay(tmp_path))
    await process.start(redis)
    client = CommandClient(redis, keys)
    worker_id = str(uuid.uuid4())
    created = DockerEventWaiter(docker_client, worker_id, "create")

    if stage == "accepted":
        reply = await client.create(
            agent_type="CUSTOM", agent_command=CAT, worker_id=worker_id, timeout=60
        )
        assert reply.ok and reply.status == "STARTING"
    else:
        await client.push(
            {
                "command": "create",
                "agent_type": "CUSTOM",
                "agent_command": CAT,
                "worker_id": worker_id,
                "request_id": f"r-{worker_id}",
            }
        )
        if stage == "building":
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 120
            while not [k async for k in redis.scan_iter(match=keys.build_lock("*"))]:
                assert loop.time() < deadline, "the build never started"
                await asyncio.sleep(0.02)
        else:
            await created.wait(180)
    process.kill()

    record = await redis.hgetall(keys.worker(worker_id))
    assert record["status"] == "STARTING", record
    if stage == "building":
        assert containers_of(docker_client, worker_id) == []

    await process.start(redis)
    status = await Harness(process.settings, redis, docker_client).wait_status(
        worker_id, "RUNNING", "FAILED", timeout=180
    )
    assert status == "RUNNING", process.log_tail()
    found = containers_of(docker_client, worker_id)
    assert len(found) == 1, found
    record = await redis.hgetall(keys.worker(worker_id))
    assert record["container_id"] == found[0].id
    assert record["image"] and record["started_at"]
    # Nothing else of this manager runs (no orphan from the first attempt).
    mine = docker_client.containers.list(
        all=True, filters={"label": f"worker-manager.manager_id={process.settings.manager_id}"}
    )
    assert [c.id for c in mine] == [found[0].id]

    deleted = await client.request("delete", worker_id=worker_id, timeout=60)
    assert deleted.ok and deleted.status == "STOPPED"
    assert containers_of(docker_client, worker_id) == []
    process.terminate()


async def test_reconcile_marks_lost_removes_orphans_and_leftovers(harness: Harness) -> None:
    manager = await harness.start(reconcile_interval_seconds=3600)
    replies = [
        await harness.client.request("create", agent_type="CUSTOM", agent_command=CAT)
        for _ in range(3)
    ]
    lost, orphan, leftover = (str(r.worker_id) for r in replies)
    for worker_id in (lost, orphan, leftover):
        assert await harness.wait_status(worker_id, "RUNNING", "FAILED") == "RUNNING"

    # Stop watching Docker events, so only the reconciler can see what happens next.
    await harness.stop(manager)
    # lost: its container disappears behind the manager's back.
    harness.container(lost).remove(force=True)
    # orphan: its record disappears (expired, or a Redis that lost its data).
    await harness.redis.delete(harness.keys.worker(orphan))
    # leftover: deleted in Redis, container never removed (a crash between the two).
    await harness.redis.hset(harness.keys.worker(leftover), "status", "STOPPED")

    manager = await harness.start(reconcile_interval_seconds=3600)  # start-up reconciles
    record = await harness.redis.hgetall(harness.keys.worker(lost))
    assert record["status"] == "FAILED" and record["reason"] == "container_lost"
    assert harness.container(orphan) is None
    assert harness.container(leftover) is None
    transitions = [
        f["reason"]
        for _id, f in await harness.redis.xrange(harness.keys.lifecycle)
        if f["worker_id"] == lost
    ]
    assert transitions[-1] == "container_lost"
    output = await harness.redis.xrange(harness.keys.output(lost))
    assert json.loads(output[-1][1]["content"]) == {
        "worker_status": "FAILED",
        "reason": "container_lost",
    }
    report = await manager.reconciler.reconcile()
    assert not report.changed(), report


async def test_oom_kill_is_reported(harness: Harness) -> None:
    await harness.start(container_memory="64m")
    hog = "x = []\nwhile True:\n    x.append(bytearray(8 * 1024 * 1024))\n"
    reply = await harness.client.request(
        "create", agent_type="CUSTOM", agent_command=json.dumps(["python3", "-c", hog])
    )
    assert reply.worker_id
    assert await harness.wait_status(reply.worker_id, "RUNNING", "FAILED") == "RUNNING"
    await harness.client.send_input(reply.worker_id, "eat")
    assert await harness.wait_status(reply.worker_id, "FAILED", "STOPPED", timeout=60) == "FAILED"
    record = await harness.redis.hgetall(harness.keys.worker(reply.worker_id))
    assert record["reason"] == "oom", record
    await harness.wait_container_gone(reply.worker_id)
