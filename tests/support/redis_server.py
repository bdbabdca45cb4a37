"""A throwaway ``redis-server`` the tests own: random password, free port, reachable by containers.

It listens on loopback (for the manager under test) and on the Docker bridge gateway (for worker
containers), exactly like the Redis ``make run`` starts, so the URL rewriting the manager does
for containers is exercised for real.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker_manager.core.bridge import docker_bridge_gateway

START_TIMEOUT_SECONDS = 15.0
STOP_TIMEOUT_SECONDS = 15.0


class RedisServerError(RuntimeError):
    """The server did not come up; the message carries the end of its log."""


def free_port(*hosts: str) -> int:
    """A port nobody listens on at any of ``hosts`` right now."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = int(probe.getsockname()[1])
        if all(_can_bind(host, port) for host in hosts[1:]):
            return port
    raise RedisServerError(f"no port free on all of {hosts}")


def _can_bind(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def bindable_gateway() -> str | None:
    """The bridge gateway when it is an address of this host (not with a remote Docker)."""
    gateway = docker_bridge_gateway()
    return gateway if _can_bind(gateway, 0) else None


class RedisServer:
    """One ``redis-server`` process; ``restart()`` brings it back on the same port."""

    def __init__(
        self,
        workdir: Path,
        *,
        binary: str = "redis-server",
        password: str | None = None,
        extra_config: str = "",
    ) -> None:
        self.workdir = workdir
        self.binary = binary
        self.host = "127.0.0.1"
        self.gateway = bindable_gateway()
        self.password = password or secrets.token_hex(16)
        #: More redis.conf lines (a replica's ``replicaof``, a sentinel's ``sentinel monitor``).
        self.extra_config = extra_config
        hosts = [self.host] if self.gateway is None else [self.host, self.gateway]
        self.port = free_port(*hosts)
        self._process: subprocess.Popen[bytes] | None = None
        self._port_pinned = False
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "redis.conf"
        self.log_path = self.workdir / "redis.log"

    @property
    def url(self) -> str:
        """What the manager under test connects with."""
        return f"redis://:{self.password}@{self.host}:{self.port}/0"

    @property
    def worker_url(self) -> str:
        """What a worker container connects with (the gateway instead of loopback)."""
        host = self.gateway or self.host
        return f"redis://:{self.password}@{host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def client(self, *, retries: int = 3) -> redis.Redis:
        """A synchronous client for set-up code outside the event loop.

        ``retries=0`` makes a refused connection fail at once instead of after redis-py's
        backoff, for probes and for tests that expect the failure.
        """
        return redis.Redis(
            host=self.host,
            port=self.port,
            password=self.password,
            decode_responses=True,
            retry=Retry(NoBackoff(), retries),
        )

    def start(self) -> None:
        """Start the server; until it has once run, a port taken meanwhile is swapped for another.

        After the first start the port is pinned: clients of a restarted server must find it
        where it was.
        """
        if self.running:
            return
        attempts = 1 if self._port_pinned else 3
        for attempt in range(attempts):
            try:
                self._start_once()
                break
            except RedisServerError:
                if attempt == attempts - 1:
                    raise
                hosts = [self.host] if self.gateway is None else [self.host, self.gateway]
                self.port = free_port(*hosts)
        self._port_pinned = True

    def _start_once(self) -> None:
        binds = self.host if self.gateway is None else f"{self.host} {self.gateway}"
        # The password is in a file, not argv: test logs and `ps` must not show it.
        self.config_path.write_text(
            f"bind {binds}\n"
            f"port {self.port}\n"
            f"requirepass {self.password}\n"
            f"dir {self.workdir}\n"
            'save ""\n'
            "appendonly no\n"
            "protected-mode yes\n"
            f"logfile {self.log_path}\n" + self.extra_config
        )
        self.config_path.chmod(0o600)
        self._process = subprocess.Popen(
            [self.binary, str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_until_ready()

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server; ``kill=True`` sends SIGKILL, like a crash."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_SECONDS)

    def signal(self, signum: int) -> None:
        """Send ``signum`` (SIGSTOP freezes the server, SIGCONT thaws it)."""
        assert self._process is not None and self._process.poll() is None
        self._process.send_signal(signum)

    def restart(self, *, kill: bool = False, keep_data: bool = False) -> None:
        """Stop and start again on the same port and password.

        ``keep_data=True`` stands for a Redis with persistence: the data is saved before the stop
        and loaded before the new server answers anyone, so no client ever sees it empty (ACL
        users are not data: they are lost either way). Otherwise the data is gone.
        """
        dump = self.workdir / "dump.rdb"
        dump.unlink(missing_ok=True)
        if keep_data:
            with self.client() as client:
                client.save()
        self.stop(kill=kill)
        self.start()
        dump.unlink(missing_ok=True)

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        client = self.client(retries=0)
        try:
            while True:
                assert self._process is not None
                if self._process.poll() is not None:
                    raise RedisServerError(
                        f"redis-server exited with {self._process.returncode}:\n{self._log_tail()}"
                    )
                with contextlib.suppress(redis.exceptions.ConnectionError):
                    if client.ping():
                        return
                if time.monotonic() > deadline:
                    self.stop(kill=True)
                    raise RedisServerError(
                        f"redis-server did not answer PING within {START_TIMEOUT_SECONDS} s:\n"
                        f"{self._log_tail()}"
                    )
                time.sleep(0.02)
        finally:
            client.close()

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"
