"""``Lifecycle.end``, the one way a worker ends, over a real record (fakeredis runs the Lua) and
stand-ins for Docker and the ACL: the order of its steps and what each caller's flags change."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import fakeredis

from worker_manager.contract.kinds import WorkerStatus
from worker_manager.contract.reasons import Ended, start_failed
from worker_manager.settings import Settings
from worker_manager.workers.resources.tasks import WorkerTasks
from worker_manager.workers.state.records import CreateResult, WorkerStore
from worker_manager.workers.transitions.lifecycle import Lifecycle, Outcome, outcome_of


class Steps:
    """Records what the lifecycle asked of the container runtime and the ACL, in order."""

    def __init__(self, exit_code: int | None = 143) -> None:
        self.calls: list[str] = []
        self.exit_code = exit_code

    async def remove(self, worker_id: str) -> int | None:
        self.calls.append(f"remove {worker_id}")
        return self.exit_code

    async def delete(self, worker_id: str) -> None:
        self.calls.append(f"acl-delete {worker_id}")

    async def release(self, worker_id: str) -> None:
        self.calls.append(f"egress-release {worker_id}")


async def setup(exit_code: int | None = 143) -> tuple[WorkerStore, Lifecycle, Steps, WorkerTasks]:
    redis = fakeredis.aioredis.FakeRedis(decode_responses=True)
    settings = Settings(_env_file=None, key_prefix="lc", manager_id="m1")  # type: ignore[call-arg]
    store = WorkerStore(redis, settings)
    outcome = await store.create(
        "w1", request_id="r1", fields={"agent_type": "CUSTOM"}, spec={}, prompt=None, max_live=5
    )
    assert outcome.result is CreateResult.CREATED
    steps, creates = Steps(exit_code), WorkerTasks("provision")
    lifecycle = Lifecycle(store, cast(Any, steps), cast(Any, steps), creates, cast(Any, steps))
    return store, lifecycle, steps, creates


async def until(condition: Any) -> None:
    for _ in range(200):
        if await condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met within 2 s")


async def test_end_transitions_first_then_tears_down_in_the_background() -> None:
    store, lifecycle, steps, creates = await setup()
    blocked = asyncio.Event()

    async def create() -> None:
        await blocked.wait()

    creates.start("w1", create)
    assert await lifecycle.end("w1", Outcome(Ended.HEARTBEAT_LOST))
    record = await store.get("w1")
    assert record is not None and record.status is WorkerStatus.FAILED
    assert record.text("reason") == "heartbeat_lost"

    async def torn_down() -> bool:
        current = await store.get("w1")
        return current is not None and current.exit_code == 143

    await until(torn_down)
    assert steps.calls == ["remove w1", "acl-delete w1", "egress-release w1"]
    assert "w1" not in creates  # its create was cancelled
    assert await store.live_ids() == []
    # A second end changes nothing and tears down nothing more.
    assert not await lifecycle.end("w1", Outcome(Ended.DELETED))
    await asyncio.sleep(0.05)
    assert steps.calls == ["remove w1", "acl-delete w1", "egress-release w1"]


async def test_a_delete_waits_and_makes_sure_even_when_already_ended() -> None:
    _store, lifecycle, steps, _ = await setup(exit_code=None)
    assert await lifecycle.end("w1", Outcome(Ended.DELETED), wait=True)
    assert steps.calls == ["remove w1", "acl-delete w1", "egress-release w1"]
    assert not await lifecycle.end("w1", Outcome(Ended.DELETED), wait=True)
    assert steps.calls == ["remove w1", "acl-delete w1", "egress-release w1"] * 2


async def test_an_exit_reported_after_a_delete_keeps_its_code() -> None:
    store, lifecycle, _, _ = await setup(exit_code=None)
    await lifecycle.end("w1", Outcome(Ended.DELETED), wait=True)
    assert not await lifecycle.end("w1", outcome_of(137, oom=False))
    record = await store.get("w1")
    assert record is not None and record.text("reason") == "deleted" and record.exit_code == 137


async def test_a_worker_of_a_dead_manager_loses_only_its_redis_user_here() -> None:
    _store, lifecycle, steps, _ = await setup()
    assert await lifecycle.end("w1", Outcome(Ended.DELETED), on_this_host=False)
    assert steps.calls == ["acl-delete w1"]


async def test_allowed_from_limits_what_may_end() -> None:
    store, lifecycle, steps, _ = await setup()
    # Idle eviction applies to RUNNING workers only; this one is still STARTING.
    assert not await lifecycle.end("w1", Outcome(Ended.IDLE), allowed_from=(WorkerStatus.RUNNING,))
    record = await store.get("w1")
    assert record is not None and record.status is WorkerStatus.STARTING and steps.calls == []


async def test_a_create_that_fails_itself_still_cleans_up() -> None:
    """From inside its own create task, ``end(wait=True)`` must not cancel that task."""
    _store, lifecycle, steps, creates = await setup()
    finished = asyncio.Event()

    async def failing_create() -> None:
        await lifecycle.end("w1", Outcome(start_failed("boom")), wait=True)
        finished.set()

    creates.start("w1", failing_create)
    await asyncio.wait_for(finished.wait(), 2)
    assert steps.calls == ["remove w1", "acl-delete w1", "egress-release w1"]
