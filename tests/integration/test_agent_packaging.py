"""How agent CLIs get into images, and what the manager reads from a worker's heartbeat.

- FACTORY needs a droid from the operator (``WM_FACTORY_BINARY``) or the npm path
  (``WM_FACTORY_NPM_VERSION``); without either a create is refused at once, naming both.
- A CLAUDE build whose binary cannot be had fails with a reason naming the setting to fix.
- A heartbeat the wrapper would never write fails that worker alone (``heartbeat_invalid``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from tests.support.flows import Harness

pytestmark = [pytest.mark.docker, pytest.mark.redis]

FAKE_DROID = (Path(__file__).resolve().parents[1] / "fakes" / "droid").resolve()


async def test_factory_without_a_droid_is_refused_at_once(harness: Harness) -> None:
    await harness.start()
    reply = await harness.client.create(agent_type="FACTORY")
    assert not reply.ok and reply.error == "build_failed", reply
    assert reply.message is not None
    assert "WM_FACTORY_BINARY" in reply.message and "WM_FACTORY_NPM_VERSION" in reply.message
    assert await harness.redis.zcard(harness.keys.index) == 0  # nothing was recorded


async def test_factory_runs_the_droid_binary_the_operator_provides(harness: Harness) -> None:
    await harness.start(factory_binary=FAKE_DROID)
    reply = await harness.client.create(agent_type="FACTORY")
    assert reply.ok and reply.worker_id, reply
    status = await harness.wait_status(reply.worker_id, "RUNNING", "FAILED", timeout=300)
    assert status == "RUNNING"
    # The very file the operator named, copied into the image (no npm, no network).
    code, output = harness.container(reply.worker_id).exec_run(
        ["sha256sum", "/usr/local/bin/droid"]
    )
    assert code == 0
    assert output.split()[0].decode() == hashlib.sha256(FAKE_DROID.read_bytes()).hexdigest()
    input_id = await harness.client.send_input(reply.worker_id, "Say hello.")
    events = await harness.events_until_done(reply.worker_id, input_id=input_id, timeout=60)
    results = [json.loads(e["content"]) for e in events if e["type"] == "result"]
    assert results and results[-1]["is_error"] is False
    assert events[-1]["content"] == "0"


async def test_a_claude_binary_that_cannot_be_had_names_the_setting(
    harness: Harness, tmp_path: Path
) -> None:
    await harness.start(claude_sdk_version="0.0.1", agent_cache_dir=tmp_path / "cache")
    reply = await harness.client.create(agent_type="CLAUDE")
    assert reply.ok and reply.worker_id, reply
    status = await harness.wait_status(reply.worker_id, "FAILED", "RUNNING", timeout=300)
    reason = await harness.redis.hget(harness.keys.worker(reply.worker_id), "reason")
    assert status == "FAILED", reason
    assert reason.startswith("build_failed: ") and "WM_CLAUDE_SDK_VERSION" in reason, reason
    assert "WM_CLAUDE_BINARY" in reason
    assert "\x1b" not in reason


async def test_an_invalid_heartbeat_fails_that_worker_alone(harness: Harness) -> None:
    await harness.start()
    ids = []
    for _ in range(2):
        reply = await harness.client.create(agent_type="CUSTOM", agent_command=["cat"])
        assert reply.ok and reply.worker_id
        ids.append(reply.worker_id)
    for worker_id in ids:
        assert await harness.wait_status(worker_id, "RUNNING", "FAILED") == "RUNNING"
    victim, bystander = ids
    key = harness.keys.heartbeat(victim)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    # The worker's own key, written as the worker could: its wrapper keeps beating, so the
    # garbage is written until the watcher has judged it.
    while (await harness.redis.hget(harness.keys.worker(victim), "status")) == "RUNNING":
        assert loop.time() < deadline, "the invalid heartbeat was never judged"
        await harness.redis.set(key, "not a time at all", ex=30)
        await asyncio.sleep(0.05)
    record = await harness.redis.hgetall(harness.keys.worker(victim))
    assert record["status"] == "FAILED" and record["reason"] == "heartbeat_invalid", record
    await asyncio.sleep(1)  # a few more watcher rounds
    assert await harness.redis.hget(harness.keys.worker(bystander), "status") == "RUNNING"
