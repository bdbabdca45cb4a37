"""The main path end to end: create → RUNNING → input → output → delete, on Redis and Docker."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.support.flows import Harness
from worker_manager.contract.labels import LABEL_HASH, LABEL_MANAGER, LABEL_WORKER

pytestmark = [pytest.mark.docker, pytest.mark.redis]

CAT = json.dumps(["cat"])


async def test_create_run_talk_delete(harness: Harness) -> None:
    manager = await harness.start()
    reply = await harness.client.request(
        "create",
        agent_type="CUSTOM",
        agent_command=CAT,
        instructions="Be brief.",
        metadata=json.dumps({"owner": "tests"}),
    )
    assert reply.ok, reply
    assert reply.status == "STARTING"
    worker_id = reply.worker_id
    assert worker_id is not None and uuid.UUID(worker_id)

    assert await harness.wait_status(worker_id, "RUNNING", "FAILED") == "RUNNING"
    record = await harness.redis.hgetall(harness.keys.worker(worker_id))
    assert record["image"] == f"worker:{record['image_hash']}"
    # Contained (WM_EGRESS=on, the default): no network, so no address.
    assert record["container_id"] and not record.get("ip_address")
    assert record["started_at"].endswith("Z") and record["created_at"].endswith("Z")
    assert json.loads(record["metadata"]) == {"owner": "tests"}
    assert await harness.redis.zscore(harness.keys.index, worker_id) is not None
    assert await harness.redis.zscore(harness.keys.images, record["image_hash"]) is not None

    container = harness.container(worker_id)
    assert container is not None
    labels = container.labels
    assert labels[LABEL_WORKER] == worker_id
    assert labels[LABEL_MANAGER] == harness.settings.manager_id
    assert labels[LABEL_HASH] == record["image_hash"]
    host_config = container.attrs["HostConfig"]
    assert host_config["CapDrop"] == ["ALL"]
    assert "no-new-privileges:true" in host_config["SecurityOpt"]
    assert host_config["Memory"] > 0 and host_config["PidsLimit"] > 0
    assert host_config["NetworkMode"] == "none"
    exit_code, agents_md = container.exec_run(["cat", "/workspace/AGENTS.md"])
    assert exit_code == 0 and agents_md.decode() == "Be brief."

    input_id = await harness.client.send_input(worker_id, "hello\nworld\n")
    events = await harness.events_until_done(worker_id, input_id=input_id)
    mine = [e for e in events if e.get("input_id") == input_id]
    stdout = [e["content"] for e in mine if e["type"] == "stdout"]
    assert stdout == ["hello", "world"]
    assert mine[-1]["type"] == "done" and mine[-1]["content"] == "0"
    assert all(e["timestamp"].endswith("Z") for e in mine)

    status = await harness.client.request("status", worker_id=worker_id)
    assert status.ok and status.status == "RUNNING" and not status.ip_address

    deleted = await harness.client.request("delete", worker_id=worker_id)
    assert deleted.ok and deleted.status == "STOPPED"
    assert harness.container(worker_id) is None
    record = await harness.redis.hgetall(harness.keys.worker(worker_id))
    assert record["status"] == "STOPPED" and record["reason"] == "deleted"
    assert record["stopped_at"].endswith("Z")
    transitions = [
        (f["from"], f["to"])
        for _id, f in await harness.redis.xrange(harness.keys.lifecycle)
        if f["worker_id"] == worker_id
    ]
    assert transitions == [("", "STARTING"), ("STARTING", "RUNNING"), ("RUNNING", "STOPPED")]

    # Deleting again is harmless and says so; the live set no longer counts it.
    again = await harness.client.request("delete", worker_id=worker_id)
    assert again.ok and again.status == "STOPPED"
    assert not await harness.redis.sismember(manager.store.live_key, worker_id)


async def test_same_shape_builds_once_and_prompt_is_delivered(harness: Harness) -> None:
    manager = await harness.start()
    first = await harness.client.request("create", agent_type="CUSTOM", agent_command=CAT)
    assert first.worker_id
    assert await harness.wait_status(first.worker_id, "RUNNING", "FAILED") == "RUNNING"
    builds = manager.images.builds

    second = await harness.client.request(
        "create",
        agent_type="CUSTOM",
        agent_command=json.dumps(["cat", "-n"]),
        prompt="first words",
    )
    assert second.worker_id
    assert await harness.wait_status(second.worker_id, "RUNNING", "FAILED") == "RUNNING"
    assert manager.images.builds == builds, "the second create of one shape must not build"
    events = await harness.events_until_done(second.worker_id)
    assert any(e["type"] == "stdout" and "first words" in e["content"] for e in events)
    one = await harness.redis.hget(harness.keys.worker(first.worker_id), "image_hash")
    two = await harness.redis.hget(harness.keys.worker(second.worker_id), "image_hash")
    assert one == two
    for worker_id in (first.worker_id, second.worker_id):
        assert (await harness.client.request("delete", worker_id=worker_id)).ok


async def test_agent_exit_code_is_reported(harness: Harness) -> None:
    await harness.start()
    reply = await harness.client.request(
        "create", agent_type="CUSTOM", agent_command=json.dumps(["sh", "-c", "echo oops; exit 3"])
    )
    assert reply.worker_id
    await harness.wait_status(reply.worker_id, "RUNNING")
    input_id = await harness.client.send_input(reply.worker_id, "go")
    events = await harness.events_until_done(reply.worker_id, input_id=input_id)
    assert [e["content"] for e in events if e["type"] == "stdout"] == ["oops"]
    assert events[-1]["content"] == "3"
    # The worker itself keeps running: one failed run is not a failed worker.
    assert (await harness.client.request("status", worker_id=reply.worker_id)).status == "RUNNING"
    await harness.client.request("delete", worker_id=reply.worker_id)


async def test_container_killed_from_outside_turns_failed(harness: Harness) -> None:
    await harness.start()
    reply = await harness.client.request("create", agent_type="CUSTOM", agent_command=CAT)
    assert reply.worker_id
    await harness.wait_status(reply.worker_id, "RUNNING")
    harness.container(reply.worker_id).kill()
    assert await harness.wait_status(reply.worker_id, "FAILED", "STOPPED") == "FAILED"
    record = await harness.redis.hgetall(harness.keys.worker(reply.worker_id))
    assert record["exit_code"] == "137"
    assert "137" in record["reason"]
    await harness.wait_container_gone(reply.worker_id)  # an ended container is removed
