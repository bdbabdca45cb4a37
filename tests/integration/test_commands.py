"""The command stream's guarantees: validation, dead letters, idempotency, reclaiming."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from tests.support.flows import Harness
from worker_manager.core.keys import MANAGER_GROUP

pytestmark = [pytest.mark.redis]

BAD_COMMANDS: list[tuple[dict[str, str], str]] = [
    ({"command": "explode"}, "command"),
    ({"agent_type": "CUSTOM"}, "command"),
    ({"command": "create"}, "agent_type"),
    ({"command": "create", "agent_type": "ROBOT"}, "agent_type"),
    ({"command": "create", "agent_type": "CUSTOM"}, "agent_command"),
    ({"command": "create", "agent_type": "CLAUDE", "modules": '["GIT", "FLOPPY"]'}, "modules"),
    ({"command": "create", "agent_type": "CLAUDE", "modules": "GIT"}, "modules"),
    (
        {"command": "create", "agent_type": "CLAUDE", "allowed_commands": '{"a": 1}'},
        "allowed_commands",
    ),
    ({"command": "create", "agent_type": "CLAUDE", "metadata": '["x"]'}, "metadata"),
    ({"command": "create", "agent_type": "CLAUDE", "worker_id": "not-a-uuid"}, "worker_id"),
    (
        {"command": "create", "agent_type": "CLAUDE", "instructions": "x" * (256 * 1024 + 1)},
        "instructions",
    ),
    (
        {
            "command": "create",
            "agent_type": "CLAUDE",
            "allowed_commands": json.dumps(["git"] * 10 + [f"c{i}" for i in range(300)]),
        },
        "allowed_commands",
    ),
    (
        {
            "command": "create",
            "agent_type": "CLAUDE",
            "metadata": json.dumps({f"k{i}": "v" for i in range(65)}),
        },
        "metadata",
    ),
    (
        {"command": "create", "agent_type": "CLAUDE", "input_timeout_seconds": "0"},
        "input_timeout_seconds",
    ),
    (
        {"command": "create", "agent_type": "CLAUDE", "input_timeout_seconds": "nan"},
        "input_timeout_seconds",
    ),
    ({"command": "create", "agent_type": "CLAUDE", "max_turns": "0"}, "max_turns"),
    ({"command": "create", "agent_type": "CLAUDE", "max_turns": "many"}, "max_turns"),
    ({"command": "create", "agent_type": "CLAUDE", "max_cost_usd": "-1"}, "max_cost_usd"),
    ({"command": "create", "agent_type": "CLAUDE", "max_cost_usd": "inf"}, "max_cost_usd"),
    ({"command": "status"}, "worker_id"),
    ({"command": "status", "worker_id": "1234"}, "worker_id"),
    ({"command": "delete", "worker_id": "zzz"}, "worker_id"),
    ({"command": "list", "request_id": "has space"}, "request_id"),
    ({"command": "list", "colour": "blue"}, "colour"),
]


@pytest.mark.parametrize(("fields", "field"), BAD_COMMANDS)
async def test_bad_command_gets_error_reply_and_dead_letter(
    harness: Harness, fields: dict[str, str], field: str
) -> None:
    await harness.start()
    reply_to = f"{harness.keys.replies}:bad"
    request_id = fields.get("request_id") if field != "request_id" else None
    request_id = request_id or f"bad-{uuid.uuid4().hex[:8]}"
    body = {**fields, "reply_to": reply_to}
    if field != "request_id":
        body["request_id"] = request_id
    entry_id = await harness.client.push(body)
    expect_id = request_id if field != "request_id" else entry_id
    reply = await harness.client.wait_reply(reply_to, expect_id, timeout=10)
    assert not reply.ok
    assert reply.error == "invalid_command"
    assert reply.message and field in reply.message, reply.message

    dead = await harness.redis.xrange(harness.keys.dead)
    assert [d for _id, d in dead if d["dead_entry_id"] == entry_id], "no dead-letter entry"
    # The service keeps serving.
    listed = await harness.client.request("list", timeout=10)
    assert listed.ok


async def test_reply_to_outside_the_reply_namespace_is_refused(harness: Harness) -> None:
    await harness.start()
    victim = f"{harness.keys.prefix}:{uuid.uuid4()}:input"
    entry_id = await harness.client.push(
        {"command": "list", "request_id": "hijack", "reply_to": victim}
    )
    # The refusal lands in the dead-letter stream, never in the named stream.
    for _ in range(100):
        dead = await harness.redis.xrange(harness.keys.dead)
        if any(d["dead_entry_id"] == entry_id for _i, d in dead):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("no dead letter for a bad reply_to")
    assert "reply_to" in next(d for _i, d in dead if d["dead_entry_id"] == entry_id)["dead_reason"]
    assert await harness.redis.exists(victim) == 0


async def test_status_of_unknown_worker_is_not_found(harness: Harness) -> None:
    await harness.start()
    reply = await harness.client.request("status", worker_id=str(uuid.uuid4()))
    assert not reply.ok and reply.error == "not_found" and reply.message


async def test_same_request_id_gets_same_reply_and_one_worker(harness: Harness) -> None:
    await harness.start()
    reply_to = f"{harness.keys.replies}:idem"
    body = {
        "command": "create",
        "request_id": "create-once",
        "reply_to": reply_to,
        "agent_type": "CUSTOM",
        "agent_command": '["cat"]',
    }
    await harness.client.push(body)
    await harness.client.push(body)
    first = await harness.client.wait_reply(reply_to, "create-once")
    entries = []
    for _ in range(200):
        entries = await harness.redis.xrange(reply_to)
        if len(entries) >= 2:
            break
        await asyncio.sleep(0.05)
    replies = [fields for _id, fields in entries]
    assert len(replies) == 2 and replies[0] == replies[1], replies
    assert first.ok and first.worker_id
    assert await harness.redis.zcard(harness.keys.index) == 1
    await harness.client.request("delete", worker_id=first.worker_id)


async def test_conflicting_worker_id_is_refused(harness: Harness) -> None:
    await harness.start()
    worker_id = str(uuid.uuid4())
    first = await harness.client.request(
        "create", agent_type="CUSTOM", agent_command='["cat"]', worker_id=worker_id
    )
    assert first.ok and first.worker_id == worker_id
    second = await harness.client.request(
        "create", agent_type="CUSTOM", agent_command='["cat"]', worker_id=worker_id
    )
    assert not second.ok and second.error == "conflict"
    await harness.client.request("delete", worker_id=worker_id)


async def test_pending_command_of_dead_consumer_is_reclaimed_once(harness: Harness) -> None:
    stream = harness.keys.commands
    await harness.redis.xgroup_create(stream, MANAGER_GROUP, id="0", mkstream=True)
    reply_to = f"{harness.keys.replies}:reclaim"
    entry_id = await harness.client.push(
        {"command": "list", "request_id": "orphan", "reply_to": reply_to}
    )
    # A consumer takes the entry and dies before acknowledging it.
    taken = await harness.redis.xreadgroup(MANAGER_GROUP, "crashed-manager", {stream: ">"})
    assert taken[0][1][0][0] == entry_id

    await harness.start()
    reply = await harness.client.wait_reply(reply_to, "orphan", timeout=20)
    assert reply.ok
    pending = await harness.redis.xpending(stream, MANAGER_GROUP)
    assert pending["pending"] == 0
    await asyncio.sleep(1.5)  # another full reclaim period: nothing is handled twice
    assert await harness.redis.xlen(reply_to) == 1


async def test_poison_command_is_dead_lettered_after_max_deliveries(harness: Harness) -> None:
    stream = harness.keys.commands
    await harness.redis.xgroup_create(stream, MANAGER_GROUP, id="0", mkstream=True)
    reply_to = f"{harness.keys.replies}:poison"
    entry_id = await harness.client.push(
        {"command": "list", "request_id": "poison", "reply_to": reply_to}
    )
    # Delivered (and never acknowledged) as often as the manager allows.
    await harness.redis.xreadgroup(MANAGER_GROUP, "flaky", {stream: ">"})
    await harness.redis.xclaim(
        stream, MANAGER_GROUP, "flaky", 0, [entry_id], retrycount=harness.settings.max_deliveries
    )
    await harness.start()
    reply = await harness.client.wait_reply(reply_to, "poison", timeout=20)
    assert not reply.ok and reply.error == "internal"
    dead = await harness.redis.xrange(harness.keys.dead)
    assert any(d["dead_entry_id"] == entry_id for _i, d in dead)


async def test_acknowledged_commands_are_trimmed(harness: Harness) -> None:
    manager = await harness.start()
    for _ in range(20):
        assert (await harness.client.request("list")).ok
    await manager.consumer.trim()
    assert await harness.redis.xlen(harness.keys.commands) == 0
