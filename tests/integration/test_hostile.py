"""No byte and no worker can take the fleet down (issue: hostile commands, hostile workers).

Each test drives the manager only through Redis (and Docker where a worker is needed), the way
a buggy producer or a prompt-injected worker could: what the worker writes here, it writes to
its own keys, which its ACL user may write.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import structlog

from tests.support.flows import Harness
from tests.support.records import seed_records
from worker_manager.core.keys import MANAGER_GROUP
from worker_manager.service.http import HttpServer
from worker_manager.service.manager import Manager

pytestmark = [pytest.mark.redis]

MAX_ID = "18446744073709551615-18446744073709551615"


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, f"never happened within {timeout}s: {what}"
        await asyncio.sleep(0.05)


async def dead_letter(harness: Harness, entry_id: str) -> dict[str, str]:
    found: dict[str, str] = {}

    async def check() -> bool:
        for _id, fields in await harness.redis.xrange(harness.keys.dead):
            if fields.get("dead_entry_id") == entry_id:
                found.update(fields)
                return True
        return False

    await eventually(check, f"a dead letter for {entry_id}", timeout=15)
    return found


async def acked(harness: Harness, entry_id: str) -> bool:
    pending = await harness.redis.xpending_range(
        harness.keys.commands, MANAGER_GROUP, entry_id, entry_id, 1
    )
    return not pending


async def start_cat(harness: Harness) -> str:
    reply = await harness.client.create(agent_type="CUSTOM", agent_command=["cat"])
    assert reply.ok and reply.worker_id, reply
    assert await harness.wait_status(reply.worker_id, "RUNNING", "FAILED") == "RUNNING"
    return reply.worker_id


def no_loop_trouble(manager: Manager) -> None:
    assert manager.supervisor.problems() == {}
    restarted = {n: s.restarts for n, s in manager.supervisor.loops.items() if s.restarts}
    assert not restarted, restarted


# --- 1: bytes that are not UTF-8 ------------------------------------------------------------
async def test_invalid_utf8_is_answered_dead_lettered_and_the_manager_keeps_serving(
    harness: Harness,
) -> None:
    manager = await harness.start()
    reply_to = f"{harness.keys.replies}:utf8"
    entry_id = await harness.redis.xadd(
        harness.keys.commands,
        {
            "command": "create",
            "agent_type": b"CUS\xffTOM",
            "request_id": "u8",
            "reply_to": reply_to,
        },
    )
    reply = await harness.client.wait_reply(reply_to, "u8", timeout=10)
    assert not reply.ok and reply.error == "invalid_command"
    assert reply.message and "agent_type" in reply.message and "UTF-8" in reply.message
    assert "UTF-8" in (await dead_letter(harness, entry_id))["dead_reason"]
    # A name and a reply_to that are not text: nowhere to answer, but dead-lettered and acked.
    second = await harness.redis.xadd(
        harness.keys.commands, {"command": "status", b"\xfe\xff": "x", "reply_to": b"\xc3("}
    )
    await dead_letter(harness, second)
    await eventually(lambda: acked(harness, second), "the entry acknowledged")
    assert (await harness.client.request("list", timeout=10)).ok
    # A second manager on the same group is just as unbothered (it takes stale entries over).
    other = await harness.start(manager_id=f"{harness.settings.manager_id}-b")
    assert (await harness.client.request("list", timeout=10)).ok
    no_loop_trouble(manager)
    no_loop_trouble(other)


# --- 2, 4, 10: heartbeats a worker poisons --------------------------------------------------
POISONS = ("not utf-8", "not a time", "a stream", "huge", "future, no expiry")


async def _poison(redis: Any, key: str, how: str) -> None:
    """Write the heartbeat key as a hostile worker could (its ACL user may SET it)."""
    if how == "a stream":
        await redis.delete(key)
        await redis.xadd(key, {"x": "1"})
    elif how == "not utf-8":
        await redis.set(key, b"\xff", ex=60)
    elif how == "not a time":
        await redis.set(key, "lunchtime", ex=60)
    elif how == "huge":
        await redis.set(key, "2026-11-25T10:00:00.000Z " + "x" * 4_000_000, ex=60)
    else:
        await redis.set(key, "2999-01-01T00:00:00.000Z")  # far future, and no TTL


@pytest.mark.docker
@pytest.mark.parametrize("how", POISONS)
async def test_a_poisoned_heartbeat_fails_that_worker_alone(harness: Harness, how: str) -> None:
    manager = await harness.start()
    victim, bystander = await start_cat(harness), await start_cat(harness)
    key = harness.keys.heartbeat(victim)

    async def judged() -> bool:
        status = await harness.redis.hget(harness.keys.worker(victim), "status")
        if status == "RUNNING":
            await _poison(harness.redis, key, how)  # the wrapper keeps beating over it
            return False
        return True

    await eventually(judged, f"the {how} heartbeat judged")
    record = await harness.redis.hgetall(harness.keys.worker(victim))
    assert record["status"] == "FAILED" and record["reason"] == "heartbeat_invalid", record
    # Everyone else is still watched: the bystander stays RUNNING, a new worker gets RUNNING.
    newcomer = await start_cat(harness)
    for worker_id in (bystander, newcomer):
        assert await harness.redis.hget(harness.keys.worker(worker_id), "status") == "RUNNING"
    no_loop_trouble(manager)
    text = manager.metrics.render().decode()
    assert 'wm_worker_writes_dropped_total{kind="heartbeat"} 1.0' in text


# --- 3: every loop is supervised -------------------------------------------------------------
def fail_once(obj: object, name: str) -> list[float]:
    """Make ``obj.name`` raise once, then behave; returns when it raised (empty: not yet)."""
    original = getattr(obj, name)
    raised: list[float] = []

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        if not raised:
            raised.append(time.monotonic())
            raise RuntimeError(f"injected failure in {name}")
        return await original(*args, **kwargs)

    setattr(obj, name, flaky)
    return raised


class FailingReads:
    """A Redis client whose next XREADGROUP fails once, as a bug in the reader would."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.raised: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def xreadgroup(self, *args: Any, **kwargs: Any) -> Any:
        if not self.raised:
            self.raised.append(time.monotonic())
            raise RuntimeError("injected failure in xreadgroup")
        return await self._inner.xreadgroup(*args, **kwargs)


