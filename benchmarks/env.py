"""Everything a benchmark run owns: a private redis-server, a manager process, the echo consumer.

The manager runs as a real ``python -m worker_manager serve`` subprocess (production defaults,
its own key prefix and a ``bench-`` manager id), so its memory can be read from
``/proc/<pid>/status`` and the benchmark's own clients do not share its event loop. The echo
consumer, the control-plane baseline, runs as a subprocess for the same reason.

:meth:`BenchEnv.close` removes every container and image the run created, also after a failure
or Ctrl-C: containers by the manager-id label, images by the tags recorded as they were built.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
from redis.asyncio import Redis

from benchmarks.requester import Requester
from tests.support.redis_server import RedisServer, free_port
from worker_manager.core.keys import Keys
from worker_manager.egress.control import stop_service
from worker_manager.images.spec import packaged_images_dir
from worker_manager.settings import BOOTSTRAP_BASE_TAG

MANAGER_LABEL = "worker-manager.manager_id"
#: Containers the baselines start themselves (no manager): found again by this label.
OWNER_LABEL = "bench.owner"
REPO_ROOT = Path(__file__).resolve().parent.parent

#: The CUSTOM agent of the data-plane figures. ``fast:N`` prints N short lines through a 64 KiB
#: buffer (the agent is never the bottleneck); ``slow:N:S`` prints its own clock every S seconds.
AGENT_SCRIPT = """\
import os, sys, time
mode, *args = os.environ.get("WM_PROMPT", "idle").split(":")
if mode == "fast":
    out = open(1, "w", buffering=65536, closefd=False)
    for i in range(int(args[0])):
        out.write("line %07d\\n" % i)
    out.flush()
elif mode == "slow":
    for _ in range(int(args[0])):
        print("%.6f" % time.time(), flush=True)
        time.sleep(float(args[1]))
"""
AGENT_COMMAND = ["python3", "-c", AGENT_SCRIPT]


def base_image() -> str:
    return os.environ.get("WM_BASE_IMAGE") or BOOTSTRAP_BASE_TAG


class Overlay:
    """An images overlay whose CUSTOM snippet can be given a unique ``LABEL``: a new shape.

    Packaged content when :meth:`reset`, so the shape (and hash) is the standard CUSTOM one.
    Never change it while a build of the current shape is in flight: the build reads it again.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._snippet = (packaged_images_dir() / "agents" / "CUSTOM.Dockerfile").read_text()
        (root / "agents").mkdir(parents=True, exist_ok=True)
        self.reset()

    @property
    def path(self) -> Path:
        return self.root / "agents" / "CUSTOM.Dockerfile"

    def reset(self) -> None:
        self.path.write_text(self._snippet)

    def unique(self, token: str) -> None:
        self.path.write_text(self._snippet.rstrip("\n") + f"\nLABEL bench.run={token}\n")


