"""Figure 9: workspaces (SPEC §8): a checkout, the tenth checkout of a repository, a resume.

A repository of about 50 MB (incompressible blobs over a few commits) is served from the host by
git's own smart-HTTP backend (``tests.support.git_server``), as in the tests.

- 9. the checkout of it into a new worker's workspace, as the manager runs it
  (``workspaces.checkout.Checkout``: a container of the worker's image, contained, through the
  egress proxy, fetching the host's mirror of a URL never seen before, then a ``--shared``
  clone), against ``git clone`` of the same URL in a container of the same image on the open
  bridge network (one container start each). Goal: ratio ≤ 1.1.
- 9b. the tenth checkout of one URL (its mirror fetched nine times already: only what is new
  moves) against the first. Goal: ratio ≤ 0.2.
- 9c. ``resume`` → RUNNING of a suspended worker against a create → RUNNING of the same shape
  (image cached), through the manager, alternately. Goal: ratio ≤ 1.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
import uuid
from pathlib import Path

import docker.errors

from benchmarks.env import AGENT_COMMAND, OWNER_LABEL, BenchEnv
from benchmarks.harness import Figure, alternate
from benchmarks.requester import Requester
from benchmarks.workers import create_worker, delete_worker, lifecycle_tail, wait_status
from tests.support.git_server import GitServer, git
from worker_manager.contract.workspace import Repository
from worker_manager.core.bridge import docker_bridge_gateway
from worker_manager.egress.control import EgressClient
from worker_manager.settings import Settings
from worker_manager.workspaces.checkout import Checkout
from worker_manager.workspaces.volumes import WorkerVolumes

#: About 50 MB of history: this many commits of one incompressible blob each.
COMMITS = 10
BLOB_BYTES = 5 * 1024 * 1024


def make_repository(root: Path) -> None:
    """``<root>/big.git``: ~50 MB of history (random bytes do not compress)."""
    work = root / "big-work"
    git("init", "-q", "-b", "main", str(work))
    for i in range(COMMITS):
        (work / f"blob{i % 3}.bin").write_bytes(os.urandom(BLOB_BYTES))
        (work / "README").write_text(f"revision {i}\n")
        git("add", "-A", cwd=work)
        git("commit", "-qm", f"revision {i}", cwd=work)
    git("clone", "-q", "--bare", str(work), str(root / "big.git"))


def alias(root: Path, name: str) -> None:
    """The same bare repository under another name: a URL no mirror has seen."""
    target = root / f"{name}.git"
    if not target.exists():
        target.symlink_to(root / "big.git")


class Bench:
    def __init__(self, env: BenchEnv, server: GitServer, image: str) -> None:
        self.env = env
        self.server = server
        self.image = image
        self.settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            redis_url=env.server.url,
            key_prefix=env.prefix,
            manager_id=env.manager_id,
            egress_run_dir=env.egress_run_dir,
            workspace_sources=[f"http://{server.host}:{server.port}"],
        )
        self.volumes = WorkerVolumes(self.settings, env.docker)
        self.egress = EgressClient(self.settings)
        self.checkout = Checkout(self.settings, env.docker, env.redis, self.volumes, self.egress)

    async def ours(self, name: str) -> float:
        """One checkout into a new worker's workspace, as the manager runs it."""
        worker_id = str(uuid.uuid4())
        started = time.perf_counter()
        await self.checkout.run(worker_id, self.image, Repository(url=self.server.url(name)))
        seconds = time.perf_counter() - started
        await asyncio.to_thread(self.volumes.remove, worker_id)
        return seconds

    def forget(self, name: str) -> None:
        """The mirror of a URL, gone (the next checkout of it is a first one)."""
        with contextlib.suppress(docker.errors.APIError):
            self.volumes.remove_mirror(self.volumes.mirror_name(self.server.url(name)))

    def direct(self, name: str) -> float:
        """``git clone`` of the URL in a container of the same image, on the open network."""
        started = time.perf_counter()
        self.env.docker.containers.run(
            self.image,
            ["git", "clone", "-q", self.server.url(name), "/tmp/clone"],
            entrypoint=[],
            user="1000:1000",
            network="bridge",
            remove=True,
            labels={OWNER_LABEL: self.env.manager_id},
        )
        return time.perf_counter() - started


