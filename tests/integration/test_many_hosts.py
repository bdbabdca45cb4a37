"""A fleet across real, separate Docker hosts (tests/support/testbed.py): each host its own
Docker Engine (Docker-in-Docker) and its own manager, all on the session's Redis.

Proven here: creates spread over the hosts; a host killed (Engine, manager and workers at once)
has its workers FAILED ``host_lost`` by the survivors and its capacity gone; a host cut off
from Redis and healed keeps one owner per worker and no orphan container.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import docker
import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tests.support.availability import unavailable
from tests.support.redis_server import RedisServer
from tests.support.sentinel import SentinelGroup
from tests.support.testbed import HOST_IMAGE_REPO, BedError, Host, Testbed, host_image
from worker_base.redis_urls import client_for
from worker_manager.client.requests import CommandClient
from worker_manager.contract.kinds import AgentType
from worker_manager.images.service import ImageService
from worker_manager.settings import BOOTSTRAP_BASE_TAG, Settings

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.build]

CAT = json.dumps(["cat"])
MAX_WORKERS = 2  # per host: creates spread because a full host leaves the stream to the others


@pytest.fixture(scope="module")
def testbed_image(docker_client: docker.DockerClient) -> Iterator[str]:
    """The host image, built for this module and removed after it."""
    base = os.environ.get("WM_BASE_IMAGE") or BOOTSTRAP_BASE_TAG
    try:
        tag = host_image(docker_client, base)
    except BedError as exc:
        unavailable(f"the multi-host test bed cannot be built here: {exc}")
    try:
        yield tag
    finally:
        for image in docker_client.images.list(name=HOST_IMAGE_REPO):
            docker_client.images.remove(str(image.id), force=True)


async def custom_image(settings: Settings, redis: Redis, client: docker.DockerClient) -> str:
    """The CUSTOM worker image, built on the outer Engine (once) to be moved into the hosts."""
    images = ImageService(settings, redis, client)
    return (await images.ensure(AgentType.CUSTOM, [])).tag


@pytest.fixture
async def bed_factory(
    settings: Settings,
    redis: Redis,
    redis_server: RedisServer,
    docker_client: docker.DockerClient,
    testbed_image: str,
) -> AsyncIterator[object]:
    beds: list[Testbed] = []

    async def make(count: int, redis_url: str | None = None) -> Testbed:
        """``count`` hosts on the session's Redis, or on ``redis_url`` (as the hosts see it)."""
        assert testbed_image
        tag = await custom_image(settings, redis, docker_client)
        url = redis_url or redis_server.worker_url
        bed = Testbed(
            docker_client,
            token=secrets.token_hex(3),
            base_image=settings.base_image,
            manager_id_prefix=settings.manager_id,
            manager_env={
                # The hosts reach Redis at the outer Engine's bridge gateway, like its workers.
                "WM_REDIS_URL": url,
                "WM_WORKER_REDIS_URL": url,
                "WM_KEY_PREFIX": settings.key_prefix,
                "WM_WORKER_SECRET": settings.worker_secret.get_secret_value(),
                "WM_BASE_IMAGE": settings.base_image,
                "WM_EGRESS": "off",
                "WM_MAX_WORKERS": str(MAX_WORKERS),
                "WM_CONTAINER_MEMORY": "256m",
                "WM_HEARTBEAT_INTERVAL_SECONDS": "0.5",
                "WM_HEARTBEAT_TTL_SECONDS": "3",
                "WM_WATCH_INTERVAL_SECONDS": "0.5",
                "WM_PRESENCE_TTL_SECONDS": "3",
                "WM_CLAIM_IDLE_MS": "1000",
                "WM_BLOCK_MS": "200",
                "WM_RECONCILE_INTERVAL_SECONDS": "2",
                "WM_LOG_LEVEL": "info",
            },
        )
        beds.append(bed)
        await asyncio.to_thread(bed.start, count, [tag])
        return bed

    try:
        yield make
    finally:
        for bed in beds:
            await asyncio.to_thread(bed.close)