class BenchEnv:
    def __init__(self) -> None:
        self.token = secrets.token_hex(4)
        self.prefix = f"bench{self.token}"
        self.manager_id = f"bench-{self.token}"
        self.keys = Keys(self.prefix)
        self.tmp = Path(tempfile.mkdtemp(prefix="wm-bench-"))
        self.docker = docker.from_env(timeout=300)
        self.server = RedisServer(self.tmp / "redis", binary=shutil.which("redis-server") or "")
        self.overlay = Overlay(self.tmp / "overlay")
        self.base_image = base_image()
        self.manager: subprocess.Popen[bytes] | None = None
        self.echo: subprocess.Popen[bytes] | None = None
        self.echo_stream = f"{self.prefix}:echo:commands"
        self._redis: Redis | None = None
        self._images: set[str] = set()
        self._manager_log = self.tmp / "manager.log"
        self.egress_run_dir = self.tmp / "eg"

    # --- set-up ------------------------------------------------------------------------------
    def start(self) -> None:
        if not self.server.binary:
            raise RuntimeError("redis-server is not installed (make redis-server)")
        self.docker.images.get(self.base_image)  # fail early: `make ensure-base` first
        self.server.start()

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            self._redis = Redis.from_url(
                self.server.url, decode_responses=True, max_connections=512
            )
        return self._redis

    def manager_env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WM_")}
        env.update(
            WM_REDIS_URL=self.server.url,
            WM_WORKER_REDIS_URL=self.server.worker_url,
            WM_KEY_PREFIX=self.prefix,
            WM_MANAGER_ID=self.manager_id,
            WM_BASE_IMAGE=self.base_image,
            WM_HTTP_ADDR=f"127.0.0.1:{free_port('127.0.0.1')}",
            WM_IMAGES_OVERLAY=str(self.overlay.root),
            WM_MAX_WORKERS="400",
            # 100 000 lines of one input must all stay readable for the data-plane count.
            WM_OUTPUT_MAXLEN="250000",
            WM_LOG_LEVEL="warning",
            WM_LOG_FORMAT="json",
            # The run's own egress service (spawned by the manager, stopped in close()).
            WM_EGRESS_RUN_DIR=str(self.egress_run_dir),
        )
        env.update(extra)
        return env

    async def start_manager(self, **extra: str) -> None:
        """``worker-manager serve``, started from a scratch directory (no developer ``.env``)."""
        log = self._manager_log.open("ab")
        self.manager = subprocess.Popen(
            [sys.executable, "-m", "worker_manager", "serve", "--grace", "2"],
            cwd=self.tmp,
            env=self.manager_env(**extra),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        await self._wait_answers(self.keys.commands, "manager", self.manager)

    async def restart_manager(self, **extra: str) -> None:
        """The manager again, with ``extra`` settings (e.g. a warm pool for figure 1c)."""
        if self.manager is not None and self.manager.poll() is None:
            self.manager.send_signal(signal.SIGTERM)
            await asyncio.to_thread(self.manager.wait, 30)
        await self.start_manager(**extra)

    async def start_echo(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WM_")}
        env["BENCH_REDIS_URL"] = self.server.url
        self.echo = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.echo", self.echo_stream],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        await self._wait_answers(self.echo_stream, "echo consumer", self.echo)

    async def _wait_answers(self, stream: str, what: str, process: subprocess.Popen[bytes]) -> None:
        requester = Requester(self.redis, f"{self.keys.replies}:probe:{uuid.uuid4().hex}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the {what} exited ({process.returncode}): {self.log_tail()}")
            with contextlib.suppress(TimeoutError):
                await requester.call(stream, {"command": "list"}, timeout=1.0)
                return
        raise RuntimeError(f"the {what} did not answer within 60 s: {self.log_tail()}")

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self._manager_log.read_text(errors="replace").splitlines()[-15:])
        return ""

    @property
    def manager_pid(self) -> int:
        assert self.manager is not None
        return self.manager.pid

    # --- bookkeeping -------------------------------------------------------------------------
    def owns_image(self, tag: str) -> None:
        """Remove this image at the end (it was built for the run: a unique shape)."""
        self._images.add(tag)

    def remove_image(self, tag: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.docker.images.remove(tag, noprune=False)
        self._images.discard(tag)

    def own_containers(self) -> Iterator[Any]:
        for label in (f"{MANAGER_LABEL}={self.manager_id}", f"{OWNER_LABEL}={self.manager_id}"):
            yield from self.docker.containers.list(all=True, filters={"label": label})

    # --- tear-down ---------------------------------------------------------------------------
    async def close(self) -> None:
        for process in (self.manager, self.echo):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (self.manager, self.echo):
            if process is not None:
                try:
                    await asyncio.to_thread(process.wait, 20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        await asyncio.to_thread(self._remove_docker_objects)
        await asyncio.to_thread(stop_service, self.egress_run_dir)
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
        self.server.stop()
        self.docker.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _remove_docker_objects(self) -> None:
        for container in list(self.own_containers()):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                container.remove(force=True, v=True)
        for tag in list(self._images):
            with contextlib.suppress(docker.errors.APIError):
                self.remove_image(tag)
        # The workers' volumes and the repositories' mirrors of this run's manager.
        for volume in self.docker.volumes.list(
            filters={"label": f"{MANAGER_LABEL}={self.manager_id}"}
        ):
            with contextlib.suppress(docker.errors.APIError):
                volume.remove(force=True)
