"""Figures 18, 18b and 18c: tenants (issue 27, SPEC §11), what a namespace of one's own costs and
whether one tenant's flood starves the others.

:data:`TENANTS` tenants are added to the running manager through the registry (as ``worker-manager
tenants add`` does) and each answers a ``list`` before anything is timed.

* **18**, a ``status`` round trip of a RUNNING CUSTOM worker in a tenant's namespace against one
  in the default namespace, alternately, with the same client code (:class:`Requester`).
  Goal ≤ 1.1. The note: the idle manager's CPU over 10 s before the tenants were added and
  after (what 20 namespaces' loops cost with nothing to do).
* **18b**, a create → RUNNING (CUSTOM, its image built) in a tenant against the default
  namespace, alternately; each worker is deleted after its sample (untimed, until its container
  is gone). Goal ≤ 1.1.
* **18c**, one tenant floods: at the start of a window :data:`BACKLOG` ``status`` commands are
  appended to its command stream at once (pipelined), and while they drain the ``status`` round
  trip of another tenant's worker is sampled :data:`SAMPLES_PER_WINDOW` times; the baseline is the
  same samples in a window with no backlog (the same 20 tenants served), windows alternating. A
  manager that read every tenant's commands through one queue would answer the quiet tenant
  after the backlog (seconds); each tenant's own consumer and slots leave only the CPU to share.
  Goal ≤ 1.5. The note gives how long each backlog took to drain (its commands/s).
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid

from benchmarks.env import AGENT_COMMAND, BenchEnv
from benchmarks.environments_bench import remove, timed_create
from benchmarks.harness import Figure, alternate
from benchmarks.requester import Requester
from benchmarks.teams_bench import cpu_seconds
from benchmarks.workers import delete_worker
from worker_manager.core.keys import MANAGER_GROUP, Keys

#: Tenants the manager serves during these figures (the issue's "20 tenants").
TENANTS = 20
#: Commands a flooding tenant appends at once, per window.
BACKLOG = 2000
#: The quiet tenant's status round trips per window.
SAMPLES_PER_WINDOW = 20
#: How long the idle manager's CPU is read, before and after the tenants are added.
IDLE_WINDOW = 10.0


def tenant_names() -> list[str]:
    return [f"bench{i:02d}" for i in range(TENANTS)]


async def serve_tenants(env: BenchEnv) -> list[Keys]:
    """Add the tenants to the registry; return their keys once each answers a ``list``."""
    names = tenant_names()
    await env.redis.hset(env.keys.tenants, mapping={name: "{}" for name in names})
    keys = [env.keys.for_tenant(name) for name in names]
    for tenant in keys:
        requester = Requester(env.redis, f"{tenant.replies}:bench:{uuid.uuid4().hex}")
        _, reply = await requester.call(tenant.commands, {"command": "list"}, timeout=60)
        await env.redis.delete(requester.reply_to)
        if reply.get("ok") != "true":
            raise RuntimeError(f"tenant {tenant.prefix} does not answer: {reply}")
    return keys


async def idle_cpu(env: BenchEnv, seconds: float = IDLE_WINDOW) -> float:
    """The ``serve`` process's CPU over ``seconds`` with no command sent, as a share of a core."""
    assert env.manager is not None
    before = cpu_seconds(env.manager.pid)
    await asyncio.sleep(seconds)  # the measurement's window, not a synchronisation
    return (cpu_seconds(env.manager.pid) - before) / seconds


def status_of(keys: Keys, env: BenchEnv, label: str) -> Requester:
    return Requester(env.redis, f"{keys.replies}:bench:{label}")


async def roundtrip(requester: Requester, keys: Keys, worker_id: str) -> float:
    seconds, reply = await requester.call(
        keys.commands, {"command": "status", "worker_id": worker_id}
    )
    if reply.get("ok") != "true":
        raise RuntimeError(f"status failed: {reply}")
    return seconds


async def backlog_left(env: BenchEnv, keys: Keys) -> bool:
    """Whether the manager group still has entries of ``keys.commands`` to read or finish
    (read: its last delivered id is the stream's last, which Redis 6 tells too; finished: none
    pending)."""
    groups = await env.redis.xinfo_groups(keys.commands)
    group = next((g for g in groups if g.get("name") == MANAGER_GROUP), None)
    if group is None or group.get("pending"):
        return True
    newest = await env.redis.xrevrange(keys.commands, count=1)
    return bool(newest) and str(group.get("last-delivered-id")) != str(newest[0][0])


