"""The image collector against the real Docker Engine and Redis, on tiny images it makes itself.

Every image here is labelled with the test's own key prefix, so the collector (which only
removes its own deployment's images) never looks at another session's images.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime

import docker
import docker.errors
import pytest
from redis.asyncio import Redis

from worker_manager.contract.labels import LABEL_HASH, LABEL_PREFIX
from worker_manager.images.gc_execute import Collector
from worker_manager.images.gc_plan import Row
from worker_manager.settings import Settings

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.build]

DAY = 86_400


def new_hash() -> str:
    return hashlib.sha256(uuid.uuid4().bytes).hexdigest()


class Images:
    """Makes small labelled images (and containers using them); removes what survives."""

    def __init__(self, client: docker.DockerClient, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.tags: list[str] = []
        self.containers: list[str] = []

    def make(
        self, image_hash: str | None = None, *, prefix: str | None = None, blob: int = 0
    ) -> tuple[str, str]:
        """``worker:<hash>`` FROM the base image; ``blob`` bytes of its own if asked."""
        image_hash = image_hash or new_hash()
        lines = [f"FROM {self.settings.base_image}"]
        if blob:
            lines.append(f"RUN head -c {blob} /dev/urandom > /blob-{image_hash[:12]}")
        dockerfile = "\n".join(lines) + "\n"
        tag = f"worker:{image_hash}"
        image, _logs = self.client.images.build(
            fileobj=io.BytesIO(dockerfile.encode()),
            tag=tag,
            labels={LABEL_HASH: image_hash, LABEL_PREFIX: prefix or self.settings.key_prefix},
            rm=True,
            forcerm=True,
            nocache=bool(blob),  # each blob image its own, even for one hash twice
        )
        self.tags.append(tag)
        return image_hash, str(image.id)

    def use(self, tag: str) -> str:
        """A created, never started container: stopped but not removed."""
        container = self.client.containers.create(
            tag, ["true"], labels={"worker-manager.test": self.settings.key_prefix}
        )
        self.containers.append(str(container.id))
        return str(container.id)

    def exists(self, ref: str) -> bool:
        try:
            self.client.images.get(ref)
        except docker.errors.ImageNotFound:
            return False
        return True

    def cleanup(self) -> None:
        for container_id in self.containers:
            with contextlib.suppress(docker.errors.NotFound):
                self.client.containers.get(container_id).remove(force=True)
        for tag in self.tags:
            with contextlib.suppress(docker.errors.ImageNotFound):
                self.client.images.remove(tag)


@pytest.fixture
def images(docker_client: docker.DockerClient, settings: Settings) -> Iterator[Images]:
    made = Images(docker_client, settings)
    try:
        yield made
    finally:
        made.cleanup()


@pytest.fixture
def collector(settings: Settings, redis: Redis, docker_client: docker.DockerClient) -> Collector:
    # The build cache is engine-wide, shared with other sessions: tests never prune it, except
    # the one test below that prunes only what is older than ten years.
    return Collector(settings, redis, docker_client, prune_build_cache=False)


async def record(redis: Redis, settings: Settings, image_hash: str, age: float) -> float:
    used = time.time() - age
    await redis.zadd(settings.keys.images, {image_hash: int(used)})
    await redis.hset(settings.keys.image(image_hash), mapping={"tag": f"worker:{image_hash}"})
    return used


def row_of(rows: list[Row], image_hash: str) -> Row:
    return next(r for r in rows if r.hash == image_hash and r.tag != "<none>")


async def test_old_image_goes_recent_stays(
    images: Images, collector: Collector, redis: Redis, settings: Settings
) -> None:
    old, old_id = await asyncio.to_thread(images.make)
    recent, _ = await asyncio.to_thread(images.make)
    await record(redis, settings, old, 8 * DAY)
    await record(redis, settings, recent, 1 * DAY)

    report = await collector.run()

    assert not report.errors
    assert report.skipped is None
    assert row_of(report.rows, old).action == "remove"
    assert "unused for 8.0 d" in row_of(report.rows, old).reason
    assert row_of(report.rows, recent).action == "keep"
    assert old_id in report.removed
    assert not images.exists(f"worker:{old}")
    assert not images.exists(old_id)
    assert await redis.zscore(settings.keys.images, old) is None
    assert not await redis.exists(settings.keys.image(old))
    assert images.exists(f"worker:{recent}")
    assert await redis.zscore(settings.keys.images, recent) is not None
    assert await redis.exists(settings.keys.image(recent))
    assert not await redis.exists(settings.keys.gc_lock), "the lock is released after a run"


async def test_in_use_image_stays_and_dry_run_removes_nothing(
    images: Images, redis: Redis, settings: Settings
) -> None:
    used, used_id = await asyncio.to_thread(images.make)
    idle, idle_id = await asyncio.to_thread(images.make)
    await record(redis, settings, used, 30 * DAY)
    await record(redis, settings, idle, 30 * DAY)
    container_id = await asyncio.to_thread(images.use, f"worker:{used}")

    env = {
        **os.environ,
        "WM_REDIS_URL": settings.redis_url,
        "WM_KEY_PREFIX": settings.key_prefix,
        "WM_GC_PRUNE_BUILD_CACHE": "false",
        "WM_LOG_LEVEL": "warning",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker_manager",
        "gc",
        "--dry-run",
        "--json",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    plan = json.loads(out)
    rows = {r["hash"]: r for r in plan["images"]}
    assert plan["dry_run"] is True
    assert rows[used]["action"] == "keep"
    assert "in use by 1 container" in rows[used]["reason"]
    assert rows[idle]["action"] == "remove"
    assert "unused for 30.0 d" in rows[idle]["reason"]

    # Nothing changed: both images and both records are still there.
    assert images.exists(used_id)
    assert images.exists(idle_id)
    assert await redis.zscore(settings.keys.images, idle) is not None
    assert await redis.exists(settings.keys.image(idle))

    # The readable table says the same.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker_manager",
        "gc",
        "--dry-run",
        env={**env, "COLUMNS": "250"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert "in use by 1 container" in text
    assert "dry run:" in text
    assert "to remove" in text

    # A real run keeps the used image, removes the idle one.
    report = await Collector(settings, redis, images.client, prune_build_cache=False).run()
    assert images.exists(used_id)
    assert not images.exists(idle_id)
    assert row_of(report.rows, used).action == "keep"
    await asyncio.to_thread(images.client.containers.get(container_id).remove, force=True)


async def test_unrecorded_labelled_image_is_adopted(
    images: Images, collector: Collector, redis: Redis, settings: Settings
) -> None:
    mine, mine_id = await asyncio.to_thread(images.make)
    theirs, theirs_id = await asyncio.to_thread(images.make, prefix=f"{settings.key_prefix}-other")
    created = images.client.images.get(mine_id).attrs["Created"]

    plan = await collector.run(dry_run=True)
    row = row_of(plan.rows, mine)
    assert row.adopted
    assert row.action == "keep"
    assert "adopted" in row.reason
    assert all(r.hash != theirs for r in plan.rows), "another deployment's image is not ours"
    assert await redis.zscore(settings.keys.images, mine) is None, "a dry run writes nothing"

    await collector.run()
    score = await redis.zscore(settings.keys.images, mine)
    assert score is not None
    assert score == int(datetime.fromisoformat(created[:19] + "+00:00").timestamp())
    saved = await redis.hgetall(settings.keys.image(mine))
    assert saved["image_id"] == mine_id
    assert saved["adopted_by"] == settings.manager_id
    assert saved["built_at"].endswith("Z")

    # Another deployment's image stays even when our own record of it is old.
    await record(redis, settings, theirs, 30 * DAY)
    report = await collector.run()
    assert row_of(report.rows, theirs).action == "keep"
    assert "built by deployment" in row_of(report.rows, theirs).reason
    assert images.exists(theirs_id)


async def test_stale_records_and_dangling_images_go(
    images: Images, collector: Collector, redis: Redis, settings: Settings
) -> None:
    ghost = new_hash()
    await record(redis, settings, ghost, 1 * DAY)
    # Rebuilding a tag with other content leaves the first image dangling, still labelled.
    shape = new_hash()
    _, first_id = await asyncio.to_thread(images.make, shape, blob=1000)
    _, second_id = await asyncio.to_thread(images.make, shape, blob=1000)
    assert first_id != second_id
    await record(redis, settings, shape, 1 * DAY)

    report = await collector.run()

    assert row_of(report.rows, ghost).action == "forget"
    assert await redis.zscore(settings.keys.images, ghost) is None
    assert not await redis.exists(settings.keys.image(ghost))
    assert first_id in report.removed
    assert not images.exists(first_id)
    assert images.exists(second_id)


async def test_disk_budget_removes_least_recently_used(
    images: Images, collector: Collector, redis: Redis, settings: Settings
) -> None:
    hashes = []
    for hours in (3, 2, 1):
        image_hash, _ = await asyncio.to_thread(images.make, blob=100_000)
        await record(redis, settings, image_hash, hours * 3600)
        hashes.append(image_hash)
    report = await collector.run(budget_bytes=150_000)
    actions = [row_of(report.rows, h).action for h in hashes]
    assert actions == ["remove", "remove", "keep"], report.rows
    assert "disk budget" in row_of(report.rows, hashes[0]).reason
    assert [images.exists(f"worker:{h}") for h in hashes] == [False, False, True]


async def test_build_cache_prune_call_is_accepted(
    settings: Settings, redis: Redis, docker_client: docker.DockerClient
) -> None:
    """The engine takes the ``until`` filter (ten years: prunes nothing anyone could miss)."""
    report = await Collector(settings, redis, docker_client, prune_build_cache=True).run(
        max_age_seconds=3650 * DAY
    )
    assert not report.errors, report.errors
    assert report.build_cache_bytes is not None


async def test_one_collector_at_a_time_and_a_dead_holder_frees_the_lock(
    collector: Collector, redis: Redis, settings: Settings
) -> None:
    holder = (
        "import asyncio, sys\n"
        "from redis.asyncio import Redis\n"
        "from worker_manager.core.locks import RenewedLock\n"
        "async def main():\n"
        "    r = Redis.from_url(sys.argv[1], decode_responses=True)\n"
        "    lock = RenewedLock(r, sys.argv[2], ttl_seconds=2, owner='doomed')\n"
        "    assert await lock.acquire()\n"
        "    print('held', flush=True)\n"
        "    await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        holder,
        settings.redis_url,
        settings.keys.gc_lock,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"held\n"
        busy = await collector.run()
        assert busy.skipped
        assert "doomed" in busy.skipped
        assert not busy.rows

        # Renewed: the lock outlives its 2 s TTL while the holder lives.
        first_token = await redis.get(settings.keys.gc_lock)
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            assert proc.returncode is None
            assert await redis.get(settings.keys.gc_lock) == first_token
            await asyncio.sleep(0.25)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.wait()
    # Killed: the lock expires within its TTL and the next collector runs.
    started = time.monotonic()
    while await redis.exists(settings.keys.gc_lock):
        assert time.monotonic() - started < 3, "a dead holder's lock did not expire"
        await asyncio.sleep(0.05)
    report = await collector.run()
    assert report.skipped is None
    assert not await redis.exists(settings.keys.gc_lock)


async def test_gc_over_a_thousand_records(
    images: Images, collector: Collector, redis: Redis, settings: Settings
) -> None:
    """Most records kept: 1 000 tags of real images, used within the age; prints the time."""
    bases = [await asyncio.to_thread(images.make) for _ in range(4)]
    now = int(time.time())
    pipe = redis.pipeline(transaction=False)
    hashes = [new_hash() for _ in range(1000)]
    for i, image_hash in enumerate(hashes):
        _, image_id = bases[i % len(bases)]
        if i % 100 != 0:  # 990 kept (tagged, recent); 10 records of vanished images
            await asyncio.to_thread(images.client.api.tag, image_id, "worker", image_hash)
            images.tags.append(f"worker:{image_hash}")
        pipe.zadd(settings.keys.images, {image_hash: now - (i % 5) * DAY})
        pipe.hset(settings.keys.image(image_hash), mapping={"tag": f"worker:{image_hash}"})
    await pipe.execute()

    started = time.monotonic()
    plan = await collector.run(dry_run=True)
    dry = time.monotonic() - started
    started = time.monotonic()
    report = await collector.run()
    real = time.monotonic() - started
    print(f"\ngc over 1000 records: dry run {dry:.3f}s, real run {real:.3f}s")

    mine = [r for r in plan.rows if r.hash in set(hashes)]
    assert len(mine) == 1000
    assert sum(r.action == "keep" for r in mine) == 990
    assert sum(r.action == "forget" for r in mine) == 10
    assert not report.errors
    assert await redis.zcard(settings.keys.images) >= 990
    assert dry < 5.0
