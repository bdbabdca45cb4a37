"""Graceful drain of the real process: ``worker-manager serve`` under SIGTERM and SIGUSR1.

The manager runs as a subprocess (``python -m worker_manager serve``), configured only through
``WM_*`` variables and started in an empty directory, so no ``.env`` is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.flows import Harness
from tests.support.manager_process import env_of
from worker_manager.contract.commands import ListCommand
from worker_manager.contract.reply import Reply
from worker_manager.core.keys import MANAGER_GROUP
from worker_manager.service.manager import Manager
from worker_manager.settings import Settings

pytestmark = [pytest.mark.docker, pytest.mark.redis]

CAT = json.dumps(["cat"])
GRACE = 5.0


@dataclass
class ServeProcess:
    process: asyncio.subprocess.Process
    log: list[dict[str, object]] = field(default_factory=list)
    url: str = ""
    _waiters: list[tuple[str, asyncio.Future[dict[str, object]]]] = field(default_factory=list)

    def wait_log(self, event: str) -> asyncio.Future[dict[str, object]]:
        """A future for the first log line with this ``event`` (already seen lines count)."""
        future: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()
        for line in self.log:
            if line.get("event") == event:
                future.set_result(line)
                return future
        self._waiters.append((event, future))
        return future

    async def read_log(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"event": raw.decode(errors="replace").rstrip()}
            self.log.append(line)
            for event, future in self._waiters:
                if line.get("event") == event and not future.done():
                    future.set_result(line)

    def tail(self) -> str:
        return "\n".join(json.dumps(line) for line in self.log[-30:])


def serve_env(settings: Settings) -> dict[str, str]:
    return env_of(
        settings,
        WM_WORKER_REDIS_URL=settings.resolved_worker_redis_url(),
        WM_BLOCK_MS=str(settings.block_ms),
    )


@contextlib.asynccontextmanager
async def serve_process(settings: Settings, cwd: Path) -> AsyncIterator[ServeProcess]:
    """``worker-manager serve`` in a subprocess, ready (``/readyz`` 200) when yielded."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker_manager",
        "serve",
        "--grace",
        str(GRACE),
        cwd=cwd,
        env=serve_env(settings),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    served = ServeProcess(process)
    reader = asyncio.create_task(served.read_log())
    try:
        listening = served.wait_log("http listening")
        exited = asyncio.ensure_future(process.wait())
        waiters: set[asyncio.Future[Any]] = {listening, exited}
        done, _ = await asyncio.wait(waiters, timeout=30, return_when="FIRST_COMPLETED")
        assert listening in done, f"serve did not start listening:\n{served.tail()}"
        exited.cancel()
        served.url = str(listening.result()["url"])
        await wait_http(f"{served.url}/readyz", 200, served)
        yield served
    finally:
        if process.returncode is None:
            process.kill()  # only when a test failed before its own SIGTERM
            await process.wait()
        await asyncio.wait_for(reader, 10)


async def wait_http(url: str, status: int, served: ServeProcess, timeout: float = 30) -> str:
    """Poll an endpoint until it answers ``status``: a probe has no event to wait on."""
    async with aiohttp.ClientSession() as http:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = ""
        while loop.time() < deadline:
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with http.get(url) as resp:
                    last = f"{resp.status} {await resp.text()}"
                    if resp.status == status:
                        return await resp.text()
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} did not answer {status} (last: {last}):\n{served.tail()}")


async def exit_code(served: ServeProcess, timeout: float) -> int:
    try:
        return await asyncio.wait_for(served.process.wait(), timeout)
    except TimeoutError:
        raise AssertionError(f"serve did not exit within {timeout}s:\n{served.tail()}") from None


async def create_running_worker(harness: Harness) -> str:
    reply = await harness.client.request(
        "create", agent_type="CUSTOM", agent_command=CAT, timeout=30
    )
    assert reply.ok, reply
    assert reply.worker_id
    assert await harness.wait_status(reply.worker_id, "RUNNING", "FAILED") == "RUNNING"
    return reply.worker_id


async def remove_worker(harness: Harness, worker_id: str) -> None:
    """Stop the worker through a manager of the same identity (a restart), as a user would."""
    reply = await harness.client.request("delete", worker_id=worker_id, timeout=60)
    assert reply.ok, reply
    await harness.wait_container_gone(worker_id, timeout=60)


async def command_state(harness: Harness, entry_ids: list[str]) -> dict[str, str]:
    """For each command entry: ``pending`` (delivered, not acked), ``new`` or ``acked``."""
    keys = harness.keys
    groups = await harness.redis.xinfo_groups(keys.commands)
    group = next(g for g in groups if g["name"] == MANAGER_GROUP)
    last = tuple(int(p) for p in str(group["last-delivered-id"]).split("-"))
    pending_rows = await harness.redis.xpending_range(
        keys.commands, MANAGER_GROUP, "-", "+", 10_000
    )
    pending = {row["message_id"] for row in pending_rows}
    state = {}
    for entry_id in entry_ids:
        if entry_id in pending:
            state[entry_id] = "pending"
        elif tuple(int(p) for p in entry_id.split("-")) > last:
            state[entry_id] = "new"
        else:
            state[entry_id] = "acked"
    return state


