"""A Redis that fails over (SPEC §6 ``redis+sentinel://``): the manager and a worker ride it out.

Real processes throughout: a primary, a replica and three sentinels (tests/support/sentinel.py),
a manager configured with the Sentinel URL, a worker container whose wrapper reaches Redis
through the egress service's relay (which asks the sentinels where the primary is per
connection) or, uncontained, asks the sentinels itself. The primary is killed (SIGKILL) while
status commands stream in.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator

import aiohttp
import docker
import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tests.support.flows import Harness
from tests.support.sentinel import SentinelGroup
from worker_base.redis_urls import client_for
from worker_manager.contract.labels import LABEL_PREFIX, LABEL_WORKER
from worker_manager.core.durability import replicated
from worker_manager.settings import Settings

pytestmark = [pytest.mark.docker, pytest.mark.redis]

CAT = json.dumps(["cat"])


@pytest.fixture(params=["on", "off"], ids=["relayed", "uncontained"])
async def harness(
    request: pytest.FixtureRequest,
    sentinel_group: SentinelGroup,
    settings: Settings,
    docker_client: docker.DockerClient,
) -> AsyncIterator[Harness]:
    """``relayed``: the wrapper reaches Redis through the egress service, which asks the
    sentinels; ``uncontained`` (WM_EGRESS=off): the wrapper asks the sentinels itself."""
    s = settings.model_copy(
        update={
            "redis_url": sentinel_group.url(),
            "worker_redis_url": None,
            "http_addr": "127.0.0.1:0",
            "egress": request.param,
            "reconcile_interval_seconds": 2.0,
            # Creates and deletes wait for the replica (until it is the primary: then the
            # wait times out, 200 ms, and the reply goes anyway, with a warning).
            "redis_wait_replicas": 1,
            "redis_wait_timeout_ms": 200,
        }
    )
    # The test's own client follows the failover too, with the manager's retry policy (a few
    # retries: redis-py nests its connect retries inside its command retries, so a long policy
    # keeps retrying the old primary's address long after the sentinels name the new one).
    redis = client_for(
        s.redis_url,
        decode_responses=True,
        socket_timeout=2,
        socket_connect_timeout=1,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    h = Harness(s, redis, docker_client)
    try:
        yield h
    finally:
        await h.close()
        await redis.aclose()


class CommandLoad:
    """Status commands every 50 ms and a create every second, from a producer that retries what
    an outage refuses; every command whose XADD was acknowledged is remembered with its kind
    and the time it was sent."""

    def __init__(self, redis: Redis, harness: Harness, worker_id: str) -> None:
        self.redis = redis
        self.keys = harness.keys
        self.worker_id = worker_id
        self.reply_to = f"{harness.keys.replies}:sentinel-test"
        self.sent: dict[str, float] = {}
        self.creates: set[str] = set()
        self.stop = asyncio.Event()

    async def run(self) -> None:
        tick = 0
        while not self.stop.is_set():
            request_id = uuid.uuid4().hex
            body = {"request_id": request_id, "reply_to": self.reply_to}
            if tick % 20 == 0:
                body |= {"command": "create", "agent_type": "CUSTOM", "agent_command": CAT}
            else:
                body |= {"command": "status", "worker_id": self.worker_id}
            try:
                await self.redis.xadd(self.keys.commands, body)
                self.sent[request_id] = time.monotonic()
                if body["command"] == "create":
                    self.creates.add(request_id)
            except (RedisError, OSError):
                pass  # refused during the outage: the producer's to retry, never acknowledged
            tick += 1
            await asyncio.sleep(0.05)

    async def replies(self) -> dict[str, list[dict[str, str]]]:
        entries = await self.redis.xrange(self.reply_to)
        answers: dict[str, list[dict[str, str]]] = {}
        for _id, fields in entries:
            answers.setdefault(fields["request_id"], []).append(fields)
        return answers

    async def commands_held(self) -> set[str]:
        entries = await self.redis.xrange(self.keys.commands)
        return {f["request_id"] for _id, f in entries if f.get("reply_to") == self.reply_to}


async def test_a_primary_killed_under_load_is_ridden_out(
    sentinel_group: SentinelGroup, harness: Harness
) -> None:
    manager = await harness.start(http=True)
    assert manager.http is not None
    created = await harness.client.create(agent_type="CUSTOM", agent_command=CAT)
    assert created.ok and created.worker_id, created
    worker_id = created.worker_id
    assert await harness.wait_status(worker_id, "RUNNING", "FAILED") == "RUNNING"
    await harness.client.send_input(worker_id, "before the failover")
    await harness.events_until(worker_id, lambda f: "before the failover" in f.get("content", ""))

    load = CommandLoad(harness.redis, harness, worker_id)
    loader = asyncio.create_task(load.run())
    try:
        await _until(lambda: _answered_some(load), "status answered before the kill", 30)
        old = await asyncio.to_thread(sentinel_group.kill_primary)
        killed_at = time.monotonic()
        new = await asyncio.to_thread(sentinel_group.wait_failover, old)
        assert new is not old

        # The first command sent after the kill that is answered: the service is back.
        first = await _first_answer_after(load, killed_at, timeout=60)
        # More traffic on the new primary, then let the manager finish what it holds.
        await asyncio.sleep(1.0)  # a second more of load (pacing, not synchronisation)
    finally:
        load.stop.set()
        await loader

    held = await load.commands_held()
    await _until(lambda: _all_answered(load, held), "every held command answered", 60)
    replies = await load.replies()
    twice = {r: len(a) for r, a in replies.items() if len(a) != 1}
    assert not twice, f"answered more than once: {twice}"
    assert held <= set(replies)
    lost = set(load.sent) - held  # acknowledged by the old primary, never copied
    print(
        f"failover: first answer {first - killed_at:.2f} s after the kill; "
        f"{len(held)} commands held, all answered once; {len(lost)} lost with the old primary"
    )
    # Every create the new primary holds made one worker with one container, and no container
    # is left without a live record (a create lost with the old primary is an orphan removed).
    created_ids = set()
    for request_id in held & load.creates:
        answer = replies[request_id][0]
        assert answer["ok"] == "true", answer
        created_ids.add(answer["worker_id"])
    for created_id in created_ids:
        assert await harness.wait_status(created_id, "RUNNING", "FAILED") == "RUNNING"
    await _until(
        lambda: _containers_match_records(harness, {worker_id} | created_ids),
        "one container per live worker, no orphan",
        60,
    )

    # The worker: its Redis user is back on the new primary, its wrapper reconnected.
    await harness.client.send_input(worker_id, "after the failover")
    await harness.events_until(
        worker_id, lambda f: "after the failover" in f.get("content", ""), timeout=60
    )
    status = await harness.client.request("status", worker_id=worker_id)
    assert status.ok and status.status == "RUNNING"
    async with aiohttp.ClientSession() as http:
        await _until(lambda: _ready(http, manager.http.url), "/readyz 200", 30)

    for each in {worker_id} | created_ids:
        deleted = await harness.client.request("delete", worker_id=each, timeout=60)
        assert deleted.ok and deleted.status == "STOPPED"


async def _answered_some(load: CommandLoad) -> bool:
    return bool(await load.replies())


async def _containers_match_records(harness: Harness, live: set[str]) -> bool:
    def listed() -> set[str]:
        found = harness.docker.containers.list(
            all=True, filters={"label": f"{LABEL_PREFIX}={harness.settings.key_prefix}"}
        )
        return {c.labels[LABEL_WORKER] for c in found}

    return await asyncio.to_thread(listed) == live


async def _first_answer_after(load: CommandLoad, after: float, timeout: float) -> float:
    """When the first reply to a command sent after ``after`` was seen (polled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            replies = await load.replies()
        except (RedisError, OSError):
            replies = {}
        if any(load.sent.get(r, 0) > after for r in replies):
            return time.monotonic()
        await asyncio.sleep(0.05)
    raise AssertionError(f"no command sent after the kill was answered within {timeout} s")


async def _all_answered(load: CommandLoad, held: set[str]) -> bool:
    return held <= set(await load.replies())


async def _ready(http: aiohttp.ClientSession, url: str) -> bool:
    async with http.get(f"{url}/readyz") as response:
        return response.status == 200


async def _until(check: object, what: str, timeout: float) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except (RedisError, OSError, aiohttp.ClientError):
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s")


async def test_wait_counts_the_replicas_that_hold_a_change(sentinel_group: SentinelGroup) -> None:
    """``WM_REDIS_WAIT_REPLICAS``' primitive: a marker written and waited for on one connection
    says every earlier write (on any connection) is on the replica; a frozen replica is not
    counted."""
    redis = client_for(sentinel_group.url(), decode_responses=True)
    other = client_for(sentinel_group.url(), decode_responses=True)
    replica = sentinel_group.nodes[1]
    try:
        await other.set("written-elsewhere", "1")
        assert await replicated(redis, "marker", 1, 5000) == 1
        with replica.client() as direct:
            assert direct.get("written-elsewhere") == "1"
        replica.signal(signal.SIGSTOP)
        try:
            await other.set("written-while-frozen", "1")
            assert await replicated(redis, "marker", 1, 300) == 0
        finally:
            replica.signal(signal.SIGCONT)
        assert await replicated(redis, "marker", 0, 300) == 0  # off: no round trip
    finally:
        await redis.aclose()
        await other.aclose()
