"""Figures 16-16c: fork and snapshots (issue 26, SPEC §10), against creating the worker anew.

A repository whose checkout is about 50 MB (incompressible blobs in its head commit, so the
working tree itself is that size, not only its history) is served from the host by git's own
smart-HTTP backend (``tests.support.git_server``, as figure 9), and the manager is restarted with
``WM_WORKSPACE_SOURCES`` naming it. A source worker (a shell agent in ``/workspace``) is created
from it and given an uncommitted change and an untracked file; its mirror is then cached.

* **16**, ``fork`` of the source into one copy, XADD → the copy RUNNING (the copy of its home and
  workspace by one short-lived container, the copy's record, its start), against a create of the
  same repository, its mirror cached (the checkout: a fetch of nothing new, a ``--shared`` clone,
  50 MB checked out), XADD → RUNNING, alternately. Goal ≤ 0.8.
* **16b**, ten copies in one ``fork`` (XADD → all ten RUNNING) against one copy. Goal ≤ 3×.
* **16c**, ``create`` with ``from_snapshot`` (a snapshot of the source taken untimed first)
  XADD → RUNNING, against the same create with its repository (mirror cached). Goal ≤ 0.8.

The notes give the manager's own ``worker forked copies=N seconds=S`` lines (the copy step, from
the command's start to its copies' records). Every worker, the snapshot (its two volumes,
labelled ``worker-manager.snapshot``), the mirror and the git server are removed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import statistics
import time
import uuid
from pathlib import Path

import docker.errors

from benchmarks.env import BenchEnv
from benchmarks.environments_bench import remove, timed_create
from benchmarks.harness import Figure, alternate
from benchmarks.requester import Requester
from benchmarks.workers import delete_worker, lifecycle_tail, wait_status
from tests.support.git_server import GitServer, git
from worker_manager import Client
from worker_manager.contract.labels import LABEL_MANAGER, LABEL_SNAPSHOT, LABEL_WORKER
from worker_manager.core.bridge import docker_bridge_gateway

#: The checkout's size: this many incompressible files in the head commit.
FILES = 10
FILE_BYTES = 5 * 1024 * 1024
#: The shell agent, in the checkout (as the fork tests').
SHELL = ["sh", "-c", 'cd /workspace && eval "$(cat)"']
#: The source's work: an uncommitted change and an untracked file.
CHANGE = "echo changed >> README && echo new > notes.txt && git status --porcelain"
MANY = 10


def make_repository(root: Path) -> None:
    """``<root>/wide.git``: a head commit of ~50 MB of files (random bytes do not compress)."""
    work = root / "wide-work"
    git("init", "-q", "-b", "main", str(work))
    (work / "README").write_text("revision 0\n")
    for i in range(FILES):
        (work / f"blob{i}.bin").write_bytes(os.urandom(FILE_BYTES))
    git("add", "-A", cwd=work)
    git("commit", "-qm", "the work", cwd=work)
    git("clone", "-q", "--bare", str(work), str(root / "wide.git"))


def forked_lines(log: Path, source: str, since: int) -> list[dict[str, float]]:
    """The manager's ``worker forked`` lines for ``source`` after byte ``since`` of its log."""
    try:
        with log.open("rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    found: list[dict[str, float]] = []
    for line in text.splitlines():
        if "worker forked" not in line or source not in line:
            continue
        try:
            fields = json.loads(line)
        except ValueError:
            continue
        found.append(
            {"copies": float(fields.get("copies") or 0), "seconds": float(fields["seconds"])}
        )
    return found


def running_spread(log: Path, since: int, copies: list[str]) -> tuple[float, float] | None:
    """Seconds from the ``worker forked`` line to the first and the last copy's ``worker
    running`` line (the manager's clock): where a fork's time goes after its copy step."""
    try:
        with log.open("rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    forked: float | None = None
    running: list[float] = []
    for line in text.splitlines():
        try:
            fields = json.loads(line)
            at = datetime.datetime.fromisoformat(str(fields["timestamp"])).timestamp()
        except (ValueError, KeyError):
            continue
        if fields.get("event") == "worker forked" and forked is None:
            forked = at
        elif fields.get("event") == "worker running" and fields.get("worker_id") in copies:
            running.append(at)
    if forked is None or len(running) != len(copies):
        return None
    return min(running) - forked, max(running) - forked


def log_size(log: Path) -> int:
    try:
        return log.stat().st_size
    except OSError:
        return 0


async def remove_all(env: BenchEnv, worker_ids: list[str]) -> None:
    """Delete them all, then wait (untimed) until their containers and volumes are gone."""
    for worker_id in worker_ids:
        await delete_worker(env, worker_id)

    def left() -> bool:
        for worker_id in worker_ids:
            name = f"{env.prefix}-{worker_id}"
            if env.docker.containers.list(all=True, filters={"name": name}):
                return True
            if env.docker.volumes.list(filters={"label": f"{LABEL_WORKER}={worker_id}"}):
                return True
        return False

    deadline = time.monotonic() + 180
    while await asyncio.to_thread(left) and time.monotonic() < deadline:
        await asyncio.sleep(0.3)


class ForkBench:
    def __init__(self, env: BenchEnv, url: str) -> None:
        self.env = env
        self.url = url
        self.repository = json.dumps({"url": url})
        self.source = ""
        self.copy_seconds: dict[int, list[float]] = {1: [], MANY: []}
        #: For each fork of MANY: seconds from its copy step's end to its first, last RUNNING.
        self.spreads: list[tuple[float, float]] = []

    async def create_from_repository(self) -> float:
        seconds, worker_id = await timed_create(self.env, SHELL, {"repository": self.repository})
        await remove(self.env, worker_id)
        return seconds

    async def fork(self, count: int) -> float:
        """``fork`` into ``count`` copies: XADD → all of them RUNNING; then they are deleted."""
        env = self.env
        after = await lifecycle_tail(env)
        since = log_size(env.tmp / "manager.log")
        requester = Requester(env.redis, f"{env.keys.replies}:bench:{uuid.uuid4().hex}")
        fields = {"command": "fork", "worker_id": self.source, "count": str(count)}
        started = time.perf_counter()
        _, reply = await requester.call(env.keys.commands, fields, timeout=600)
        await env.redis.delete(requester.reply_to)
        if reply.get("ok") != "true":
            raise RuntimeError(f"fork refused: {reply}")
        copies = [str(c) for c in json.loads(reply["worker_ids"])]
        try:
            for copy in copies:
                await wait_status(env, copy, after, ("RUNNING",), timeout=600)
            seconds = time.perf_counter() - started
        finally:
            await remove_all(env, copies)
        log = env.tmp / "manager.log"
        for line in forked_lines(log, self.source, since):
            self.copy_seconds.setdefault(int(line["copies"]), []).append(line["seconds"])
        if count == MANY and (spread := running_spread(log, since, copies)) is not None:
            self.spreads.append(spread)
        return seconds

    async def burst(self, count: int) -> float:
        """``count`` plain creates (image cached, no repository) XADDed at once → all RUNNING:
        what starting that many workers costs this Engine without any copy."""
        env = self.env
        after = await lifecycle_tail(env)
        ids = [str(uuid.uuid4()) for _ in range(count)]
        started = time.perf_counter()
        for worker_id in ids:
            fields = {
                "command": "create",
                "agent_type": "CUSTOM",
                "agent_command": json.dumps(SHELL),
                "worker_id": worker_id,
                "request_id": f"bench-{uuid.uuid4().hex}",
            }
            await env.redis.xadd(env.keys.commands, fields)  # type: ignore[arg-type,unused-ignore]
        try:
            for worker_id in ids:
                await wait_status(env, worker_id, after, ("RUNNING",), timeout=600)
            seconds = time.perf_counter() - started
        finally:
            await remove_all(env, ids)
        return seconds


async def fork_figures(env: BenchEnv, runs: int, many_runs: int) -> list[Figure]:
    """16, 16b and 16c; ``many_runs`` pairs for 16b (ten copies a sample)."""
    root = env.tmp / "fork-repos"
    root.mkdir(exist_ok=True)
    await asyncio.to_thread(make_repository, root)
    server = await GitServer(root, host=docker_bridge_gateway()).start()
    snapshot = f"bench-{env.token}-{uuid.uuid4().hex[:6]}"
    client = Client(env.redis, key_prefix=env.prefix)
    bench = ForkBench(env, server.url("wide"))
    snapshot_taken = False
    try:
        await env.restart_manager(
            WM_WORKSPACE_SOURCES=json.dumps([f"http://{server.host}:{server.port}"]),
            WM_LOG_LEVEL="info",  # its "worker forked" lines
        )
        # Untimed: the standard image (if missing), the mirror, the source and its work.
        warm_started = time.perf_counter()
        _, bench.source = await timed_create(env, SHELL, {"repository": bench.repository})
        warm_up = time.perf_counter() - warm_started
        status = await client.worker(bench.source).run(CHANGE, timeout=120)
        if status.exit_code != 0 or "?? notes.txt" not in status.text:
            raise RuntimeError(f"the source's change failed: {status.text[-300:]}")
        size = await workspace_size(env, bench.source)
        await bench.create_from_repository()  # untimed: the mirror's first reuse
        await bench.fork(1)  # untimed: the copy's first container

        async def one(_i: int) -> float:
            return await bench.fork(1)

        async def many(_i: int) -> float:
            return await bench.fork(MANY)

        async def anew(_i: int) -> float:
            return await bench.create_from_repository()

        created, forked = await alternate(runs, anew, one)
        singles, tens = await alternate(many_runs, one, many)
        bursts = [await bench.burst(MANY) for _ in range(many_runs)]

        requester = Requester(env.redis, f"{env.keys.replies}:bench:{uuid.uuid4().hex}")
        _, reply = await requester.call(
            env.keys.commands,
            {"command": "snapshot", "worker_id": bench.source, "name": snapshot},
            timeout=300,
        )
        await env.redis.delete(requester.reply_to)
        if reply.get("ok") != "true":
            raise RuntimeError(f"snapshot refused: {reply}")
        snapshot_taken = True

        async def from_snapshot(_i: int) -> float:
            seconds, worker_id = await timed_create(env, SHELL, {"from_snapshot": snapshot})
            await remove(env, worker_id)
            return seconds

        await from_snapshot(0)  # untimed, the first
        created_c, snapped = await alternate(runs, anew, from_snapshot)
    finally:
        with contextlib.suppress(Exception):
            if snapshot_taken:
                await client.delete_snapshot(snapshot)
            if bench.source:
                await remove(env, bench.source)
        await server.close()
        await asyncio.to_thread(remove_snapshot_volumes, env)
        await env.restart_manager()

    def copy_note(count: int) -> str:
        values = bench.copy_seconds.get(count) or []
        if not values:
            return "no 'worker forked' line read"
        return (
            f"the manager's 'worker forked copies={count}' lines: median "
            f"{statistics.median(values):.2f} s ({', '.join(f'{v:.2f}' for v in values)})"
        )

    mb = f"{size / 1e6:.0f} MB"
    return [
        Figure(
            name="forks.fork",
            title=f"16. fork of a worker with a {mb} workspace",
            unit="s",
            ours_label="fork (1 copy) XADD → the copy RUNNING",
            baseline_label="create of the same repository, mirror cached, XADD → RUNNING",
            goal="ratio_max",
            bound=0.8,
            ours=forked,
            baseline=created,
            note=f"{copy_note(1)}; the source's first create (its mirror fetched), untimed: "
            f"{warm_up:.1f} s",
            extra={"workspace_bytes": size, "copy_seconds": bench.copy_seconds},
        ),
        Figure(
            name="forks.ten",
            title=f"16b. {MANY} copies in one fork",
            unit="s",
            ours_label=f"fork ({MANY} copies) XADD → all RUNNING",
            baseline_label="fork (1 copy) XADD → RUNNING",
            goal="ratio_max",
            bound=3.0,
            ours=tens,
            baseline=singles,
            note=f"{copy_note(MANY)}; after the copy, the first and the last copy RUNNING "
            f"(medians) {spread_text(bench.spreads)}; {MANY} plain creates XADDed at once "
            f"(image cached, no repository) → all RUNNING: median "
            f"{statistics.median(bursts):.2f} s ({', '.join(f'{b:.2f}' for b in bursts)})",
            extra={"bursts": bursts, "running_spread": bench.spreads},
        ),
        Figure(
            name="forks.snapshot",
            title="16c. create from a snapshot",
            unit="s",
            ours_label="create --from-snapshot XADD → RUNNING",
            baseline_label="create of the same repository, mirror cached, XADD → RUNNING",
            goal="ratio_max",
            bound=0.8,
            ours=snapped,
            baseline=created_c,
        ),
    ]


def spread_text(spreads: list[tuple[float, float]]) -> str:
    if not spreads:
        return "(no log lines read)"
    first = statistics.median(s[0] for s in spreads)
    last = statistics.median(s[1] for s in spreads)
    return f"+{first:.2f} s and +{last:.2f} s"


async def workspace_size(env: BenchEnv, worker_id: str) -> int:
    """The bytes of the worker's workspace volume (its checkout and the change)."""
    client = Client(env.redis, key_prefix=env.prefix)
    result = await client.worker(worker_id).run("du -sb /workspace | cut -f1", timeout=60)
    text = result.text.strip()
    return int(text) if text.isdigit() else 0


def remove_snapshot_volumes(env: BenchEnv) -> None:
    """Any snapshot volume of this run's manager left behind (``delete_snapshot`` removes them)."""
    for volume in env.docker.volumes.list(filters={"label": LABEL_SNAPSHOT}):
        labels = volume.attrs.get("Labels") or {}
        if labels.get(LABEL_MANAGER) == env.manager_id:
            with contextlib.suppress(docker.errors.APIError):
                volume.remove(force=True)