async def resume_seconds(env: BenchEnv) -> float:
    """A suspended worker's ``resume`` → RUNNING (its suspend is not timed)."""
    worker_id = await create_worker(env, AGENT_COMMAND)
    requester = Requester(env.redis, f"{env.keys.replies}:bench:{uuid.uuid4().hex}")
    _, reply = await requester.call(
        env.keys.commands, {"command": "suspend", "worker_id": worker_id}
    )
    if reply.get("status") != "SUSPENDED":
        raise RuntimeError(f"suspend refused: {reply}")
    after = await lifecycle_tail(env)
    started = time.perf_counter()
    await requester.call(env.keys.commands, {"command": "resume", "worker_id": worker_id})
    await wait_status(env, worker_id, after, ("RUNNING",), timeout=120)
    seconds = time.perf_counter() - started
    await env.redis.delete(requester.reply_to)
    await delete_worker(env, worker_id, wait_gone=True)
    return seconds


async def create_seconds(env: BenchEnv) -> float:
    after = await lifecycle_tail(env)
    worker_id = str(uuid.uuid4())
    started = time.perf_counter()
    await create_worker(env, AGENT_COMMAND, wait=False, worker_id=worker_id)
    await wait_status(env, worker_id, after, ("RUNNING",), timeout=120)
    seconds = time.perf_counter() - started
    await delete_worker(env, worker_id, wait_gone=True)
    return seconds


async def workspace_figures(env: BenchEnv, runs: int, tenth_runs: int) -> list[Figure]:
    env.overlay.reset()
    probe = await create_worker(env, AGENT_COMMAND)  # the standard image, built if missing
    image = str(await env.redis.hget(env.keys.worker(probe), "image"))
    await delete_worker(env, probe, wait_gone=True)
    root = env.tmp / "repos"
    root.mkdir(exist_ok=True)
    await asyncio.to_thread(make_repository, root)
    server = await GitServer(root, host=docker_bridge_gateway()).start()
    bench = Bench(env, server, image)
    try:

        async def first(i: int) -> float:
            name = f"first{i}"
            alias(root, name)
            try:
                return await bench.ours(name)
            finally:
                await asyncio.to_thread(bench.forget, name)

        async def direct(i: int) -> float:
            alias(root, f"direct{i}")
            return await asyncio.to_thread(bench.direct, f"direct{i}")

        base, ours = await alternate(runs, direct, first)
        firsts: list[float] = []
        tenths: list[float] = []
        for i in range(tenth_runs):
            name = f"tenth{i}"
            alias(root, name)
            times = [await bench.ours(name) for _ in range(10)]
            await asyncio.to_thread(bench.forget, name)
            firsts.append(times[0])
            tenths.append(times[-1])
        created, resumed = await alternate(
            runs, lambda _i: create_seconds(env), lambda _i: resume_seconds(env)
        )
    finally:
        await bench.egress.close()
        await server.close()
    size = sum(p.stat().st_size for p in (root / "big.git").rglob("*") if p.is_file())
    return [
        Figure(
            name="workspace.checkout",
            title=f"9. checkout of a {size / 2**20:.0f} MB repository",
            unit="s",
            ours_label="the manager's checkout (mirror fetched through the proxy, shared clone)",
            baseline_label="git clone in a container of the same image, open network",
            goal="ratio_max",
            bound=1.1,
            ours=ours,
            baseline=base,
        ),
        Figure(
            name="workspace.tenth",
            title="9b. the tenth checkout of one repository",
            unit="s",
            ours_label="the tenth checkout (its mirror fetched before)",
            baseline_label="the first (a new mirror)",
            goal="ratio_max",
            bound=0.2,
            ours=tenths,
            baseline=firsts,
            note=f"first {statistics.median(firsts):.2f} s, "
            f"tenth {statistics.median(tenths):.2f} s",
        ),
        Figure(
            name="workspace.resume",
            title="9c. resume → RUNNING",
            unit="s",
            ours_label="resume of a suspended worker",
            baseline_label="create → RUNNING, image cached",
            goal="ratio_max",
            bound=1.1,
            ours=resumed,
            baseline=created,
        ),
    ]
