"""Workers that sleep and wake (SPEC §8): suspend keeps the workspace and drops the container,
an input or ``resume`` brings it back with everything it had, limits hold, nothing is left over."""

from __future__ import annotations

import asyncio
import json

import docker.errors
import pytest

from tests.support.flows import Harness
from worker_manager import CapacityExceededError, Client, ConflictError, Worker
from worker_manager.contract.reasons import Slept
from worker_manager.workers.state.records import SleepResult

pytestmark = [pytest.mark.docker, pytest.mark.redis]

#: Runs the prompt as a shell script, in the workspace.
SHELL_AGENT = ["sh", "-c", 'cd /workspace && eval "$(cat)"']


def volumes_of(harness: Harness, worker_id: str) -> list[str]:
    found = []
    for suffix in ("home", "workspace"):
        try:
            harness.docker.volumes.get(f"{harness.settings.key_prefix}-{worker_id}-{suffix}")
            found.append(suffix)
        except docker.errors.NotFound:
            pass
    return found


async def started(harness: Harness, **settings: object) -> Client:
    await harness.start(**settings)
    return Client(harness.redis, key_prefix=harness.settings.key_prefix)


async def test_a_suspended_worker_keeps_its_files_and_wakes_for_an_input(
    harness: Harness,
) -> None:
    client = await started(harness)
    worker = await client.create(agent_type="CUSTOM", agent_command=SHELL_AGENT)
    await worker.wait_running()
    assert (await worker.run("echo kept > notes.txt; echo $HOME > home.txt")).exit_code == 0

    info = await worker.suspend()
    assert info.status == "SUSPENDED"
    info = await worker.status()
    assert info.status == "SUSPENDED" and info.suspended_at and info.reason == "suspended"
    await harness.wait_container_gone(worker.id)
    assert volumes_of(harness, worker.id) == ["home", "workspace"]
    # Not live: not in this manager's capacity count.
    assert worker.id not in await harness.redis.smembers(
        harness.keys.live(harness.settings.manager_id)
    )

    # An input wakes it: STARTING, then RUNNING, and the input is answered with its files there.
    result = await asyncio.wait_for(worker.run("cat notes.txt"), 120)
    assert result.exit_code == 0 and result.text == "kept"
    info = await worker.status()
    assert info.status == "RUNNING" and not info.suspended_at
    entries = await harness.redis.xrange(harness.keys.lifecycle)
    moves = [(f["from"], f["to"], f["reason"]) for _i, f in entries if f["worker_id"] == worker.id]
    assert ("RUNNING", "SUSPENDED", "suspended") in moves
    assert ("SUSPENDED", "STARTING", "input") in moves
    assert moves[-1][1] == "RUNNING"

    # resume, by command; a suspend of a suspended worker changes nothing.
    await worker.suspend()
    assert (await worker.suspend()).status == "SUSPENDED"
    assert (await worker.resume()).status == "STARTING"
    await worker.wait_running()
    assert (await worker.run("cat notes.txt")).text == "kept"
    assert (await worker.resume()).status == "RUNNING"  # awake already: nothing to do

    # Delete a suspended worker: STOPPED deleted, and its volumes go with it.
    await worker.suspend()
    assert (await worker.delete()).status == "STOPPED"
    with pytest.raises(ConflictError, match="only a SUSPENDED worker"):
        await worker.resume()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while volumes_of(harness, worker.id):
        assert loop.time() < deadline, "a deleted worker's volumes stayed"
        await asyncio.sleep(0.1)


async def test_suspended_workers_free_their_slot_within_their_own_limit(
    harness: Harness,
) -> None:
    client = await started(harness, max_workers=1, max_suspended=1)
    first = await client.create(agent_type="CUSTOM", agent_command=SHELL_AGENT)
    await first.wait_running()
    await first.suspend()
    second = await client.create(agent_type="CUSTOM", agent_command=SHELL_AGENT)
    await second.wait_running()  # the suspended one does not count against WM_MAX_WORKERS
    with pytest.raises(CapacityExceededError, match="maximum of 1 live"):
        await first.resume()
    with pytest.raises(CapacityExceededError, match="suspended"):
        await second.suspend()
    await second.delete()
    await first.resume()
    await first.wait_running()


async def test_an_idle_worker_is_suspended_when_the_operator_says_so(harness: Harness) -> None:
    client = await started(
        harness, idle_action="suspend", idle_timeout_seconds=1, eviction_interval_seconds=0.2
    )
    worker: Worker = await client.create(agent_type="CUSTOM", agent_command=SHELL_AGENT)
    await worker.wait_running()
    assert await harness.wait_status(worker.id, "SUSPENDED", "STOPPED", timeout=30) == "SUSPENDED"
    assert (await worker.status()).reason == "idle"
    await worker.delete()


async def test_a_suspend_cut_short_leaves_no_container_and_keeps_the_volumes(
    harness: Harness,
) -> None:
    """A manager that dies between the record's SUSPENDED and the container's removal: the next
    reconciliation removes the container and keeps what the worker had."""
    manager = await harness.start()
    client = Client(harness.redis, key_prefix=harness.settings.key_prefix)
    worker = await client.create(agent_type="CUSTOM", agent_command=SHELL_AGENT)
    await worker.wait_running()
    await worker.run("echo survived > kept.txt")
    await harness.stop(manager)
    outcome = await manager.store.suspend(worker.id, Slept.SUSPENDED)  # the record only
    assert outcome.result is SleepResult.SUSPENDED
    assert harness.container(worker.id) is not None
    await harness.start()
    await harness.wait_container_gone(worker.id)
    assert volumes_of(harness, worker.id) == ["home", "workspace"]
    assert (await worker.status()).status == "SUSPENDED"
    assert (await asyncio.wait_for(worker.run("cat kept.txt"), 120)).text == "survived"
    await worker.delete()
    spec = await harness.redis.get(harness.keys.spec(worker.id))
    assert spec is None or json.loads(spec)
