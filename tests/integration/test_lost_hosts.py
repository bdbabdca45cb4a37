"""The survivors judge a dead manager's workers (SPEC §3 ``host_lost``), from Redis alone.

Real Redis (the Lua guard runs there); the container runtime and the ACL are stand-ins that
record what was asked of them: judging another host's worker must never touch Docker. The
Docker hosts themselves are lost for real in ``test_multi_host.py``.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from worker_base.clock import iso_from_unix
from worker_manager.contract.kinds import WorkerStatus
from worker_manager.contract.reasons import Ended, Moved
from worker_manager.settings import Settings
from worker_manager.workers.fleet.lost_hosts import LostHosts
from worker_manager.workers.resources.tasks import WorkerTasks
from worker_manager.workers.state.records import CreateResult, WorkerStore
from worker_manager.workers.transitions.lifecycle import Lifecycle, Outcome

pytestmark = [pytest.mark.redis]


class Steps:
    """What a lifecycle asked of Docker, the ACL and the egress service, in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def remove(self, worker_id: str, **_: object) -> int | None:
        self.calls.append(f"remove {worker_id}")
        return None

    async def delete(self, worker_id: str) -> None:
        self.calls.append(f"acl-delete {worker_id}")

    async def release(self, worker_id: str) -> None:
        self.calls.append(f"egress-release {worker_id}")


def as_manager(settings: Settings, manager_id: str) -> Settings:
    # Short TTLs: the judge waits a presence TTL and a heartbeat TTL after its own start.
    return settings.model_copy(
        update={
            "manager_id": manager_id,
            "presence_ttl_seconds": 2,
            "heartbeat_ttl_seconds": 2,
            "heartbeat_interval_seconds": 0.5,
        }
    )


class Fleet:
    """Records of a dead manager (``dead``) and judges for the living ones."""

    def __init__(self, settings: Settings, redis: Redis, raw: Redis) -> None:
        self.settings, self.redis, self.raw = settings, redis, raw
        self.dead = as_manager(settings, f"{settings.manager_id}-dead")
        self.store = WorkerStore(redis, self.dead)
        self.steps = Steps()

    async def worker(self, status: WorkerStatus, *, owner: str = "") -> str:
        worker_id = f"w-{secrets.token_hex(4)}"
        created = await self.store.create(
            worker_id,
            request_id=f"r-{worker_id}",
            fields={"agent_type": "CUSTOM"},
            spec={},
            prompt=None,
            max_live=0,
            owner=owner,
        )
        assert created.result is CreateResult.CREATED
        if status is WorkerStatus.RUNNING:
            moved = await self.store.transition(
                worker_id, WorkerStatus.RUNNING, Moved.READY, allowed_from=(WorkerStatus.STARTING,)
            )
            assert moved.changed
        return worker_id

    async def beat(self, worker_id: str) -> None:
        keys = self.settings.keys
        await self.redis.set(keys.heartbeat(worker_id), iso_from_unix(0), ex=30)

    async def announce_dead(self) -> None:
        """The dead manager announced itself once; its presence key has expired since."""
        await self.redis.sadd(self.settings.keys.managers, self.dead.manager_id)

    def judge(self, name: str) -> LostHosts:
        settings = as_manager(self.settings, f"{self.settings.manager_id}-{name}")
        store = WorkerStore(self.redis, settings)
        lifecycle = Lifecycle(
            store,
            cast(Any, self.steps),
            cast(Any, self.steps),
            WorkerTasks("provision"),
            cast(Any, self.steps),
        )
        return LostHosts(settings, self.redis, self.raw, lifecycle)

    async def status(self, worker_id: str) -> tuple[str, str]:
        record = await self.redis.hmget(self.settings.keys.worker(worker_id), "status", "reason")
        return str(record[0]), str(record[1] or "")

    async def lifecycle_of(self, worker_id: str) -> list[dict[str, str]]:
        entries = await self.redis.xrange(self.settings.keys.lifecycle)
        return [f for _id, f in entries if f["worker_id"] == worker_id]


@pytest.fixture
async def fleet(settings: Settings, redis: Redis) -> Any:
    raw = Redis.from_url(settings.redis_url, decode_responses=False)
    try:
        yield Fleet(settings, redis, raw)
    finally:
        await raw.aclose()