async def drained(env: BenchEnv, keys: Keys, timeout: float = 300) -> None:
    """Until the manager group has read and acknowledged everything on ``keys.commands``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not await backlog_left(env, keys):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{keys.commands} did not drain within {timeout}s")


async def tenant_figures(env: BenchEnv, runs: int, create_runs: int, windows: int) -> list[Figure]:
    try:
        return await _tenant_figures(env, runs, create_runs, windows)
    finally:  # a later manager on this Redis must not serve the run's tenants
        await env.redis.hdel(env.keys.tenants, *tenant_names())


async def _tenant_figures(env: BenchEnv, runs: int, create_runs: int, windows: int) -> list[Figure]:
    idle_before = await idle_cpu(env)
    tenants = await serve_tenants(env)
    idle_after = await idle_cpu(env)
    flooder, quiet = tenants[0], tenants[1]
    figures: list[Figure] = []
    made: list[tuple[Keys, str]] = []
    try:
        _, default_worker = await timed_create(env, AGENT_COMMAND, {}, keys=env.keys)
        made.append((env.keys, default_worker))
        _, quiet_worker = await timed_create(env, AGENT_COMMAND, {}, keys=quiet)
        made.append((quiet, quiet_worker))
        base_client = status_of(env.keys, env, "t-default")
        ours_client = status_of(quiet, env, "t-tenant")

        async def default_status(_i: int) -> float:
            return await roundtrip(base_client, env.keys, default_worker)

        async def tenant_status(_i: int) -> float:
            return await roundtrip(ours_client, quiet, quiet_worker)

        base, mine = await alternate(runs, default_status, tenant_status, warmup=5)
        figures.append(
            Figure(
                name="tenants.status",
                title="18. status round trip in a tenant",
                unit="s",
                ours_label=f"in a tenant ({TENANTS} served)",
                baseline_label="in the default namespace",
                goal="ratio_max",
                bound=1.1,
                ours=mine,
                baseline=base,
                note=f"the idle manager's CPU: {idle_before:.1%} of a core serving no tenant, "
                f"{idle_after:.1%} serving {TENANTS} (each tenant's loops: heartbeats, "
                "eviction, reconcile, consumers' upkeep, …)",
            )
        )

        async def default_create(_i: int) -> float:
            seconds, worker_id = await timed_create(env, AGENT_COMMAND, {}, keys=env.keys)
            await remove(env, worker_id, env.keys)
            return seconds

        async def tenant_create(_i: int) -> float:
            seconds, worker_id = await timed_create(env, AGENT_COMMAND, {}, keys=quiet)
            await remove(env, worker_id, quiet)
            return seconds

        base, mine = await alternate(create_runs, default_create, tenant_create, warmup=1)
        figures.append(
            Figure(
                name="tenants.create",
                title="18b. create → RUNNING in a tenant",
                unit="s",
                ours_label="in a tenant",
                baseline_label="in the default namespace",
                goal="ratio_max",
                bound=1.1,
                ours=mine,
                baseline=base,
            )
        )
        figures.append(await flood_figure(env, flooder, quiet, quiet_worker, ours_client, windows))
    finally:
        for keys, worker_id in made:
            await delete_worker(env, worker_id, keys=keys)
    return figures


async def flood_figure(
    env: BenchEnv,
    flooder: Keys,
    quiet: Keys,
    worker_id: str,
    client: Requester,
    windows: int,
) -> Figure:
    flood_reply = f"{flooder.replies}:bench:flood"
    missing = str(uuid.uuid4())  # the flood's status commands name no worker: not_found
    quiet_samples: list[float] = []
    base_samples: list[float] = []
    drains: list[float] = []
    outlasted = 0  # windows whose backlog was still draining after the last quiet sample
    await roundtrip(client, quiet, worker_id)  # warm
    for _window in range(windows):
        for _ in range(SAMPLES_PER_WINDOW):
            base_samples.append(await roundtrip(client, quiet, worker_id))
        started = time.perf_counter()
        async with env.redis.pipeline(transaction=False) as pipe:
            for i in range(BACKLOG):
                pipe.xadd(
                    flooder.commands,
                    {
                        "command": "status",
                        "worker_id": missing,
                        "request_id": f"flood-{uuid.uuid4().hex}-{i}",
                        "reply_to": flood_reply,
                    },
                )
            await pipe.execute()
        for _ in range(SAMPLES_PER_WINDOW):
            quiet_samples.append(await roundtrip(client, quiet, worker_id))
        outlasted += await backlog_left(env, flooder)
        await drained(env, flooder)
        drains.append(time.perf_counter() - started)
        await env.redis.delete(flood_reply)
    rate = BACKLOG / statistics.median(drains)
    return Figure(
        name="tenants.flood",
        title="18c. a quiet tenant's status while another floods",
        unit="s",
        ours_label=f"one of {TENANTS} floods ({BACKLOG} at once)",
        baseline_label="no flood",
        goal="ratio_max",
        bound=1.5,
        ours=quiet_samples,
        baseline=base_samples,
        note=f"each backlog of {BACKLOG} status commands drained in a median "
        f"{statistics.median(drains):.2f} s ({rate:.0f} commands/s); in {outlasted} of "
        f"{windows} windows it outlasted the quiet tenant's {SAMPLES_PER_WINDOW} samples",
    )
