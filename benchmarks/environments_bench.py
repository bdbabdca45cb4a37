"""Figures 13-15: what an environment, a service and the DOCKER module add to a worker's start.

All three time what figure 1 times, a ``create`` XADD → ``RUNNING`` in ``lifecycle``, alternately
with figure 1's own create (a plain CUSTOM create, its image cached) in the same minutes:

* **13**, a CUSTOM create naming an environment of the catalogue (``WM_ENVIRONMENTS``, a spec of
  variables only, unique to the run, so no package mirror is needed), its image built untimed
  first: what the environment's lookup (the catalogue, the spec's hash, the image's existence)
  adds to a create whose image is cached (goal ≤ 1.1);
* **14**, the same CUSTOM create with one service (``python3 -m http.server`` on
  ``127.0.0.1:7000``, from an environment of the catalogue, its image built untimed first): its
  container started in the worker's namespace and its port answering before RUNNING (goal ≤ 1.3;
  ``WM_SERVICE_START_TIMEOUT_SECONDS=30``, so that a service never found ready shows in 30 s);
  **14b**, the same service without ``port`` (ready when its process still runs
  ``SETTLE_SECONDS`` after its start), reported: the path that does not probe;
* **15**, a ``DOCKER`` worker (``WM_DOCKER_MODULE=rootless``, the default; the base preloaded
  through ``WM_DOCKER_IMAGES``; the engine's image, an environment built through the egress
  service, built untimed first): its start, with the manager's own breakdown (the ``docker
  engine ready`` log line: the engine answering, the preload), then its agent's first
  ``docker run --rm <base> true`` (15b) against an input that runs ``true`` on the same worker
  (reported, no goal).

The manager is restarted with each figure's settings and restarted without them afterwards, so
the other figures are not affected. Every image built for a spec of the run is removed at the
end; the engine's image is the deployment's ordinary cache (one spec for every manager) and is
kept, like the standard CUSTOM image.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.env import AGENT_COMMAND, BenchEnv
from benchmarks.envbuild_bench import build_egress
from benchmarks.harness import Figure, alternate
from benchmarks.requester import Requester
from benchmarks.workers import delete_worker, lifecycle_tail, wait_status
from worker_manager import Client
from worker_manager.contract.labels import LABEL_SERVICE_OF, LABEL_WORKER
from worker_manager.core.keys import Keys
from worker_manager.services.plan import SETTLE_SECONDS

#: The catalogue's names for the run's environments.
ENV_NAME = "bench-env"
SERVICE_ENV_NAME = "bench-svc"
SERVICE_PORT = 7000
#: A service the base can run (it has python3): answers on its port as soon as it listens.
SERVICE = {
    "name": "kv",
    "image": SERVICE_ENV_NAME,
    "command": [
        "python3",
        "-m",
        "http.server",
        str(SERVICE_PORT),
        "--bind",
        "127.0.0.1",
    ],
    "port": SERVICE_PORT,
}
SERVICE_NO_PORT = {k: v for k, v in SERVICE.items() if k != "port"}
SERVICE_TIMEOUT = 30
#: Figure 15's agent: each input is a shell line.
SHELL = ["sh", "-c", 'eval "$(cat)"']


async def timed_create(
    env: BenchEnv,
    agent_command: list[str],
    extra: dict[str, str],
    *,
    timeout: float = 600,
    keys: Keys | None = None,
) -> tuple[float, str]:
    """Figure 1's create with ``extra`` fields (in ``keys``' namespace; default: the run's):
    seconds from its XADD to RUNNING, and its id."""
    space = keys or env.keys
    worker_id = str(uuid.uuid4())
    after = await lifecycle_tail(env, space)
    requester = Requester(env.redis, f"{space.replies}:bench:{uuid.uuid4().hex}")
    fields = {
        "command": "create",
        "agent_type": "CUSTOM",
        "agent_command": json.dumps(agent_command),
        "worker_id": worker_id,
        **extra,
    }
    started = time.perf_counter()
    _, reply = await requester.call(space.commands, fields)
    if reply.get("ok") != "true":
        await env.redis.delete(requester.reply_to)
        raise RuntimeError(f"create refused: {reply}")
    try:
        await wait_status(env, worker_id, after, ("RUNNING",), timeout=timeout, keys=space)
        seconds = time.perf_counter() - started
    except (RuntimeError, TimeoutError):
        await remove(env, worker_id, space)
        raise
    finally:
        await env.redis.delete(requester.reply_to)
    return seconds, worker_id


async def remove(env: BenchEnv, worker_id: str, keys: Keys | None = None) -> None:
    """Delete, and wait (untimed) until its containers and volumes are gone, so that the next
    sample does not share the machine with this one's removal."""
    await delete_worker(env, worker_id, wait_gone=True, keys=keys)

    def left() -> bool:
        beside = env.docker.containers.list(
            all=True, filters={"label": f"{LABEL_SERVICE_OF}={worker_id}"}
        )
        volumes = env.docker.volumes.list(filters={"label": f"{LABEL_WORKER}={worker_id}"})
        return bool(beside or volumes)

    deadline = time.monotonic() + 120
    while await asyncio.to_thread(left) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)


