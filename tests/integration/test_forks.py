"""Fork and snapshots (SPEC §10) through Redis and the Engine.

A repository worker with an uncommitted change and an untracked file is forked into two: each
copy has both, and a write in one is seen neither in the other nor in the source; the copies'
spend starts over within what the source had left. A busy worker is not forked (``conflict``); a
suspended one is. A snapshot outlives its worker, two creates from it both start with its files,
an ``agent_type`` that differs is refused; snapshots are listed and deleted with their volumes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.integration.test_workspaces import SHELL_AGENT, source_of
from tests.support.flows import Harness
from tests.support.git_server import GitServer
from worker_manager import Client, ConflictError, Worker
from worker_manager.client.errors import InvalidCommandError, NotFoundError
from worker_manager.contract.labels import LABEL_SNAPSHOT

pytestmark = [pytest.mark.docker, pytest.mark.redis]


async def sh(worker: Worker, script: str, timeout: float = 120) -> str:
    result = await asyncio.wait_for(worker.run(script), timeout)
    assert result.exit_code == 0, (script, result)
    return result.text


def snapshot_volumes(harness: Harness, name: str) -> list[str]:
    found = harness.docker.volumes.list(filters={"label": f"{LABEL_SNAPSHOT}={name}"})
    return sorted(str(v.name) for v in found)


async def started(harness: Harness, http_git: GitServer, **settings: Any) -> tuple[Client, Worker]:
    http_git.create("demo", {"README.md": "v1\n", "src/app.py": "print(1)\n"})
    await harness.start(workspace_sources=[source_of(http_git)], **settings)
    client = Client(harness.redis, key_prefix=harness.settings.key_prefix)
    source = await client.create(
        agent_type="CUSTOM",
        agent_command=json.dumps(SHELL_AGENT),
        repository={"url": http_git.url("demo")},
        max_cost_usd=5,
        metadata={"team": "search"},
    )
    await source.wait_running(timeout=180)
    await sh(source, "echo changed >> README.md && echo new > notes.txt")
    return client, source


async def test_a_fork_copies_the_work_as_it_is_into_independent_workers(
    harness: Harness, http_git: GitServer
) -> None:
    _client, source = await started(harness, http_git)
    copies = await source.fork(count=2)
    assert len(copies) == 2 and source.id not in {c.id for c in copies}
    for copy in copies:
        info = await copy.wait_running(timeout=180)
        assert info.metadata == {"team": "search"}
        record = await harness.redis.hgetall(harness.keys.worker(copy.id))
        assert record["forked_from"] == source.id
        # Uncommitted and untracked, as in the source; the same commit, no new clone.
        assert await sh(copy, "git status --porcelain") == " M README.md\n?? notes.txt"
        assert await sh(copy, "cat README.md notes.txt") == "v1\nchanged\nnew"
    first, second = copies
    await sh(first, "echo only-in-first > mine.txt && echo more >> README.md")
    assert await sh(second, "ls mine.txt 2>/dev/null || echo absent") == "absent"
    assert await sh(source, "ls mine.txt 2>/dev/null || echo absent") == "absent"
    assert await sh(source, "cat README.md") == "v1\nchanged"
    # Their own budgets (what the source had left), their own spend from 0.
    spec = json.loads(await harness.redis.get(harness.keys.spec(first.id)) or "{}")
    assert spec["max_cost_usd"] == 5
    # A redelivered fork (same request id) makes no more copies.
    before = await harness.redis.zcard(harness.keys.index)
    reply = await harness.client.request(
        "fork", worker_id=source.id, count="1", request_id="fork-once"
    )
    again = await harness.client.request(
        "fork", worker_id=source.id, count="1", request_id="fork-once"
    )
    assert (
        reply.ok
        and again.ok
        and json.loads(again.to_fields()["worker_ids"])
        == json.loads(reply.to_fields()["worker_ids"])
    )
    assert await harness.redis.zcard(harness.keys.index) == before + 1


async def test_a_busy_worker_is_not_forked_and_a_suspended_one_is(
    harness: Harness, http_git: GitServer
) -> None:
    _client, source = await started(harness, http_git)
    running = asyncio.create_task(source.run("sleep 8; echo done"))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not await harness.redis.xlen(harness.keys.input(source.id)):
        assert loop.time() < deadline
        await asyncio.sleep(0.02)
    # Waiting to be read, then being run: busy either way.
    with pytest.raises(ConflictError, match="busy with an input"):
        await source.fork()
    with pytest.raises(ConflictError, match="busy with an input"):
        await source.fork()
    assert (await running).text == "done"
    assert await harness.redis.zcard(harness.keys.index) == 1

    await source.suspend()
    (copy,) = await source.fork()
    await copy.wait_running(timeout=180)
    assert await sh(copy, "cat notes.txt") == "new"
    assert (await source.status()).status == "SUSPENDED"  # the source is left as it was


async def test_a_snapshot_outlives_its_worker_and_starts_workers_again(
    harness: Harness, http_git: GitServer
) -> None:
    client, source = await started(harness, http_git)
    taken = await source.snapshot("prepared")
    assert taken["name"] == "prepared" and taken["worker_id"] == source.id
    assert taken["size_bytes"] > 0
    assert len(snapshot_volumes(harness, "prepared")) == 2
    with pytest.raises(ConflictError):
        await source.snapshot("prepared")
    await source.delete()

    listed = await client.snapshots()
    assert [s["name"] for s in listed] == ["prepared"]
    assert listed[0]["host_live"] is True and listed[0]["manager_id"] == harness.settings.manager_id
    made = [
        await client.create(
            agent_type="CUSTOM",
            agent_command=json.dumps(SHELL_AGENT),
            from_snapshot="prepared",
            metadata={"try": str(i)},
        )
        for i in range(2)
    ]
    for worker in made:
        info = await worker.wait_running(timeout=180)
        assert info.metadata == {"try": str(made.index(worker))}
        record = await harness.redis.hgetall(harness.keys.worker(worker.id))
        assert record["snapshot"] == "prepared"
        assert await sh(worker, "cat README.md notes.txt") == "v1\nchanged\nnew"
    await sh(made[0], "echo mine > only.txt")
    assert await sh(made[1], "ls only.txt 2>/dev/null || echo absent") == "absent"

    with pytest.raises(InvalidCommandError, match="is of a CUSTOM worker, not CLAUDE"):
        await client.create(agent_type="CLAUDE", from_snapshot="prepared")
    with pytest.raises(NotFoundError):
        await client.create(
            agent_type="CUSTOM", agent_command=json.dumps(SHELL_AGENT), from_snapshot="nosuch"
        )
    await client.delete_snapshot("prepared")
    assert await client.snapshots() == []
    assert snapshot_volumes(harness, "prepared") == []
    for worker in made:
        await worker.delete()


async def test_a_create_from_another_hosts_snapshot_is_served_by_that_host(
    harness: Harness, http_git: GitServer
) -> None:
    """Two managers (one Engine here, two hosts in production): the snapshot is manager A's; a
    create from it that reaches manager B is handed to A, which answers the producer itself."""
    client, source = await started(harness, http_git)
    await source.snapshot("on-a")
    first = harness.settings.manager_id
    other = await harness.start(manager_id=f"{first}-b")
    reply_to = f"{harness.keys.replies}:cross"
    await harness.redis.xadd(
        harness.keys.manager_commands(other.settings.manager_id),
        {
            "command": "create",
            "agent_type": "CUSTOM",
            "agent_command": json.dumps(SHELL_AGENT),
            "from_snapshot": "on-a",
            "request_id": "cross-host-1",
            "reply_to": reply_to,
        },
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not (replies := await harness.redis.xrange(reply_to)):
        assert loop.time() < deadline
        await asyncio.sleep(0.1)
    ((_id, answer),) = replies
    assert answer["ok"] == "true", answer
    worker = client.worker(answer["worker_id"])
    await worker.wait_running(timeout=180)
    record = await harness.redis.hgetall(harness.keys.worker(worker.id))
    assert record["manager_id"] == first and record["snapshot"] == "on-a"
    assert await sh(worker, "cat notes.txt") == "new"
