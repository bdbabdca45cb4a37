"""A status answered inside Redis (``ReplyBook.answer_status``), checked against the reply the
SPEC §2 model gives for the same record (fakeredis runs the script)."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from worker_manager.commands.handlers import not_found
from worker_manager.commands.replies import ReplyBook
from worker_manager.contract.kinds import WorkerStatus
from worker_manager.contract.reply import STATUS_DETAILS, Reply
from worker_manager.core.keys import MANAGER_GROUP
from worker_manager.settings import Settings

WORKER = "3f2b8c1e-0d7a-4c55-9a51-2f0e6b1c9d42"
FULL = {
    "worker_id": WORKER,
    "ip_address": "10.0.0.7",
    "reason": "",  # empty: not in the reply
    "agent_type": "CUSTOM",
    "modules": '["GIT"]',
    "created_at": "2026-12-06T10:00:00.000Z",
    "metadata": '{"team":"a"}',
    "cost_usd": "0.25",
    "manager_id": "m1",
    "container_id": "abc",  # not a public detail
    "request_id": "r0",
}


def settings() -> Settings:
    return Settings(_env_file=None, key_prefix="u")  # type: ignore[call-arg]


def expected(record: dict[str, str] | None, request_id: str) -> dict[str, str]:
    """What the Python model of a reply says for ``record`` (SPEC §2)."""
    if record is None:
        error = not_found(WORKER)
        reply = Reply(
            request_id=request_id,
            command="status",
            ok=False,
            worker_id=WORKER,
            error=error.code.value,
            message=error.message,
        )
        return reply.to_fields()
    status = record.get("status", "")
    live = status in {s.value for s in WorkerStatus if s.is_live}
    return Reply(
        request_id=request_id,
        command="status",
        ok=True,
        worker_id=WORKER,
        status=status or None,
        ip_address=(record.get("ip_address") or None) if live else None,
        details={name: record[name] for name in STATUS_DETAILS if record.get(name)},
    ).to_fields()


async def answer(record: dict[str, str] | None, reply_to: str = "u:replies:t") -> Any:
    redis = fakeredis.aioredis.FakeRedis(decode_responses=True)
    s = settings()
    book = ReplyBook(redis, s)
    await redis.xgroup_create(s.keys.commands, MANAGER_GROUP, id="0", mkstream=True)
    entry_id = await redis.xadd(s.keys.commands, {"command": "status", "worker_id": WORKER})
    await redis.xreadgroup(MANAGER_GROUP, "m1", {s.keys.commands: ">"})
    if record:
        await redis.hset(s.keys.worker(WORKER), mapping=record)
    found = await book.answer_status(
        entry_id,
        request_id="r1",
        worker_id=WORKER,
        reply_to=reply_to,
        missing=not_found(WORKER).message,
    )
    pending = await redis.xpending(s.keys.commands, MANAGER_GROUP)
    return redis, found, pending["pending"]


@pytest.mark.parametrize(
    "record",
    [
        {**FULL, "status": "RUNNING"},
        {**FULL, "status": "STARTING", "ip_address": ""},
        # An ended or suspended worker's record keeps its last address; the reply does not.
        {**FULL, "status": "STOPPED", "exit_code": "0", "stopped_at": "2026-12-06T11:00:00Z"},
        {**FULL, "status": "SUSPENDED", "suspended_at": "2026-12-06T11:00:00Z"},
        {**FULL, "status": "SOMETHING_NEW"},
        {"worker_id": WORKER, "status": "", "ip_address": "10.0.0.7"},
        {name: f"v-{name}" for name in (*STATUS_DETAILS, "status", "ip_address")}
        | {"status": "RUNNING"},
        None,
    ],
)
async def test_the_reply_is_the_spec_reply_of_the_record(record: dict[str, str] | None) -> None:
    redis, found, pending = await answer(record)
    [(_id, reply)] = await redis.xrange("u:replies:t")
    assert reply == expected(record, "r1")
    assert list(reply) == list(expected(record, "r1"))  # the same order of fields too
    assert found == (record is not None)
    assert pending == 0  # acknowledged in the same step
    assert await redis.ttl("u:replies:t") > 0
    assert await redis.exists("u:request:r1") == 0  # a status is never remembered


async def test_a_reply_to_of_another_type_gets_a_dead_letter_and_the_entry_is_acked() -> None:
    redis = fakeredis.aioredis.FakeRedis(decode_responses=True)
    await redis.set("u:replies:t", "keep")
    s = settings()
    book = ReplyBook(redis, s)
    await redis.xgroup_create(s.keys.commands, MANAGER_GROUP, id="0", mkstream=True)
    entry_id = await redis.xadd(s.keys.commands, {"command": "status"})
    await redis.xreadgroup(MANAGER_GROUP, "m1", {s.keys.commands: ">"})
    await redis.hset(s.keys.worker(WORKER), mapping={**FULL, "status": "RUNNING"})
    await book.answer_status(
        entry_id, request_id="r1", worker_id=WORKER, reply_to="u:replies:t", missing="x"
    )
    assert await redis.get("u:replies:t") == "keep" and await redis.ttl("u:replies:t") == -1
    [(_id, dead)] = await redis.xrange(s.keys.dead)
    assert dead["dead_entry_id"] == entry_id and "string" in dead["dead_reason"]
    assert dead["status"] == "RUNNING" and dead["request_id"] == "r1"
    assert (await redis.xpending(s.keys.commands, MANAGER_GROUP))["pending"] == 0


async def test_a_redis_that_does_not_know_the_script_still_answers_each_status_once() -> None:
    """Sent by digest; a Redis without the script (restarted, failed over) runs none of it, and
    the script is sent whole instead."""
    redis = fakeredis.aioredis.FakeRedis(decode_responses=True)
    s = settings()
    book = ReplyBook(redis, s)
    await redis.xgroup_create(s.keys.commands, MANAGER_GROUP, id="0", mkstream=True)
    await redis.hset(s.keys.worker(WORKER), mapping={**FULL, "status": "RUNNING"})
    for n in range(3):
        if n == 2:
            await redis.script_flush()
        entry_id = await redis.xadd(s.keys.commands, {"command": "status"})
        await redis.xreadgroup(MANAGER_GROUP, "m1", {s.keys.commands: ">"})
        assert await book.answer_status(
            entry_id, request_id=f"r{n}", worker_id=WORKER, reply_to="u:replies:t", missing="x"
        )
    replies = [fields["request_id"] for _id, fields in await redis.xrange("u:replies:t")]
    assert replies == ["r0", "r1", "r2"]
    assert (await redis.xpending(s.keys.commands, MANAGER_GROUP))["pending"] == 0