async def judged(fleet: Fleet, judges: list[LostHosts], worker_id: str, timeout: float) -> None:
    """Rounds of every judge until the worker has ended (each judge first waits out its own
    start-up quiet), or the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (await fleet.status(worker_id))[0] not in ("FAILED", "STOPPED"):
        assert loop.time() < deadline, f"{worker_id} not judged within {timeout}s"
        await asyncio.gather(*(j.round() for j in judges))
        await asyncio.sleep(0.1)


async def test_a_dead_managers_silent_workers_are_host_lost_once(fleet: Fleet) -> None:
    silent = await fleet.worker(WorkerStatus.RUNNING, owner="team-a")
    starting = await fleet.worker(WorkerStatus.STARTING)
    beating = await fleet.worker(WorkerStatus.RUNNING)
    await fleet.beat(beating)
    await fleet.announce_dead()
    keys = fleet.settings.keys
    assert await fleet.redis.sismember(keys.owner_live("team-a"), silent)

    judges = [fleet.judge("a"), fleet.judge("b"), fleet.judge("c")]  # three survivors at once
    await judged(fleet, judges, silent, timeout=30)
    await judged(fleet, judges, starting, timeout=5)
    for worker_id in (silent, starting):
        assert await fleet.status(worker_id) == ("FAILED", "host_lost")
        entries = await fleet.lifecycle_of(worker_id)
        assert [(e["to"], e["reason"]) for e in entries][-1] == ("FAILED", "host_lost")
        assert sum(e["to"] == "FAILED" for e in entries) == 1  # one transition, one count
        assert fleet.steps.calls.count(f"acl-delete {worker_id}") == 1
    # Never a Docker call for another host's worker, nor its egress grant (that host's).
    assert not [c for c in fleet.steps.calls if not c.startswith("acl-delete")]
    # Its slot and its owner's quota are freed; the beating worker keeps both.
    live = await fleet.redis.smembers(keys.live(fleet.dead.manager_id))
    assert live == {beating}
    assert not await fleet.redis.sismember(keys.owner_live("team-a"), silent)
    assert await fleet.status(beating) == ("RUNNING", "")
    assert await fleet.redis.sismember(keys.managers, fleet.dead.manager_id)  # still judged

    # Its heartbeats stop too: judged the next round, and the dead manager is then forgotten.
    await fleet.redis.delete(keys.heartbeat(beating))
    await judged(fleet, judges, beating, timeout=5)
    assert await fleet.status(beating) == ("FAILED", "host_lost")
    await asyncio.gather(*(j.round() for j in judges))
    assert not await fleet.redis.sismember(keys.managers, fleet.dead.manager_id)


async def test_a_manager_that_is_alive_or_back_is_never_overruled(fleet: Fleet) -> None:
    keys = fleet.settings.keys
    worker_id = await fleet.worker(WorkerStatus.RUNNING)
    await fleet.announce_dead()
    judge = fleet.judge("a")
    # The owner came back between a survivor's read and its verdict: the guard refuses.
    await fleet.redis.set(keys.manager(fleet.dead.manager_id), "{}", ex=30)
    lifecycle = judge._lifecycle  # the verdict exactly as the judge gives it
    lost = Outcome(Ended.HOST_LOST)
    assert not await lifecycle.end(worker_id, lost, on_this_host=False, only_if_owner_gone=True)
    # So does a heartbeat that came back.
    await fleet.redis.delete(keys.manager(fleet.dead.manager_id))
    await fleet.beat(worker_id)
    assert not await lifecycle.end(worker_id, lost, on_this_host=False, only_if_owner_gone=True)
    assert await fleet.status(worker_id) == ("RUNNING", "")
    assert fleet.steps.calls == []  # no Redis user taken from a worker that was not judged

    # A live owner's silent worker is its owner's to judge (heartbeat_lost), not the others'.
    await fleet.redis.delete(keys.heartbeat(worker_id))
    await fleet.redis.set(keys.manager(fleet.dead.manager_id), "{}", ex=30)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + judge.settle_seconds + 3
    while loop.time() < deadline:
        await judge.round()
        await asyncio.sleep(0.2)
    assert await fleet.status(worker_id) == ("RUNNING", "")


async def test_a_judge_back_from_its_own_outage_waits_before_judging(fleet: Fleet) -> None:
    worker_id = await fleet.worker(WorkerStatus.RUNNING)
    await fleet.announce_dead()
    judge = fleet.judge("a")
    await judged(fleet, [judge], worker_id, timeout=30)  # past its start-up quiet: it judges

    other = await fleet.worker(WorkerStatus.RUNNING)
    await fleet.announce_dead()  # forgotten once it had nothing left: here it is again
    judge._outage = True  # as a failed round leaves it (Redis unreachable)
    loop = asyncio.get_running_loop()
    back = loop.time()
    await judged(fleet, [judge], other, timeout=30)
    # Not before the others' presence and the wrappers' heartbeats had their chance.
    assert loop.time() - back >= judge.settle_seconds - 0.5