async def replies_by_request(harness: Harness, reply_to: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _id, fields in await harness.redis.xrange(reply_to):
        counts[fields["request_id"]] = counts.get(fields["request_id"], 0) + 1
    return counts


async def test_sigterm_drains_and_leaves_workers_running(
    harness: Harness, settings: Settings, tmp_path: Path
) -> None:
    worker_id = ""
    async with serve_process(settings, tmp_path) as served:
        try:
            worker_id = await create_running_worker(harness)
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"{served.url}/metrics") as resp,
            ):
                metrics = await resp.text()
            assert 'wm_workers{status="RUNNING"} 1.0' in metrics
            assert 'wm_commands_total{command="create",result="ok"} 1.0' in metrics
            builds = [
                line
                for line in metrics.splitlines()
                if line.startswith("wm_image_builds_total{") and not line.endswith(" 0.0")
            ]
            assert builds, metrics  # a hit (image existed) or a miss (built here)

            # A burst of commands, then SIGTERM straight away: some are in flight.
            reply_to = f"{harness.keys.replies}:drain"
            request_ids = [f"drain-{i}" for i in range(100)]
            async with harness.redis.pipeline(transaction=False) as pipe:
                for request_id in request_ids:
                    pipe.xadd(
                        harness.keys.commands,
                        {
                            "command": "status",
                            "worker_id": worker_id,
                            "request_id": request_id,
                            "reply_to": reply_to,
                        },
                    )
                entry_ids = [str(e) for e in await pipe.execute()]
            served.process.send_signal(signal.SIGTERM)
            assert await exit_code(served, GRACE + 10) == 0, served.tail()
        except BaseException:
            if worker_id:
                with contextlib.suppress(Exception):
                    harness.container(worker_id).remove(force=True)
            raise

    # No command is lost: each is answered, or left pending / unread for the next manager.
    answered = await replies_by_request(harness, reply_to)
    states = await command_state(harness, entry_ids)
    for request_id, entry_id in zip(request_ids, entry_ids, strict=True):
        if request_id not in answered:
            assert states[entry_id] in ("pending", "new"), (request_id, states[entry_id])
    assert all(count == 1 for count in answered.values()), answered

    # The worker is not the manager's process: it kept running.
    container = harness.container(worker_id)
    assert container is not None
    container.reload()
    assert container.status == "running"
    assert await harness.redis.hget(harness.keys.worker(worker_id), "status") == "RUNNING"

    # The same manager, restarted, answers whatever was handed back, once each.
    await harness.start()
    for request_id in request_ids:
        if request_id not in answered:
            reply = await harness.client.wait_reply(reply_to, request_id, timeout=30)
            assert reply.ok, reply
            assert reply.status == "RUNNING", reply
    assert all(count == 1 for count in (await replies_by_request(harness, reply_to)).values())
    await remove_worker(harness, worker_id)


async def test_sigusr1_drain_keeps_watching_workers(
    harness: Harness, settings: Settings, tmp_path: Path
) -> None:
    worker_id = ""
    try:
        async with serve_process(settings, tmp_path) as served:
            worker_id = await create_running_worker(harness)
            drained = served.wait_log(
                "drained: taking no commands; workers are still watched; SIGTERM to exit"
            )
            served.process.send_signal(signal.SIGUSR1)
            await asyncio.wait_for(drained, GRACE + 10)
            body = json.loads(await wait_http(f"{served.url}/readyz", 503, served))
            assert body["checks"]["intake"].startswith("draining")
            await wait_http(f"{served.url}/livez", 200, served)

            # New commands are left for other managers ...
            reply_to = f"{harness.keys.replies}:drained"
            request_id = f"after-drain-{uuid.uuid4().hex[:8]}"
            entry_id = await harness.client.push(
                {"command": "list", "request_id": request_id, "reply_to": reply_to}
            )
            # ... while the manager's workers are still watched: a crash is still recorded.
            container = harness.container(worker_id)
            assert container is not None
            await asyncio.to_thread(container.kill)
            assert await harness.wait_status(worker_id, "STOPPED", "FAILED", timeout=30)
            assert (await command_state(harness, [entry_id]))[entry_id] == "new"
            assert await harness.redis.xlen(reply_to) == 0

            served.process.send_signal(signal.SIGTERM)
            assert await exit_code(served, GRACE + 10) == 0, served.tail()

        await harness.start()
        reply = await harness.client.wait_reply(reply_to, request_id, timeout=30)
        assert reply.ok
    finally:
        if worker_id:
            leftover = harness.container(worker_id)
            if leftover is not None:
                await asyncio.to_thread(leftover.remove, force=True)


async def test_command_unfinished_within_grace_is_handed_back(
    harness: Harness, settings: Settings
) -> None:
    """A command still running when the grace ends is not acked: another manager answers it."""
    manager = Manager(settings, docker=harness.docker)
    entered = asyncio.Event()
    never = asyncio.Event()

    async def stuck_list(cmd: ListCommand) -> Reply:
        entered.set()
        await never.wait()
        raise AssertionError("unreachable")

    manager.handlers.list_workers = stuck_list  # type: ignore[method-assign]
    task = asyncio.create_task(manager.run(grace=0.5))
    try:
        await asyncio.wait_for(manager.ready.wait(), 30)
        reply_to = f"{harness.keys.replies}:handback"
        entry_id = await harness.client.push(
            {"command": "list", "request_id": "handback", "reply_to": reply_to}
        )
        await asyncio.wait_for(entered.wait(), 10)
        manager.stop.set()
        await asyncio.wait_for(task, 10)
    finally:
        manager.stop.set()
        await asyncio.wait_for(task, 10)
        await manager.close()

    assert (await command_state(harness, [entry_id]))[entry_id] == "pending"
    assert await harness.redis.xlen(reply_to) == 0

    await harness.start(manager_id=f"{settings.manager_id}-other")
    reply = await harness.client.wait_reply(reply_to, "handback", timeout=30)
    assert reply.ok and reply.workers == []
    assert (await command_state(harness, [entry_id]))[entry_id] == "acked"