async def create_placed(client: CommandClient, timeout: float = 180) -> str:
    """One create, re-sent after ``retry_after`` as a producer does; the new worker's id."""
    deadline = time.monotonic() + timeout
    while True:
        reply = await client.create(agent_type="CUSTOM", agent_command=CAT, timeout=120)
        if reply.ok and reply.worker_id:
            return reply.worker_id
        assert reply.error == "capacity_exceeded", reply
        assert time.monotonic() < deadline, "no room for a create on any host"
        await asyncio.sleep(float(reply.retry_after or 1))


async def wait_until(check: object, what: str, timeout: float = 60) -> float:
    """Poll ``check`` until true; the seconds it took."""
    assert callable(check)
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.2)
    return time.monotonic() - started


async def record(redis: Redis, settings: Settings, worker_id: str) -> dict[str, str]:
    return await redis.hgetall(settings.keys.worker(worker_id))  # type: ignore[no-any-return]


async def running_on(redis: Redis, settings: Settings, ids: list[str]) -> dict[str, str]:
    """Worker id → its owner, once each is RUNNING."""
    owners = {}
    for worker_id in ids:
        fields = await record(redis, settings, worker_id)
        assert fields.get("status") == "RUNNING", fields
        owners[worker_id] = fields["manager_id"]
    return owners


async def all_running(redis: Redis, settings: Settings, ids: list[str]) -> bool:
    for worker_id in ids:
        if (await record(redis, settings, worker_id)).get("status") != "RUNNING":
            return False
    return True


async def full_fleet(
    bed_factory: object, count: int, redis: Redis, settings: Settings, url: str | None = None
) -> tuple[Testbed, CommandClient, dict[str, str]]:
    """``count`` hosts, each filled to ``MAX_WORKERS`` RUNNING workers: the bed, a client, and
    each worker's owner."""
    assert callable(bed_factory)
    bed: Testbed = await (bed_factory(count, url) if url else bed_factory(count))
    client = CommandClient(redis, settings.keys)
    ids = [await create_placed(client) for _ in range(count * MAX_WORKERS)]
    await wait_until(lambda: all_running(redis, settings, ids), "all RUNNING", 120)
    return bed, client, await running_on(redis, settings, ids)


async def test_creates_spread_and_a_killed_host_is_judged_lost(
    bed_factory: object, settings: Settings, redis: Redis
) -> None:
    bed, client, owners = await full_fleet(bed_factory, 3, redis, settings)
    ids = list(owners)
    assert Counter(owners.values()) == {h.manager_id: MAX_WORKERS for h in bed.hosts}
    for host in bed.hosts:  # each worker's container is on its owner's host, and only there
        names = set(await asyncio.to_thread(host.worker_containers, settings.key_prefix))
        assert names == {
            f"{settings.key_prefix}-{w}" for w, m in owners.items() if m == host.manager_id
        }

    lost_host = bed.hosts[1]
    on_lost = [w for w, m in owners.items() if m == lost_host.manager_id]
    survivors = [w for w in ids if w not in on_lost]
    await asyncio.to_thread(bed.kill, lost_host)

    async def judged() -> bool:
        for worker_id in on_lost:
            fields = await record(redis, settings, worker_id)
            if (fields.get("status"), fields.get("reason")) != ("FAILED", "host_lost"):
                return False
        return True

    seconds = await wait_until(judged, "the lost host's workers FAILED host_lost", 60)
    print(
        f"host killed → its workers host_lost in {seconds:.1f} s (presence TTL 3 + heartbeat TTL 3)"
    )
    assert await all_running(redis, settings, survivors)
    assert not await redis.exists(settings.keys.manager(lost_host.manager_id))
    assert not await redis.scard(settings.keys.live(lost_host.manager_id))

    # Its capacity is gone: the fleet is full with the survivors' workers, so a create is
    # refused rather than left to a dead host; a slot freed on a survivor takes the next one.
    full = await client.create(agent_type="CUSTOM", agent_command=CAT, timeout=60)
    assert full.error == "capacity_exceeded", full
    freed = survivors[0]
    deleted = await client.request("delete", worker_id=freed, timeout=60)
    assert deleted.ok and deleted.status == "STOPPED", deleted
    placed = await create_placed(client)
    await wait_until(lambda: all_running(redis, settings, [placed]), "the new worker", 120)
    assert (await record(redis, settings, placed))["manager_id"] == owners[freed]