async def own_built_images(env: BenchEnv, token: str) -> list[str]:
    """The images this run's manager built for specs of the run (its token in their spec):
    removed at the end. The engine's image and the standard image carry no token: kept."""
    owned: list[str] = []
    for image_hash in await env.redis.zrange(env.keys.images, 0, -1):
        record = await env.redis.hgetall(env.keys.image(str(image_hash)))
        if record.get("built_by") == env.manager_id and token in record.get("spec", ""):
            env.owns_image(record["tag"])
            owned.append(record["tag"])
    return owned


def catalogue(token: str) -> dict[str, Any]:
    """Two environments of variables only, unique to the run: built from the base, no mirror."""
    return {
        ENV_NAME: {"env": {"BENCH_ENV": token}},
        SERVICE_ENV_NAME: {"env": {"BENCH_SVC": token}},
    }


async def plain(env: BenchEnv, agent_command: list[str] = AGENT_COMMAND) -> float:
    """Figure 1's create (image cached): the baseline of all three."""
    seconds, worker_id = await timed_create(env, agent_command, {})
    await remove(env, worker_id)
    return seconds


# --- 13 and 14 -------------------------------------------------------------------------------
async def environment_figures(
    env: BenchEnv, runs: int, wanted: frozenset[str] = frozenset({"envcreate", "services"})
) -> list[Figure]:
    """13 (``envcreate``), 14 and 14b (``services``), or those of them ``wanted`` names."""
    token = f"{env.token}-{uuid.uuid4().hex[:6]}"
    await env.restart_manager(
        WM_ENVIRONMENTS=json.dumps(catalogue(token)),
        # http.server listens in well under a second: a miss shows in 30 s, not the default 120.
        WM_SERVICE_START_TIMEOUT_SECONDS=str(SERVICE_TIMEOUT),
    )
    figures: list[Figure] = []
    try:
        await plain(env)  # untimed: the standard image, if missing
        if "envcreate" in wanted:
            figures.append(await _versus_plain(env, runs, ENVCREATE, {"environment": ENV_NAME}))
        if "services" in wanted:
            for figure, service in ((SERVICES, SERVICE), (SERVICES_NO_PORT, SERVICE_NO_PORT)):
                extra = {"services": json.dumps([service])}
                figures.append(await _versus_plain(env, runs, figure, extra))
    finally:
        await own_built_images(env, token)
        await env.restart_manager()
    return figures


#: Figures 13, 14 and 14b as they print: (name, title, ours, goal bound or nan).
ENVCREATE = (
    "envcreate",
    "13. create with a cached environment",
    "create naming a catalogue environment → RUNNING",
    1.1,
)
SERVICES = (
    "services",
    "14. create with one service",
    f"create + http.server service (port {SERVICE_PORT} probed) → RUNNING",
    1.3,
)
SERVICES_NO_PORT = (
    "services.noport",
    "14b. create with one service, no port",
    f"create + the same service without 'port' (up {SETTLE_SECONDS:g} s) → RUNNING",
    math.nan,
)


async def _versus_plain(
    env: BenchEnv, runs: int, figure: tuple[str, str, str, float], extra: dict[str, str]
) -> Figure:
    """``runs`` creates with ``extra`` alternating with figure 1's create, after one untimed
    create with ``extra`` (which builds its images); not available when that one fails."""
    name, title, ours_label, bound = figure
    shown = Figure(
        name=name,
        title=title,
        unit="s",
        ours_label=ours_label,
        baseline_label="figure 1's create (image cached)",
        goal="none" if math.isnan(bound) else "ratio_max",
        bound=bound,
    )
    try:
        _, worker_id = await timed_create(env, AGENT_COMMAND, extra, timeout=900)
    except (RuntimeError, TimeoutError) as exc:
        shown.available = False
        shown.note = f"not measured: the untimed first create failed: {str(exc)[:300]}"
        return shown
    await remove(env, worker_id)

    async def ours(_i: int) -> float:
        seconds, worker_id = await timed_create(env, AGENT_COMMAND, extra)
        await remove(env, worker_id)
        return seconds

    async def baseline(_i: int) -> float:
        return await plain(env)

    shown.baseline, shown.ours = await alternate(runs, baseline, ours, warmup=1)
    return shown


