"""``worker-manager serve`` as a real process, for tests that kill it (SIGKILL) or measure it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from redis.asyncio import Redis

from worker_manager.settings import Settings

#: Settings the subprocess gets from the test's Settings object, as WM_* variables.
_PASSED = (
    "redis_url",
    "worker_redis_url",
    "key_prefix",
    "manager_id",
    "base_image",
    "heartbeat_interval_seconds",
    "heartbeat_ttl_seconds",
    "watch_interval_seconds",
    "claim_idle_ms",
    "block_ms",
    "max_workers",
    "reconcile_interval_seconds",
    "build_lock_ttl_seconds",
    "images_overlay",
    "container_memory",
    # The session's egress service: a subprocess must not start one in the host's default
    # directory, which would outlive the tests and serve the next session's workers.
    "egress_run_dir",
)


def env_of(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WM_")}
    for name in _PASSED:
        value = getattr(settings, name)
        if value is not None:
            env[f"WM_{name.upper()}"] = str(value)
    env["WM_WORKER_SECRET"] = settings.worker_secret.get_secret_value()
    env["WM_HTTP_ADDR"] = "127.0.0.1:0"
    env["WM_LOG_FORMAT"] = "json"
    env.update(extra)
    return env


class ManagerProcess:
    """One ``python -m worker_manager serve``; its logs go to a file the test can show."""

    def __init__(self, settings: Settings, workdir: Path, **extra_env: str) -> None:
        self.settings = settings
        self.workdir = workdir
        self.env = env_of(settings, **extra_env)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "manager.log"
        self.starts = 0

    async def start(self, redis: Redis, *, timeout: float = 60) -> None:
        """Start and wait until it announced itself (its presence key), i.e. has started up."""
        presence = self.settings.keys.manager(self.settings.manager_id)
        await redis.delete(presence)
        self.starts += 1
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "worker_manager", "serve"],
            cwd=self.workdir,  # no .env here
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await redis.exists(presence):
            assert self.process.poll() is None, f"manager exited:\n{self.log_tail()}"
            assert loop.time() < deadline, f"manager not up in {timeout}s:\n{self.log_tail()}"
            await asyncio.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
