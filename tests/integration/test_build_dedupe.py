"""One build per new shape across managers, and a broken template that fails fast, once.

Two ``Manager`` instances in one event loop have separate ``ImageService`` objects (separate
in-process futures), so only the Redis lock per hash can keep them from both building.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from pathlib import Path

import docker
import docker.errors
import pytest

from tests.support.flows import Harness
from worker_manager.contract.kinds import AgentType
from worker_manager.service.manager import Manager

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.build]

CAT = json.dumps(["cat"])


def overlay(tmp_path: Path, body: str) -> Path:
    root = tmp_path / f"overlay-{uuid.uuid4().hex[:8]}"
    (root / "agents").mkdir(parents=True)
    (root / "agents" / "CUSTOM.Dockerfile").write_text(body)
    return root


def builds_run(*managers: Manager) -> int:
    """Builds these managers ran (failed ones too), from their own ``wm_image_builds`` counter."""
    total = 0.0
    for manager in managers:
        for result in ("miss", "failure"):
            value = manager.metrics.registry.get_sample_value(
                "wm_image_builds_total", {"result": result}
            )
            total += value or 0.0
    return int(total)


def tag_events(client: docker.DockerClient, tag: str, since: float) -> int:
    events = client.events(
        since=int(since) - 1,
        until=int(time.time()) + 1,
        filters={"type": "image", "event": "tag"},
        decode=True,
    )
    return sum(1 for e in events if (e.get("Actor") or {}).get("Attributes", {}).get("name") == tag)


async def test_two_managers_twenty_creates_one_build(harness: Harness, tmp_path: Path) -> None:
    shape = overlay(tmp_path, f"RUN echo {uuid.uuid4()} > /etc/wm-shape\n")
    first = await harness.start(images_overlay=shape)
    second = await harness.start(images_overlay=shape, manager_id=f"{harness.settings.manager_id}b")
    since = time.time()
    started = time.monotonic()

    async def create() -> str:
        reply = await harness.client.request("create", agent_type="CUSTOM", agent_command=CAT)
        assert reply.ok, reply
        assert reply.worker_id is not None
        return reply.worker_id

    # Both managers race on the hash directly too, so the cross-manager path is always taken.
    direct = [m.images.ensure(AgentType.CUSTOM, []) for m in (first, second) for _ in range(3)]
    results = await asyncio.gather(*(create() for _ in range(20)), *direct)
    worker_ids = [r for r in results if isinstance(r, str)]
    statuses = await asyncio.gather(
        *(harness.wait_status(w, "RUNNING", "FAILED", timeout=300) for w in worker_ids)
    )
    elapsed = time.monotonic() - started
    print(f"\n20 concurrent creates of one new shape: all RUNNING after {elapsed:.2f}s")

    assert statuses == ["RUNNING"] * 20
    assert builds_run(first, second) == 1
    assert first.images.builds + second.images.builds == 1
    image_hash = await harness.redis.hget(harness.keys.worker(worker_ids[0]), "image_hash")
    assert image_hash is not None
    tag = f"worker:{image_hash}"
    assert await asyncio.to_thread(tag_events, harness.docker, tag, since) == 1
    saved = await harness.redis.hgetall(harness.keys.image(image_hash))
    assert saved["built_by"] in {first.settings.manager_id, second.settings.manager_id}
    assert json.loads(saved["spec"])["agent_type"] == "CUSTOM"
    assert float(saved["build_seconds"]) > 0
    print(f"of which the one build took {float(saved['build_seconds']):.2f}s")
    assert await harness.redis.zscore(harness.keys.images, image_hash) is not None
    for worker_id in worker_ids:
        assert (await harness.client.request("delete", worker_id=worker_id)).ok


async def test_broken_template_fails_every_create_once(harness: Harness, tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    shape = overlay(
        tmp_path,
        f"RUN echo step-{marker} > /etc/wm-step\nRUN echo broken-{marker} && exit 3\n",
    )
    first = await harness.start(images_overlay=shape, build_failure_ttl_seconds=120)
    second = await harness.start(
        images_overlay=shape,
        build_failure_ttl_seconds=120,
        manager_id=f"{harness.settings.manager_id}b",
    )

    async def create_and_fail() -> str:
        reply = await harness.client.request("create", agent_type="CUSTOM", agent_command=CAT)
        assert reply.ok, reply
        assert reply.worker_id is not None
        assert await harness.wait_status(reply.worker_id, "FAILED", "RUNNING") == "FAILED"
        return str(await harness.redis.hget(harness.keys.worker(reply.worker_id), "reason"))

    reasons = await asyncio.gather(*(create_and_fail() for _ in range(6)))
    for reason in reasons:
        assert reason.startswith("build_failed")
        assert "non-zero code: 3" in reason
        assert f"broken-{marker}" in reason  # the build log's last lines
    assert builds_run(first, second) == 1

    # Within the negative cache's life, later creates fail at once without building again.
    later = await asyncio.gather(*(create_and_fail() for _ in range(4)))
    assert all(r.startswith("build_failed") for r in later)
    assert builds_run(first, second) == 1

    # The failed build left no dangling layer: the last good step's image is gone.
    steps = re.findall(r"^ ---> ([0-9a-f]{12})$", reasons[0], flags=re.MULTILINE)
    assert steps, reasons[0]
    with pytest.raises(docker.errors.ImageNotFound):
        await asyncio.to_thread(harness.docker.images.get, steps[-1])
