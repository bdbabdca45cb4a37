"""Creating, awaiting and deleting workers through the contract, as any orchestrator would."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from benchmarks.env import BenchEnv
from benchmarks.requester import Requester
from worker_manager.core.keys import Keys

TERMINAL = ("STOPPED", "FAILED")


async def lifecycle_tail(env: BenchEnv, keys: Keys | None = None) -> str:
    """The lifecycle stream's newest ID (of ``keys``' namespace; default: the run's): follow
    from here to see only what happens next."""
    newest = await env.redis.xrevrange((keys or env.keys).lifecycle, count=1)
    return str(newest[0][0]) if newest else "0-0"


async def create_worker(
    env: BenchEnv,
    agent_command: list[str],
    *,
    wait: bool = True,
    worker_id: str | None = None,
    timeout: float = 300.0,
    pooled: bool = False,
    prompt: str | None = None,
    agent_type: str = "CUSTOM",
) -> str:
    """Create a worker (CUSTOM unless said: then ``agent_command`` is not sent); with
    ``wait``, until it is RUNNING (raises if it fails).

    ``pooled``: name no worker id, so a warm pool's worker is taken when there is one (a create
    that names its worker always starts a container)."""
    after = await lifecycle_tail(env) if wait else "0-0"
    requester = Requester(env.redis, f"{env.keys.replies}:bench:{uuid.uuid4().hex}")
    fields = {"command": "create", "agent_type": agent_type}
    if agent_type == "CUSTOM":
        fields["agent_command"] = json.dumps(agent_command)
    if not pooled:
        worker_id = worker_id or str(uuid.uuid4())
        fields["worker_id"] = worker_id
    if prompt is not None:
        fields["prompt"] = prompt
    _, reply = await requester.call(env.keys.commands, fields)
    worker_id = str(reply.get("worker_id") or worker_id)
    await env.redis.delete(requester.reply_to)
    if reply.get("ok") != "true":
        raise RuntimeError(f"create refused: {reply}")
    if wait:
        await wait_status(env, worker_id, after, ("RUNNING",), timeout=timeout)
    return worker_id


async def wait_status(
    env: BenchEnv,
    worker_id: str,
    after: str,
    wanted: tuple[str, ...],
    *,
    timeout: float,
    keys: Keys | None = None,
) -> str:
    """Follow ``lifecycle`` from ``after`` until the worker reaches ``wanted`` (event-driven)."""
    deadline = time.monotonic() + timeout
    last = after
    lifecycle = (keys or env.keys).lifecycle
    while (left := deadline - time.monotonic()) > 0:
        response = await env.redis.xread(
            {lifecycle: last}, count=256, block=max(1, int(min(left, 1.0) * 1000))
        )
        for _s, entries in response or []:
            for entry_id, fields in entries:
                last = entry_id
                if fields.get("worker_id") != worker_id:
                    continue
                if fields.get("to") in wanted:
                    return str(fields["to"])
                if fields.get("to") in TERMINAL:
                    raise RuntimeError(
                        f"worker {worker_id} became {fields['to']}: {fields.get('reason', '')}"
                    )
    raise TimeoutError(f"worker {worker_id} not {wanted} within {timeout:g}s")


async def delete_worker(
    env: BenchEnv, worker_id: str, *, wait_gone: bool = False, keys: Keys | None = None
) -> None:
    space = keys or env.keys
    requester = Requester(env.redis, f"{space.replies}:bench:{uuid.uuid4().hex}")
    await requester.call(space.commands, {"command": "delete", "worker_id": worker_id})
    await env.redis.delete(requester.reply_to)
    if wait_gone:
        name = space.docker_name(worker_id)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            names = await asyncio.to_thread(
                lambda: [
                    c.name for c in env.docker.containers.list(all=True, filters={"name": name})
                ]
            )
            if name not in names:
                return
            await asyncio.sleep(0.2)
