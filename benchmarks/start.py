"""Figure 1: ``create`` → ``RUNNING``, warm (image cached) and cold (a never-seen shape).

The floor is the same image started with the Docker SDK directly (same hardening options as the
manager's containers) until its wrapper's first heartbeat: everything the manager adds (the
command round trip, the record, the ACL user, the image lookup, noticing the heartbeat) is the
difference. The cold floor adds ``docker build`` of the very Dockerfile and context the manager
generates (:func:`worker_manager.images.build.write_build_context`), with the same build options.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
import uuid
from pathlib import Path

import docker.errors
from docker.types import LogConfig

from benchmarks.env import AGENT_COMMAND, OWNER_LABEL, BenchEnv
from benchmarks.harness import Figure, alternate
from benchmarks.workers import create_worker, delete_worker, lifecycle_tail, wait_status
from worker_manager.contract.kinds import AgentType
from worker_manager.contract.labels import LABEL_HASH
from worker_manager.images.build import write_build_context
from worker_manager.images.spec import (
    RUNTIME,
    ImageSpec,
    Templates,
    has_worker_user,
    packaged_images_dir,
)


def _run_direct(env: BenchEnv, image: str, worker_id: str) -> str:
    """What the manager's container runtime asks Docker for, minus the manager."""
    container = env.docker.containers.run(
        image,
        name=f"{env.prefix}-direct-{worker_id}",
        labels={OWNER_LABEL: env.manager_id},
        entrypoint=list(RUNTIME.entrypoint),
        environment={
            **dict(RUNTIME.environment),
            "WM_WORKER_ID": worker_id,
            "WM_REDIS_URL": env.server.worker_url,
            "WM_KEY_PREFIX": env.prefix,
            "WM_AGENT_TYPE": "CUSTOM",
            "WM_AGENT_COMMAND": json.dumps(AGENT_COMMAND),
            "WM_HEARTBEAT_INTERVAL": "2",
            "WM_HEARTBEAT_TTL": "10",
            "WM_OUTPUT_MAXLEN": "10000",
        },
        working_dir=RUNTIME.working_dir,
        user="1000:1000",
        init=True,
        security_opt=["no-new-privileges:true"],
        cap_drop=["ALL"],
        mem_limit="2g",
        memswap_limit="2g",
        nano_cpus=int(1e9),
        pids_limit=512,
        network="bridge",
        log_config=LogConfig(type="json-file", config={"max-size": "10m", "max-file": "3"}),
        detach=True,
    )
    return str(container.id)


async def _until_heartbeat(env: BenchEnv, worker_id: str, timeout: float = 120.0) -> None:
    """Polled every 2 ms: finer than anything measured here, and no notification set-up."""
    key = env.keys.heartbeat(worker_id)
    deadline = time.monotonic() + timeout
    while not await env.redis.exists(key):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no heartbeat from the direct container {worker_id}")
        await asyncio.sleep(0.002)


def _remove(env: BenchEnv, container_id: str) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        env.docker.containers.get(container_id).remove(force=True, v=True)


async def direct_start(env: BenchEnv, image: str) -> float:
    worker_id = str(uuid.uuid4())
    started = time.perf_counter()
    container_id = await asyncio.to_thread(_run_direct, env, image, worker_id)
    await _until_heartbeat(env, worker_id)
    seconds = time.perf_counter() - started
    await asyncio.to_thread(_remove, env, container_id)
    return seconds


async def manager_start(env: BenchEnv) -> tuple[float, str]:
    """Seconds from the create's XADD to RUNNING in ``lifecycle``; and the worker's image."""
    worker_id = str(uuid.uuid4())
    after = await lifecycle_tail(env)
    started = time.perf_counter()
    await create_worker(env, AGENT_COMMAND, wait=False, worker_id=worker_id)
    await wait_status(env, worker_id, after, ("RUNNING",), timeout=600)
    seconds = time.perf_counter() - started
    image = await env.redis.hget(env.keys.worker(worker_id), "image")
    await delete_worker(env, worker_id, wait_gone=True)
    return seconds, str(image or "")


def _build_direct(env: BenchEnv, tag: str) -> None:
    base = env.docker.images.get(env.base_image)
    spec = ImageSpec(
        base_image=env.base_image,
        base_image_id=str(base.id),
        base_has_worker_user=has_worker_user(base.labels),
        agent_type=AgentType.CUSTOM,
        modules=(),
        templates=Templates(packaged_images_dir(), env.overlay.root),
    )
    with tempfile.TemporaryDirectory(prefix="wm-bench-build-") as tmp:
        write_build_context(spec, Path(tmp), {LABEL_HASH: spec.hash})
        for chunk in env.docker.api.build(
            path=tmp,
            tag=tag,
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
        ):
            if "error" in chunk:
                raise RuntimeError(f"docker build failed: {chunk['error']}")