@pytest.mark.docker
async def test_each_loop_survives_an_unexpected_exception(harness: Harness) -> None:
    manager = await harness.start(
        eviction_interval_seconds=0.2,
        reconcile_interval_seconds=0.5,
        presence_ttl_seconds=3,
        output_trim_interval_seconds=0.2,
    )
    targets = {
        "heartbeats": (manager.watcher, "check_heartbeats"),
        "eviction": (manager.evictor, "judge"),
        "output-trim": (manager.output_guard, "_trim_all"),
        "reconcile": (manager.reconciler, "reconcile"),
        "presence": (manager.presence, "beat"),
        "consumer-upkeep": (manager.consumer, "_keep_in_flight_fresh"),
        "own-consumer-upkeep": (manager.own_consumer, "_keep_in_flight_fresh"),
        "docker-events": (manager.watcher, "_next_event"),
    }
    worker_id = await start_cat(harness)
    with structlog.testing.capture_logs() as logs:
        injected = {loop: fail_once(obj, attr) for loop, (obj, attr) in targets.items()}
        # The per-manager delete stream's reader: its next blocking read fails.
        reads = FailingReads(manager.own_consumer._blocking)
        manager.own_consumer._blocking = reads
        injected["own-consumer"] = reads.raised
        targets["own-consumer"] = (manager.own_consumer, "_blocking")
        await harness.redis.xadd(
            harness.keys.manager_commands(harness.settings.manager_id), {"command": "list"}
        )
        # A docker event to read: a container of this manager that dies.
        await asyncio.to_thread(harness.container(worker_id).kill)

        async def all_recovered() -> bool:
            loops = manager.supervisor.loops
            for name, raised in injected.items():
                state = loops[name]
                if not raised or state.restarts != 1:
                    return False
                if state.interval is not None and (state.last_round or 0) <= raised[0]:
                    return False  # a round has finished since the failure
            return True

        try:
            await eventually(all_recovered, "every loop restarted once and running again")
        except AssertionError:
            states = {
                n: (bool(injected[n]), s.restarts, s.last_round, s.last_error)
                for n, s in manager.supervisor.loops.items()
                if n in injected
            }
            raise AssertionError(states) from None
    failures = [e for e in logs if e["event"] == "background loop failed; restarting"]
    assert {e["loop"] for e in failures} == set(targets)
    assert all(e.get("exc_info") for e in failures)  # with the traceback
    text = manager.metrics.render().decode()
    for name in targets:
        assert f'wm_loop_restarts_total{{loop="{name}"}} 1.0' in text
    # The service still works end to end: a command is answered, the manager is present.
    assert (await harness.client.request("list", timeout=10)).ok
    assert await harness.redis.exists(harness.keys.manager(harness.settings.manager_id))
    assert manager.supervisor.problems() == {}


