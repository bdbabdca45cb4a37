"""A Redis restart under a running manager: commands keep being answered (after a wait that is
measured), the worker keeps working, and what Redis lost (ACL users, consumer groups) comes back.

The first restart stands for a Redis with persistence but without an ACL file (the common case):
its data is saved and loaded before it answers anyone, the ACL users are lost. The second one
loses everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tests.support.flows import Harness
from tests.support.redis_server import RedisServer
from worker_manager.client.requests import ReplyTimeout

pytestmark = [pytest.mark.docker, pytest.mark.redis]

CAT = json.dumps(["cat"])
TRANSIENT = (ReplyTimeout, RedisConnectionError, RedisTimeoutError, ConnectionError, ResponseError)


class Prober:
    """Sends ``status`` commands back to back; a command lost with Redis is sent again (same
    request id) until answered. ``waits`` holds, per command, first send to reply."""

    def __init__(self, harness: Harness, worker_id: str) -> None:
        self._harness = harness
        self._worker_id = worker_id
        self.waits: list[float] = []
        self.answered = asyncio.Event()
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            request_id = f"probe-{uuid.uuid4().hex}"
            started = loop.time()
            while True:
                try:
                    await self._harness.client.request(
                        "status", worker_id=self._worker_id, request_id=request_id, timeout=2
                    )
                    break
                except TRANSIENT:
                    await asyncio.sleep(0.05)  # a client's back-off before sending again
            self.waits.append(loop.time() - started)
            self.answered.set()

    async def close(self) -> float:
        self._stop.set()
        await self._task
        return max(self.waits)

    async def cancel(self) -> None:
        """A failed test's prober must not outlive it (it would keep the session's loop busy)."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def wait_for(check: Any, what: str, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.1)


async def test_redis_restart_under_a_running_manager(
    harness: Harness, redis_server: RedisServer, record_property: Any
) -> None:
    manager = await harness.start(reconcile_interval_seconds=1)
    reply = await harness.client.create(agent_type="CUSTOM", agent_command=CAT)
    worker_id = str(reply.worker_id)
    assert await harness.wait_status(worker_id, "RUNNING", "FAILED") == "RUNNING"
    user = harness.keys.acl_user(worker_id)

    # 1. Restart with the data kept, the ACL users lost.
    prober = Prober(harness, worker_id)
    try:
        await asyncio.wait_for(prober.answered.wait(), 10)
        await asyncio.to_thread(redis_server.restart, keep_data=True)
        # The test's own pooled connections died with the server (the manager reconnects itself).
        await harness.redis.connection_pool.disconnect()

        async def user_back() -> bool:
            return bool(await harness.redis.acl_getuser(user))

        await wait_for(user_back, "the worker's ACL user was not re-created")
        input_id = await harness.client.send_input(worker_id, "still there?")
        events = await harness.events_until_done(worker_id, input_id=input_id, timeout=30)
        stdout = [e for e in events if e.get("input_id") == input_id and e["type"] == "stdout"]
        assert stdout
        status = await harness.client.request("status", worker_id=worker_id)
        assert status.status == "RUNNING"  # not heartbeat_lost: the outage was waited out
        longest_kept = await prober.close()
    finally:
        await prober.cancel()
    assert manager.watcher.redis_restarts == 1

    # 2. Restart with everything lost: the consumer group comes back, commands are answered,
    # and the container whose record is gone is removed as an orphan.
    prober = Prober(harness, worker_id)
    try:
        await asyncio.wait_for(prober.answered.wait(), 10)
        await asyncio.to_thread(redis_server.restart)
        await harness.redis.connection_pool.disconnect()
        answer = await harness.client.request("status", worker_id=worker_id, timeout=30)
        assert answer.error == "not_found"
        await harness.wait_container_gone(worker_id, timeout=30)
        longest_wiped = await prober.close()
    finally:
        await prober.cancel()

    record_property("longest_command_wait_kept_s", round(longest_kept, 3))
    record_property("longest_command_wait_wiped_s", round(longest_wiped, 3))
    print(f"longest command wait: {longest_kept:.3f}s (data kept), {longest_wiped:.3f}s (wiped)")
    assert longest_kept < 15 and longest_wiped < 15