# --- 15 --------------------------------------------------------------------------------------
def engine_lines(log: Path, worker_id: str) -> dict[str, float]:
    """The manager's ``docker engine ready`` line for this worker: seconds, preload."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return {}
    for line in reversed(text.splitlines()):
        if worker_id not in line or "docker engine ready" not in line:
            continue
        try:
            fields = json.loads(line)
        except ValueError:
            continue
        return {
            "engine_s": float(fields.get("seconds") or 0),
            "preload_s": float(fields.get("preload_seconds") or 0),
            "preloaded_mb": round(float(fields.get("preloaded_bytes") or 0) / 1e6, 1),
        }
    return {}


async def timed_input(client: Client, worker_id: str, line: str) -> float:
    """An input's round trip: pushed → its ``done``; raises unless it exited 0."""
    started = time.perf_counter()
    result = await client.worker(worker_id).run(line, timeout=300)
    seconds = time.perf_counter() - started
    if result.exit_code != 0:
        raise RuntimeError(f"{line!r} exited {result.exit_code}: {result.text[-300:]}")
    return seconds


async def docker_figures(env: BenchEnv, runs: int) -> list[Figure]:
    cas = sorted(str(p) for p in Path("/usr/local/share/ca-certificates").glob("*.crt"))
    await env.restart_manager(
        WM_DOCKER_IMAGES=json.dumps([env.base_image]),
        WM_BUILD_EGRESS=json.dumps(build_egress()),
        WM_BUILD_CA_FILES=json.dumps(cas),
        WM_BUILD_TIMEOUT_SECONDS="900",
        WM_LOG_LEVEL="info",
    )
    client = Client(env.redis, key_prefix=env.prefix)
    inner_run = f"docker run --rm {env.base_image} true"
    breakdown: list[dict[str, float]] = []
    firsts: list[float] = []
    seconds_runs: list[float] = []
    trues: list[float] = []
    log = env.tmp / "manager.log"
    try:
        # Untimed: the engine's image (a build through the egress service, when missing).
        warm_started = time.perf_counter()
        _, worker_id = await timed_create(env, SHELL, {"modules": '["DOCKER"]'}, timeout=1800)
        warm_up = time.perf_counter() - warm_started
        await timed_input(client, worker_id, inner_run)
        await remove(env, worker_id)

        async def ordinary(_i: int) -> float:
            return await plain(env, SHELL)

        async def with_docker(_i: int) -> float:
            seconds, worker_id = await timed_create(env, SHELL, {"modules": '["DOCKER"]'})
            try:
                firsts.append(await timed_input(client, worker_id, inner_run))
                seconds_runs.append(await timed_input(client, worker_id, inner_run))
                trues.append(await timed_input(client, worker_id, "true"))
                breakdown.append(engine_lines(log, worker_id))
            finally:
                await remove(env, worker_id)
            return seconds

        base, mine = await alternate(runs, ordinary, with_docker, warmup=0)
    finally:
        await env.restart_manager()

    def median_of(key: str) -> float:
        values = [b[key] for b in breakdown if key in b]
        return round(statistics.median(values), 2) if values else float("nan")

    engine, preload = median_of("engine_s"), median_of("preload_s")
    mb = median_of("preloaded_mb")
    start_note = (
        f"the manager's 'docker engine ready' lines (median): the engine answering "
        f"{engine} s, the preload of {mb} MB {preload} s; first DOCKER create, untimed "
        f"(the engine's image built if missing): {warm_up:.1f} s"
    )
    second = statistics.median(seconds_runs) if seconds_runs else float("nan")
    return [
        Figure(
            name="dockerin",
            title="15. DOCKER worker's start",
            unit="s",
            ours_label="create with DOCKER → RUNNING",
            baseline_label="an ordinary worker's create (image cached)",
            ours=mine,
            baseline=base,
            note=start_note,
            extra={"engine_ready": breakdown, "warm_up_s": round(warm_up, 2)},
        ),
        Figure(
            name="dockerin.run",
            title="15b. its first inner docker run",
            unit="s",
            ours_label=f"input '{inner_run}' → done",
            baseline_label="input 'true' → done, same worker",
            ours=firsts,
            baseline=trues,
            note=f"the second inner docker run: median {second:.2f} s "
            f"({', '.join(f'{s:.2f}' for s in seconds_runs)})",
            extra={"second_run_s": seconds_runs},
        ),
    ]