async def test_a_loop_that_keeps_failing_makes_readyz_name_it(harness: Harness) -> None:
    manager = await harness.start(eviction_interval_seconds=0.1)

    async def broken(_now: float) -> list[object]:
        raise RuntimeError("still broken")

    manager.evictor.judge = broken  # type: ignore[method-assign,assignment]
    http = HttpServer(manager.settings, manager.settings, manager, manager.metrics)
    checks: dict[str, str] = {}

    async def named() -> bool:
        checks.update(await http.readiness())
        return checks["loops"] != "ok"

    await eventually(named, "/readyz naming the failing loop")
    assert checks["loops"].startswith("eviction: failed 3 times in a row")
    assert "still broken" in checks["loops"]


async def test_a_corrupt_record_does_not_stop_the_watcher_or_the_evictor(
    harness: Harness,
) -> None:
    manager = await harness.start(eviction_interval_seconds=0.1)
    bogus = str(uuid.uuid4())
    await harness.redis.hset(
        harness.keys.worker(bogus),
        mapping={"status": "STARTING", "started_at": "yesterday", "created_at": "never"},
    )
    await harness.redis.sadd(manager.store.live_key, bogus)
    before = {n: manager.supervisor.loops[n].last_round or 0 for n in ("heartbeats", "eviction")}

    async def rounds_went_on() -> bool:
        loops = manager.supervisor.loops
        return all((loops[n].last_round or 0) > t + 0.5 for n, t in before.items())

    await eventually(rounds_went_on, "more watcher and evictor rounds")
    no_loop_trouble(manager)


# --- 5: worker writes are bounded by the manager -----------------------------------------------
@pytest.mark.docker
async def test_output_is_trimmed_and_a_flood_stops_the_worker(harness: Harness) -> None:
    manager = await harness.start(output_maxlen=100, output_trim_interval_seconds=0.3)
    calm, flooding = await start_cat(harness), await start_cat(harness)
    calm_key, flood_key = harness.keys.output(calm), harness.keys.output(flooding)
    async with harness.redis.pipeline(transaction=False) as pipe:
        for i in range(900):  # 9x its cap: trimmed, not stopped
            pipe.xadd(calm_key, {"type": "stdout", "content": f"line {i}"})
        await pipe.execute()

    async def trimmed() -> bool:
        return int(await harness.redis.xlen(calm_key)) <= 300  # MAXLEN ~ keeps whole nodes

    await eventually(trimmed, "the calm worker's output trimmed to its cap")

    async def flood() -> bool:
        if await harness.redis.hget(harness.keys.worker(flooding), "status") != "RUNNING":
            return True
        async with harness.redis.pipeline(transaction=False) as pipe:
            for i in range(2_500):
                pipe.xadd(flood_key, {"type": "stdout", "content": f"flood {i}"})
            await pipe.execute()
        return False

    await eventually(flood, "the flooding worker stopped")
    record = await harness.redis.hgetall(harness.keys.worker(flooding))
    assert record["status"] == "FAILED" and record["reason"] == "output_overflow", record
    assert await harness.redis.hget(harness.keys.worker(calm), "status") == "RUNNING"
    assert 'wm_worker_writes_dropped_total{kind="output"}' in manager.metrics.render().decode()


@pytest.mark.docker
async def test_a_poisoned_output_stream_does_not_break_a_delete(harness: Harness) -> None:
    await harness.start()
    worker_id = await start_cat(harness)
    output = harness.keys.output(worker_id)
    await harness.redis.xadd(output, {"type": "stdout", "content": "the last id"}, id=MAX_ID)
    reply = await harness.client.request("delete", worker_id=worker_id, timeout=30)
    assert reply.ok and reply.status == "STOPPED", reply
    record_key = harness.keys.worker(worker_id)
    assert await harness.redis.hget(record_key, "reason") == "deleted"
    for key in (record_key, output, harness.keys.input(worker_id)):
        assert await harness.redis.ttl(key) > 0, key  # every key still ages out
    assert await harness.redis.exists(harness.keys.heartbeat(worker_id)) == 0


