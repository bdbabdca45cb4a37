"""Figure 6: ``gc --dry-run`` over 1 000 image records
(:meth:`worker_manager.images.gc_execute.Collector.run`).

Records need images to be more than "forget" rows, and building 1 000 images is out of the
question, so the run builds ONE tiny image (the base plus labels: our key prefix, so the
collector treats it as ours) and gives it 1 000 ``worker:<hash>`` tags, one per record. 90 % of
the records were used an hour ago (kept), 10 % eight days ago (planned for removal: a dry run
removes nothing). The baseline is the Docker listings the plan needs, alone: what a plan cannot
get below. All the tags, and with the last one the image, are removed afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import time
from concurrent.futures import ThreadPoolExecutor

from benchmarks.env import BenchEnv
from benchmarks.harness import Figure, alternate
from worker_manager.contract.labels import LABEL_HASH
from worker_manager.settings import Settings

OLD_FRACTION = 0.1
TAG_THREADS = 8


def _unavailable(reason: str) -> Figure:
    return Figure(
        name="gc.dry_run",
        title="6. gc --dry-run, 1 000 image records",
        unit="s",
        ours_label="gc dry run",
        goal="value_max",
        bound=2.0,
        available=False,
        note=reason,
    )


def _build_tiny(env: BenchEnv, tag: str) -> str:
    from worker_manager.contract.labels import LABEL_PREFIX

    dockerfile = (
        f"FROM {env.base_image}\n"
        f'LABEL {LABEL_HASH}="bench-gc" {LABEL_PREFIX}="{env.prefix}" '
        f'bench.owner="{env.manager_id}"\n'
    )
    image, _logs = env.docker.images.build(
        fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, pull=False
    )
    return str(image.id)


async def gc_figure(env: BenchEnv, records: int, runs: int) -> Figure:
    try:
        from worker_manager.images.gc_execute import Collector
    except ImportError as exc:
        return _unavailable(f"worker_manager.images.gc_execute cannot be imported: {exc}")
    hashes = [hashlib.sha256(f"{env.token}-{i}".encode()).hexdigest() for i in range(records)]
    tags = [f"worker:{h}" for h in hashes]
    seed = f"bench-gc:{env.token}"
    env.owns_image(seed)
    image_id = await asyncio.to_thread(_build_tiny, env, seed)
    pool = ThreadPoolExecutor(TAG_THREADS)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.gather(
            *(loop.run_in_executor(pool, env.docker.api.tag, image_id, "worker", h) for h in hashes)
        )
        now = time.time()
        old = int(records * OLD_FRACTION)
        await env.redis.zadd(
            env.keys.images,
            {h: (now - 8 * 86_400 if i < old else now - 3600) for i, h in enumerate(hashes)},
        )
        settings = Settings(  # type: ignore[call-arg]  # pydantic-settings' init-only argument
            _env_file=None,
            redis_url=env.server.url,
            key_prefix=env.prefix,
            manager_id=env.manager_id,
            base_image=env.base_image,
        )
        collector = Collector(settings, env.redis, env.docker, prune_build_cache=False)
        plans: list[dict[str, int]] = []

        async def ours(_i: int) -> float:
            started = time.perf_counter()
            report = await collector.run(dry_run=True)
            seconds = time.perf_counter() - started
            actions: dict[str, int] = {}
            for row in report.rows:
                actions[row.action] = actions.get(row.action, 0) + 1
            plans.append(actions)
            return seconds

        def listings() -> None:
            api = env.docker.api
            api.images(filters={"label": LABEL_HASH})
            api.images(all=True)
            api.containers(all=True)

        async def floor(_i: int) -> float:
            started = time.perf_counter()
            await asyncio.to_thread(listings)
            return time.perf_counter() - started

        base, mine = await alternate(runs, floor, ours, warmup=1)
    finally:
        await asyncio.gather(
            *(loop.run_in_executor(pool, _untag, env, t) for t in tags),
            return_exceptions=True,
        )
        pool.shutdown()
        await asyncio.to_thread(env.remove_image, seed)
    return Figure(
        name="gc.dry_run",
        title=f"6. gc --dry-run, {records:,} image records",
        unit="s",
        ours_label="Collector.run(dry_run=True)",
        baseline_label="its Docker listings alone",
        goal="value_max",
        bound=2.0,
        extra={"goal_on": "median", "records": records, "plan_actions": plans[-1] if plans else {}},
        ours=mine,
        baseline=base,
    )


def _untag(env: BenchEnv, tag: str) -> None:
    import docker.errors

    with contextlib.suppress(docker.errors.NotFound):
        env.docker.images.remove(tag, noprune=True)
