"""The per-tick pipeline batcher and the reply book on top of it (fakeredis)."""

from __future__ import annotations

import asyncio
from typing import Any

import fakeredis
import pytest
from redis.asyncio.client import Pipeline

from worker_manager.commands.batching import PipelineBatcher
from worker_manager.commands.replies import ReplyBook
from worker_manager.contract.reply import Reply
from worker_manager.core.keys import MANAGER_GROUP
from worker_manager.settings import Settings


class CountingRedis(fakeredis.aioredis.FakeRedis):
    """Counts the pipelines opened: one per round trip the batcher makes."""

    pipelines = 0

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        type(self).pipelines += 1
        return super().pipeline(transaction=transaction, shard_hint=shard_hint)


@pytest.fixture
def redis() -> CountingRedis:
    CountingRedis.pipelines = 0
    return CountingRedis(decode_responses=True)


async def test_stages_queued_behind_a_round_trip_share_one(
    redis: CountingRedis,
) -> None:
    batcher = PipelineBatcher(redis, transaction=True)

    def incr(key: str) -> Any:
        def stage(pipe: Pipeline) -> None:
            pipe.incr(key)
            pipe.get(key)

        return stage

    results = await asyncio.gather(*(batcher.run(incr(f"k{i % 3}")) for i in range(30)))
    # The first goes at once, alone; the 29 that came while it was out share the next one.
    assert CountingRedis.pipelines == 2
    assert sorted(int(value) for _n, value in results) == sorted(int(n) for n, _value in results)
    assert [await redis.get(f"k{i}") for i in range(3)] == ["10", "10", "10"]


async def test_an_error_fails_only_its_own_waiter(redis: CountingRedis) -> None:
    await redis.set("text", "not a stream")
    batcher = PipelineBatcher(redis, transaction=True)

    def stage(key: str) -> Any:
        return lambda pipe: pipe.xadd(key, {"a": "1"})

    outcomes: list[Any] = await asyncio.gather(
        batcher.run(stage("s")),
        batcher.run(stage("text")),
        batcher.run(lambda _pipe: 1 / 0),
        return_exceptions=True,
    )
    ok, bad, broken = outcomes
    assert isinstance(ok, list) and await redis.xlen("s") == 1
    assert "WRONGTYPE" in str(bad)
    assert isinstance(broken, ZeroDivisionError)


async def test_a_failed_round_trip_fails_every_waiter() -> None:
    server = fakeredis.FakeServer()
    redis = fakeredis.aioredis.FakeRedis(server=server, decode_responses=True)
    server.connected = False  # Redis is down: the one round trip fails
    batcher = PipelineBatcher(redis, transaction=True)
    outcomes = await asyncio.gather(
        *(batcher.run(lambda pipe: pipe.get("k")) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(outcome, Exception) for outcome in outcomes)


async def test_a_waiter_cancelled_before_its_turn_runs_nothing(redis: CountingRedis) -> None:
    batcher = PipelineBatcher(redis, transaction=True)
    leader = asyncio.create_task(batcher.run(lambda pipe: pipe.set("leader", "1")))
    await asyncio.sleep(0)  # the leader's round trip is out: the next ones queue behind it
    task = asyncio.create_task(batcher.run(lambda pipe: pipe.set("cancelled", "1")))
    kept = asyncio.create_task(batcher.run(lambda pipe: pipe.set("kept", "1")))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(leader, kept)
    assert await redis.get("kept") == "1" and await redis.get("cancelled") is None


async def test_finishes_of_one_tick_answer_and_ack_each_command_once(
    redis: CountingRedis,
) -> None:
    s = Settings(_env_file=None, key_prefix="u")  # type: ignore[call-arg]
    book = ReplyBook(redis, s)
    await redis.xgroup_create(s.keys.commands, MANAGER_GROUP, id="0", mkstream=True)
    for i in range(20):
        await redis.xadd(s.keys.commands, {"command": "list", "request_id": f"r{i}"})
    entries = await redis.xreadgroup(MANAGER_GROUP, "m", {s.keys.commands: ">"}, count=100)
    ids = [entry_id for entry_id, _fields in entries[0][1]]
    CountingRedis.pipelines = 0
    await asyncio.gather(
        *(
            book.finish(
                entry_id,
                Reply(request_id=f"r{i}", command="list", ok=True, workers=[]),
                f"u:replies:c{i % 4}",
                remember_seconds=60,
            )
            for i, entry_id in enumerate(ids)
        )
    )
    assert CountingRedis.pipelines == 2  # the first alone, then the 19 others together
    assert (await redis.xpending(s.keys.commands, MANAGER_GROUP))["pending"] == 0
    assert sum([await redis.xlen(f"u:replies:c{c}") for c in range(4)]) == 20
    assert all([await redis.ttl(f"u:replies:c{c}") > 0 for c in range(4)])
    stored = await redis.get(s.keys.request("r7"))
    assert stored is not None and Reply.model_validate_json(stored).request_id == "r7"


class SpyingRedis(fakeredis.aioredis.FakeRedis):
    """Records, for each round trip, whether it went as a MULTI/EXEC."""

    multi: list[bool] = []

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction=transaction, shard_hint=shard_hint)
        execute = pipe.execute

        async def spied(raise_on_error: bool = True) -> Any:
            type(self).multi.append(pipe.is_transaction)
            return await execute(raise_on_error=raise_on_error)

        pipe.execute = spied
        return pipe


async def test_a_batch_of_one_command_goes_without_multi() -> None:
    SpyingRedis.multi = []
    redis = SpyingRedis(decode_responses=True)
    await redis.set("text", "not a stream")
    batcher = PipelineBatcher(redis, transaction=True)
    assert await batcher.run(lambda pipe: pipe.incr("n")) == [1]
    with pytest.raises(Exception, match="WRONGTYPE"):  # its error still fails its waiter
        await batcher.run(lambda pipe: pipe.xadd("text", {"a": "1"}))

    def two(pipe: Pipeline) -> None:
        pipe.incr("n")
        pipe.get("n")

    assert await batcher.run(two) == [2, "2"]
    # One command is atomic by itself; two keep their MULTI.
    assert SpyingRedis.multi == [False, False, True]