# --- 6: replies cannot be lost or aimed at someone else's key ----------------------------------
async def test_a_reply_to_of_another_type_is_dead_lettered_and_left_alone(
    harness: Harness,
) -> None:
    await harness.start()
    foreign = f"{harness.keys.replies}:precious"
    await harness.redis.set(foreign, "do not touch")
    entry_id = await harness.client.push(
        {"command": "status", "worker_id": str(uuid.uuid4()), "reply_to": foreign}
    )
    dead = await dead_letter(harness, entry_id)
    assert "string" in dead["dead_reason"] and dead["error"] == "not_found", dead
    assert await harness.redis.get(foreign) == "do not touch"
    assert await harness.redis.ttl(foreign) == -1  # no expiry put on it
    await eventually(lambda: acked(harness, entry_id), "the command acknowledged")


# --- 7: a JSON bomb ----------------------------------------------------------------------------
async def test_deeply_nested_json_is_refused_at_once(harness: Harness) -> None:
    await harness.start()
    reply_to = f"{harness.keys.replies}:bomb"
    bomb = "[" * 200_000 + "]" * 200_000
    await harness.client.push(
        {
            "command": "create",
            "agent_type": "CUSTOM",
            "agent_command": '["cat"]',
            "metadata": bomb,
            "request_id": "bomb",
            "reply_to": reply_to,
        }
    )
    reply = await harness.client.wait_reply(reply_to, "bomb", timeout=10)
    assert reply.error == "invalid_command" and reply.message and "metadata" in reply.message


# --- 8: memory amplification ------------------------------------------------------------------
async def test_list_pages_and_read_only_replies_are_not_kept(harness: Harness) -> None:
    manager = await harness.start()
    ids = await seed_records(manager.store, 7)
    seen: list[str] = []
    cursor = ""
    pages = 0
    while True:
        extra = {"cursor": cursor} if cursor else {}
        page = await harness.client.request(
            "list", timeout=10, limit="3", request_id=f"page-{pages}", **extra
        )
        assert page.ok and page.workers is not None and len(page.workers) <= 3, page
        seen += [w["worker_id"] for w in page.workers]
        pages += 1
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert seen == list(reversed(ids)) and pages == 3
    # Neither list nor status replies are remembered under their request id.
    status = await harness.client.request("status", worker_id=ids[0], request_id="st-1")
    assert status.ok
    for request_id in ("page-0", "st-1"):
        assert await harness.redis.exists(harness.keys.request(request_id)) == 0
    too_many = await harness.client.request("list", timeout=10, limit="5000")
    assert too_many.error == "invalid_command"


async def test_dead_letters_are_cut_down(harness: Harness) -> None:
    await harness.start()
    fields = {f"junk{i}": "y" for i in range(60)}
    entry_id = await harness.client.push({"command": "explode", "big": "x" * 900_000, **fields})
    dead = await dead_letter(harness, entry_id)
    assert len(dead["big"]) < 3000 and "cut" in dead["big"]
    assert int(dead["dead_dropped_fields"]) > 0 and len(dead) < 40


# --- 9: a slow teardown delays nobody -----------------------------------------------------------
@pytest.mark.docker
async def test_a_slow_teardown_does_not_hold_up_other_workers(harness: Harness) -> None:
    manager = await harness.start()
    doomed = await start_cat(harness)
    released = asyncio.Event()
    original = manager.containers.remove

    async def slow_remove(worker_id: str, *, keep_volumes: bool = False) -> int | None:
        if worker_id == doomed:
            await released.wait()  # a `docker stop` that takes as long as the test wants
        return await original(worker_id, keep_volumes=keep_volumes)

    manager.containers.remove = slow_remove  # type: ignore[method-assign]
    await harness.redis.set(harness.keys.heartbeat(doomed), "not a time", ex=60)
    await eventually(
        lambda: _status_is(harness, doomed, "FAILED"), "the doomed worker judged", timeout=30
    )
    # The teardown hangs; the watcher goes on: a new worker reaches RUNNING meanwhile.
    assert manager.lifecycle.teardowns_in_progress == 1
    await start_cat(harness)
    assert not released.is_set() and manager.lifecycle.teardowns_in_progress == 1
    released.set()
    await harness.wait_container_gone(doomed)


async def _status_is(harness: Harness, worker_id: str, status: str) -> bool:
    current: str | None = await harness.redis.hget(harness.keys.worker(worker_id), "status")
    return current == status


