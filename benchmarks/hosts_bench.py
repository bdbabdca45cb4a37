"""Figure 11: a fleet across hosts — creates per second with 1, 2 and 3 hosts, and the time from
a host's loss to its workers' ``host_lost``.

The hosts are the suite's test bed (``tests/support/testbed.py``): Docker-in-Docker containers,
each with its own Engine and its own ``worker-manager serve``, on a private Redis. They share
this machine's cores, so the Engines' own scaling is measured beside ours: the same number of
containers of the same image started with ``docker run -d`` inside the same hosts at once.

- 11 (2 and 3 hosts): a burst of ``PER_HOST`` creates per host on the shared stream, XADD of
  the first → the last RUNNING; creates/s against N × the rate with one host (goal ≥ 0.8).
  Beside it, in the note, the Engines' own ratio for the same burst.
- 11b: one host killed (``docker kill``: its Engine, its manager and its workers at once) with
  a worker on it → the worker FAILED ``host_lost``, judged by the other host; goal ≤ presence
  TTL + heartbeat TTL + 5 s.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import docker
from pydantic import SecretStr
from redis.asyncio import Redis

from benchmarks.harness import Figure
from tests.support.redis_server import RedisServer
from tests.support.testbed import HOST_IMAGE_REPO, Host, Testbed, host_image, python_matches
from worker_manager.contract.kinds import AgentType
from worker_manager.core.keys import Keys
from worker_manager.images.service import ImageService
from worker_manager.settings import BOOTSTRAP_BASE_TAG, Settings

PER_HOST = 4
PRESENCE_TTL = 3
HEARTBEAT_TTL = 3
CAT = json.dumps(["cat"])
CREATE = {"agent_type": "CUSTOM", "agent_command": CAT}


async def hosts_figures(
    runs: int, loss_runs: int, base_image: str = BOOTSTRAP_BASE_TAG
) -> list[Figure]:
    client = docker.from_env(timeout=300)
    problem = python_matches(client, base_image)
    if problem:
        return [
            Figure(
                name="hosts.creates",
                title="11. creates/s across hosts",
                unit="/s",
                ours_label="",
                available=False,
                note=problem,
            )
        ]
    tmp = Path(tempfile.mkdtemp(prefix="wm-bench-hosts-"))
    server = RedisServer(tmp / "redis", binary=shutil.which("redis-server") or "")
    server.start()
    token = secrets.token_hex(3)
    prefix = f"benchh{token}"
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        redis_url=server.url,
        key_prefix=prefix,
        manager_id=f"bench-{token}",
        base_image=base_image,
        worker_secret=SecretStr(secrets.token_hex(32)),
    )
    redis = Redis.from_url(server.url, decode_responses=True, max_connections=256)
    bed = Testbed(
        client,
        token=token,
        base_image=base_image,
        manager_id_prefix=f"bench-{token}",
        manager_env={
            "WM_REDIS_URL": server.worker_url,
            "WM_WORKER_REDIS_URL": server.worker_url,
            "WM_KEY_PREFIX": prefix,
            "WM_WORKER_SECRET": settings.worker_secret.get_secret_value(),
            "WM_BASE_IMAGE": base_image,
            "WM_EGRESS": "off",
            "WM_MAX_WORKERS": "50",
            "WM_CONTAINER_MEMORY": "256m",
            "WM_PRESENCE_TTL_SECONDS": str(PRESENCE_TTL),
            "WM_HEARTBEAT_TTL_SECONDS": str(HEARTBEAT_TTL),
            "WM_HEARTBEAT_INTERVAL_SECONDS": "1",
            "WM_LOG_LEVEL": "warning",
        },
    )
    host_tag = ""
    try:
        host_tag = await asyncio.to_thread(host_image, client, base_image)
        tag = (await ImageService(settings, redis, client).ensure(AgentType.CUSTOM, [])).tag
        await asyncio.to_thread(bed.start, 3, [tag])
        figures = await _scaling(bed, redis, Keys(prefix), tag, runs)
        figures.append(await _loss(bed, redis, Keys(prefix), loss_runs))
        return figures
    finally:
        await asyncio.to_thread(bed.close)
        await redis.aclose()
        server.stop()
        if host_tag:
            for image in client.images.list(name=HOST_IMAGE_REPO):
                client.images.remove(str(image.id), force=True)
        client.close()
        shutil.rmtree(tmp, ignore_errors=True)


async def _scaling(bed: Testbed, redis: Redis, keys: Keys, tag: str, runs: int) -> list[Figure]:
    ours: dict[int, list[float]] = {1: [], 2: [], 3: []}
    engines: dict[int, list[float]] = {1: [], 2: [], 3: []}
    for _ in range(runs):
        for count in (1, 2, 3):
            await _managers(bed, count)
            rate, ids = await _burst(redis, keys, count * PER_HOST)
            ours[count].append(rate)
            await _delete(redis, keys, ids)
            engines[count].append(await asyncio.to_thread(_docker_burst, bed.hosts[:count], tag))
    figures = []
    for count in (2, 3):
        base = [count * rate for rate in ours[1]]
        engine_ratio = statistics.median(engines[count]) / (count * statistics.median(engines[1]))
        figures.append(
            Figure(
                name=f"hosts.creates.{count}",
                title=f"11. creates/s, {count} hosts vs 1",
                unit="/s",
                ours_label=f"{count} hosts, {PER_HOST} creates each at once",
                baseline_label=f"{count} × one host's rate",
                goal="ratio_min",
                bound=0.8,
                higher_is_better=True,
                ours=ours[count],
                baseline=base,
                note=f"the Engines' own ratio on this machine (docker run -d, same burst): "
                f"{engine_ratio:.2f}; ours over theirs: "
                f"{statistics.median(ours[count]) / statistics.median(base) / engine_ratio:.2f}"
                " (≥ 1: the manager adds no limit of its own to what the hosts' cores allow)",
                extra={"engine_ratio": engine_ratio, "engine_rates": engines},
            )
        )
    return figures


async def _managers(bed: Testbed, count: int) -> None:
    """Managers running on the first ``count`` hosts only (``bed.start`` started all)."""
    for host in bed.hosts[count:]:
        if host.manager_running:
            await asyncio.to_thread(bed.stop_manager, host)
    for host in bed.hosts[:count]:
        if not host.manager_running:
            await asyncio.to_thread(bed.start_manager, host)
            await asyncio.to_thread(bed.wait_manager, host)
    await asyncio.sleep(PRESENCE_TTL)  # the stopped ones have left; the presence values settle


async def _burst(redis: Redis, keys: Keys, count: int) -> tuple[float, list[str]]:
    """``count`` creates at once → all RUNNING: creates per second, and the workers."""
    reply_to = f"{keys.replies}:bench:hosts"
    started = time.monotonic()
    ids = []
    for _ in range(count):
        worker_id = str(uuid.uuid4())
        ids.append(worker_id)
        await _command(redis, keys.commands, reply_to, "create", worker_id, **CREATE)
    deadline = started + 600
    while True:
        statuses = [await redis.hget(keys.worker(w), "status") for w in ids]
        if all(s == "RUNNING" for s in statuses):
            return count / (time.monotonic() - started), ids
        if any(s in ("FAILED", "STOPPED") for s in statuses):
            raise RuntimeError(f"a create failed: {statuses}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"creates not RUNNING within 600 s: {statuses}")
        await asyncio.sleep(0.05)


async def _delete(redis: Redis, keys: Keys, live: list[str]) -> None:
    """The burst's workers deleted (and waited for), so the next burst starts from nothing."""
    reply_to = f"{keys.replies}:bench:hosts-delete"
    for worker_id in live:
        await _command(redis, keys.commands, reply_to, "delete", worker_id)
    deadline = time.monotonic() + 300
    while live:
        live = [w for w in live if await redis.hget(keys.worker(w), "status") != "STOPPED"]
        if time.monotonic() > deadline:
            raise RuntimeError(f"deletes not done within 300 s: {live}")
        await asyncio.sleep(0.1)