async def start_figures(env: BenchEnv, warm_runs: int, cold_runs: int) -> list[Figure]:
    env.overlay.reset()
    _, image = await manager_start(env)  # builds the standard image if it is missing
    if not image:
        raise RuntimeError("the warm-up worker has no image")

    async def warm_direct(_i: int) -> float:
        return await direct_start(env, image)

    async def warm_ours(_i: int) -> float:
        return (await manager_start(env))[0]

    base, mine = await alternate(warm_runs, warm_direct, warm_ours, warmup=1)
    warm = Figure(
        name="start.warm",
        title="1. start, image cached",
        unit="s",
        ours_label="create→RUNNING",
        baseline_label="SDK run→heartbeat",
        goal="ratio_max",
        bound=1.2,
        ours=mine,
        baseline=base,
    )
    figures = [warm]
    if cold_runs <= 0:
        return figures

    ours_builds: list[float] = []
    direct_builds: list[float] = []

    async def cold_direct(i: int) -> float:
        tag = f"bench-cold:{env.token}-d{i + 10}"
        env.owns_image(tag)
        env.overlay.unique(f"{env.token}-d{i + 10}")
        try:
            started = time.perf_counter()
            await asyncio.to_thread(_build_direct, env, tag)
            seconds = time.perf_counter() - started
            direct_builds.append(round(seconds, 2))
        finally:
            env.overlay.reset()
        seconds += await direct_start(env, tag)
        await asyncio.to_thread(env.remove_image, tag)
        return seconds

    async def cold_ours(i: int) -> float:
        env.overlay.unique(f"{env.token}-m{i + 10}")
        try:
            seconds, tag = await manager_start(env)
        finally:
            env.overlay.reset()
        if tag:
            built = await env.redis.hget(
                env.keys.image(tag.removeprefix("worker:")), "build_seconds"
            )
            ours_builds.append(float(built or "nan"))
            env.owns_image(tag)
            await asyncio.to_thread(env.remove_image, tag)
        return seconds

    figures += await pool_figures(env, image, warm_runs)
    base, mine = await alternate(cold_runs, cold_direct, cold_ours, warmup=0)
    builds = {"ours_build_s": ours_builds, "direct_build_s": direct_builds}
    figures.append(
        Figure(
            name="start.cold",
            title="1b. start, new image shape (build)",
            unit="s",
            ours_label="create→RUNNING",
            baseline_label="docker build + run→heartbeat",
            goal="ratio_max",
            bound=1.1,
            ours=mine,
            baseline=base,
            extra=builds,
            note="build seconds, ours (manager's image record) vs direct: "
            f"{ours_builds} vs {direct_builds}",
        )
    )
    return figures


POOL_KEY_SHAPE = "CUSTOM"


async def _pool_ready(env: BenchEnv, timeout: float = 120.0) -> None:
    """Until the warm pool holds a worker again (refilling is not what is measured)."""
    key = env.keys.pool(env.manager_id, POOL_KEY_SHAPE)
    deadline = time.monotonic() + timeout
    while not await env.redis.scard(key):
        if time.monotonic() > deadline:
            raise TimeoutError("the warm pool never refilled")
        await asyncio.sleep(0.05)


async def pooled_start(env: BenchEnv) -> float:
    """A create without a worker id, which takes a pooled worker: XADD → RUNNING."""
    await _pool_ready(env)
    after = await lifecycle_tail(env)
    started = time.perf_counter()
    worker_id = await create_worker(env, AGENT_COMMAND, wait=False, pooled=True)
    await wait_status(env, worker_id, after, ("RUNNING",), timeout=120)
    seconds = time.perf_counter() - started
    await delete_worker(env, worker_id)
    return seconds


async def first_output(env: BenchEnv, *, pooled: bool) -> float:
    """A create with a prompt: XADD → the first ``stdout`` of its answer."""
    if pooled:
        await _pool_ready(env)
    started = time.perf_counter()
    worker_id = await create_worker(
        env, ["sh", "-c", "echo answered: $(cat)"], wait=False, pooled=pooled, prompt="hello"
    )
    stream, last = env.keys.output(worker_id), "0-0"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        response = await env.redis.xread({stream: last}, count=100, block=1000)
        for _s, entries in response or []:
            for entry_id, fields in entries:
                last = entry_id
                if fields.get("type") == "stdout":
                    seconds = time.perf_counter() - started
                    await delete_worker(env, worker_id)
                    return seconds
    raise TimeoutError(f"no stdout from {worker_id}")


async def pool_figures(env: BenchEnv, image: str, runs: int) -> list[Figure]:
    """1c and 1d, with the manager restarted with a warm pool of two CUSTOM workers (and
    restarted without one afterwards, so the other figures are not affected)."""
    await env.restart_manager(
        WM_WARM_POOL=json.dumps({POOL_KEY_SHAPE: 2}), WM_WARM_POOL_INTERVAL_SECONDS="0.2"
    )
    try:

        async def direct(_i: int) -> float:
            return await direct_start(env, image)

        async def pooled(_i: int) -> float:
            return await pooled_start(env)

        base, mine = await alternate(runs, direct, pooled, warmup=1)
        figures = [
            Figure(
                name="start.pooled",
                title="1c. start, taken from a warm pool",
                unit="s",
                ours_label="create→RUNNING (pooled)",
                baseline_label="SDK run→heartbeat",
                goal="ratio_max",
                bound=0.2,
                ours=mine,
                baseline=base,
            )
        ]

        async def cold_answer(_i: int) -> float:
            return await first_output(env, pooled=False)

        async def pooled_answer(_i: int) -> float:
            return await first_output(env, pooled=True)

        base, mine = await alternate(runs, cold_answer, pooled_answer, warmup=1)
        figures.append(
            Figure(
                name="start.first_output",
                title="1d. create with a prompt → its first stdout",
                unit="s",
                ours_label="pooled",
                baseline_label="not pooled (image cached)",
                goal="none",
                bound=0.0,
                ours=mine,
                baseline=base,
            )
        )
        return figures
    finally:
        await env.restart_manager()