async def test_a_host_cut_off_and_healed_keeps_one_owner_and_no_orphan(
    bed_factory: object, settings: Settings, redis: Redis
) -> None:
    bed, client, owners = await full_fleet(bed_factory, 2, redis, settings)
    ids = list(owners)
    cut: Host = bed.hosts[1]
    on_cut = [w for w, m in owners.items() if m == cut.manager_id]
    kept = [w for w in ids if w not in on_cut]
    assert len(on_cut) == MAX_WORKERS

    await asyncio.to_thread(bed.cut_off, cut)
    try:

        async def judged() -> bool:
            for worker_id in on_cut:
                if (await record(redis, settings, worker_id)).get("reason") != "host_lost":
                    return False
            return True

        await wait_until(judged, "the cut-off host's workers judged host_lost", 60)
        # Its containers still run on it, unreachable: nobody else may remove them.
        assert len(await asyncio.to_thread(cut.worker_containers, settings.key_prefix)) == 2
    finally:
        await asyncio.to_thread(bed.heal, cut)

    # Back on the network: its manager fences what was judged (no orphan), nothing comes back.
    async def fenced() -> bool:
        return not await asyncio.to_thread(cut.worker_containers, settings.key_prefix)

    await wait_until(fenced, "the judged workers' containers removed on their host", 60)
    await wait_until(
        lambda: _present(redis, settings, cut.manager_id), "the healed manager present", 30
    )
    for worker_id in on_cut:
        fields = await record(redis, settings, worker_id)
        assert (fields["status"], fields["reason"]) == ("FAILED", "host_lost"), fields
    assert await all_running(redis, settings, kept)
    kept_host = bed.hosts[0]
    names = set(await asyncio.to_thread(kept_host.worker_containers, settings.key_prefix))
    assert names == {f"{settings.key_prefix}-{w}" for w in kept}
    # The healed host has room again and takes creates as before.
    placed = await create_placed(client)
    await wait_until(lambda: all_running(redis, settings, [placed]), "the new worker", 120)
    assert (await record(redis, settings, placed))["manager_id"] == cut.manager_id


async def _present(redis: Redis, settings: Settings, manager_id: str) -> bool:
    return bool(await redis.exists(settings.keys.manager(manager_id)))


async def test_a_redis_failover_is_ridden_out_by_every_host(
    bed_factory: object, settings: Settings, sentinel_group: SentinelGroup
) -> None:
    """Two hosts on a Redis behind Sentinel; the primary is killed: both managers and their
    (uncontained) workers follow the new primary, and nobody judges anybody lost."""
    redis = client_for(
        sentinel_group.url(),
        decode_responses=True,
        socket_timeout=2,
        socket_connect_timeout=1,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    try:
        url = sentinel_group.url(host=sentinel_group.announce)
        bed, client, owners = await full_fleet(bed_factory, 2, redis, settings, url)
        ids = list(owners)
        assert set(owners.values()) == {h.manager_id for h in bed.hosts}

        old = await asyncio.to_thread(sentinel_group.kill_primary)
        await asyncio.to_thread(sentinel_group.wait_failover, old)

        for worker_id in ids:  # each wrapper reconnected, with its user back on the new primary
            await client.send_input(worker_id, f"after the failover {worker_id}")
        for worker_id in ids:
            await wait_until(
                lambda w=worker_id: _echoed(redis, settings, w, f"after the failover {w}"),
                f"{worker_id} answers after the failover",
                90,
            )
        assert await all_running(redis, settings, ids)  # nobody judged lost
        for host in bed.hosts:
            assert await _present(redis, settings, host.manager_id)
        status = await client.request("status", worker_id=ids[0], timeout=60)
        assert status.ok and status.status == "RUNNING"
        deleted = await client.request("delete", worker_id=ids[0], timeout=60)
        assert deleted.ok and deleted.status == "STOPPED"
        placed = await create_placed(client)
        await wait_until(lambda: all_running(redis, settings, [placed]), "a create after", 120)
    finally:
        await redis.aclose()


async def _echoed(redis: Redis, settings: Settings, worker_id: str, text: str) -> bool:
    entries = await redis.xrange(settings.keys.output(worker_id))
    return any(text in fields.get("content", "") for _id, fields in entries)