async def _command(
    redis: Redis, stream: str, reply_to: str, command: str, worker_id: str, **fields: str
) -> None:
    """One command entry, as a producer writes it (the replies are not read: the records are)."""
    body = {"command": command, "request_id": uuid.uuid4().hex, "reply_to": reply_to}
    await redis.xadd(stream, {**body, "worker_id": worker_id, **fields})


def _docker_burst(hosts: list[Host], tag: str) -> float:
    """The Engines alone: ``PER_HOST`` containers of the worker image per host, started at
    once with ``docker run -d`` (``sleep``), until all run; containers per second."""
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [
                "docker",
                "exec",
                host.name,
                "docker",
                "run",
                "-d",
                "--label",
                "bench=engine",
                "--memory",
                "256m",
                "--entrypoint",
                "sleep",
                tag,
                "600",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for host in hosts
        for _ in range(PER_HOST)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"docker run failed: {err.decode(errors='replace')}")
    rate = len(procs) / (time.monotonic() - started)
    for host in hosts:
        ids = host.exec("docker", "ps", "-aq", "--filter", "label=bench=engine").split()
        if ids:
            host.exec("docker", "rm", "-f", *ids)
    return rate


async def _loss(bed: Testbed, redis: Redis, keys: Keys, runs: int) -> Figure:
    await _managers(bed, 2)
    victim, survivor = bed.hosts[1], bed.hosts[0]
    samples = []
    for _ in range(runs):
        worker_id = str(uuid.uuid4())
        await _command(  # on the victim's own stream: the worker lands on it
            redis,
            keys.manager_commands(victim.manager_id),
            f"{keys.replies}:bench:loss",
            "create",
            worker_id,
            **CREATE,
        )
        while await redis.hget(keys.worker(worker_id), "status") != "RUNNING":
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # a steady state: presence and heartbeats refreshed
        await asyncio.to_thread(bed.kill, victim)
        killed = time.monotonic()
        while await redis.hget(keys.worker(worker_id), "reason") != "host_lost":
            if time.monotonic() - killed > 120:
                raise RuntimeError("the lost host's worker was not judged within 120 s")
            await asyncio.sleep(0.05)
        samples.append(time.monotonic() - killed)
        await asyncio.to_thread(bed.revive, victim)
    assert survivor.manager_id  # it judged: the only other manager running
    return Figure(
        name="hosts.loss",
        title="11b. host killed → its worker host_lost",
        unit="s",
        ours_label=f"docker kill of its host → FAILED host_lost (presence TTL {PRESENCE_TTL} s, "
        f"heartbeat TTL {HEARTBEAT_TTL} s)",
        goal="value_max",
        bound=PRESENCE_TTL + HEARTBEAT_TTL + 5,
        ours=samples,
    )