# --- 11: a delete for a dead owner also removes the Redis user ---------------------------------
async def test_a_delete_for_a_dead_owner_removes_the_worker_acl_user(harness: Harness) -> None:
    manager = await harness.start()
    [worker_id] = await seed_records(manager.store, 1)
    await harness.redis.hset(harness.keys.worker(worker_id), "manager_id", "long-gone-manager")
    await manager.acl.create(worker_id)
    assert await manager.acl.exists(worker_id)
    reply = await harness.client.request("delete", worker_id=worker_id, timeout=30)
    assert reply.ok and reply.status == "STOPPED", reply
    assert not await manager.acl.exists(worker_id)


# --- 12: a corrupt record does not break list ---------------------------------------------------
async def test_one_corrupt_record_does_not_break_list(harness: Harness) -> None:
    manager = await harness.start()
    good, bad = await seed_records(manager.store, 2, metadata=[{"a": "b"}, {"a": "b"}])
    await harness.redis.hset(
        harness.keys.worker(bad), mapping={"metadata": "{not json", "modules": "[1, 2"}
    )
    listed = await harness.client.request("list", timeout=10)
    assert listed.ok and listed.workers is not None
    by_id = {w["worker_id"]: w for w in listed.workers}
    assert by_id[good]["metadata"] == {"a": "b"}
    assert by_id[bad]["metadata"] == {} and by_id[bad]["modules"] == []


# --- 14: an open default user is called out; workers cannot take a manager's name ----------------
async def test_an_open_default_user_is_warned_about(harness: Harness, redis_server: Any) -> None:
    from worker_manager.workers.resources.acl import WRAPPER_COMMANDS

    assert "+client|setname" not in WRAPPER_COMMANDS
    with structlog.testing.capture_logs() as logs:
        await harness.start()  # the session's server has a password: no warning
    assert not [e for e in logs if "DEFAULT USER HAS NO PASSWORD" in e["event"]]
    await harness.close()
    # For a moment, the default user takes any password (as on a fresh redis-server).
    await harness.redis.execute_command("ACL", "SETUSER", "default", "nopass")
    try:
        with structlog.testing.capture_logs() as logs:
            await harness.start(manager_id=f"{harness.settings.manager_id}-open")
    finally:
        await harness.redis.execute_command(
            "ACL", "SETUSER", "default", "resetpass", f">{redis_server.password}"
        )
    warnings = [e for e in logs if "DEFAULT USER HAS NO PASSWORD" in e["event"]]
    assert warnings and warnings[0]["log_level"] == "error"


# --- 13: who sent a command ---------------------------------------------------------------------
@pytest.mark.docker
async def test_a_registered_producer_is_the_owner_whatever_it_writes(
    harness: Harness, redis_server: Any
) -> None:
    from redis.asyncio import Redis
    from redis.exceptions import NoPermissionError

    from worker_manager.client.requests import CommandClient
    from worker_manager.workers.resources.acl import producer_rules

    await harness.start(producers=["search"])
    keys = harness.keys
    user, password = f"{keys.prefix}-producer-search", uuid.uuid4().hex
    await harness.redis.execute_command(
        "ACL", "SETUSER", user, "reset", "on", f">{password}", *producer_rules(keys, "search")
    )
    url = f"redis://{user}:{password}@{redis_server.host}:{redis_server.port}/0"
    as_search = Redis.from_url(url, decode_responses=True)
    try:
        search = CommandClient(as_search, keys, producer="search")
        reply = await search.create(
            agent_type="CUSTOM", agent_command=["cat"], metadata={"owner": "ads", "team": "x"}
        )
        assert reply.ok and reply.worker_id, reply
        record = await harness.redis.hgetall(keys.worker(reply.worker_id))
        assert record["owner"] == "search" and '"owner":"search"' in record["metadata"]
        # Its Redis user cannot write the shared stream (nor anything but its own).
        with pytest.raises(NoPermissionError):
            await as_search.xadd(keys.commands, {"command": "list"})
        # Nobody claims a registered producer's name from the shared stream.
        claimed = await harness.client.create(
            agent_type="CUSTOM", agent_command=["cat"], metadata={"owner": "search"}
        )
        assert claimed.error == "invalid_command" and claimed.message
        assert "registered producer" in claimed.message
        # A producer deletes only what it created.
        other = await harness.client.create(agent_type="CUSTOM", agent_command=["cat"])
        assert other.ok and other.worker_id
        refused = await search.request("delete", worker_id=other.worker_id, timeout=30)
        assert refused.error == "conflict", refused
        for worker_id in (reply.worker_id, other.worker_id):
            assert (await harness.client.request("delete", worker_id=worker_id, timeout=30)).ok
    finally:
        await as_search.aclose()
        await harness.redis.execute_command("ACL", "DELUSER", user)
