"""A Redis watched by Sentinel, owned by a test: a primary, replicas and three sentinels.

Every node listens on loopback and on the Docker bridge gateway and announces the gateway, so the
manager (on the host), the egress service's relay (on the host) and an uncontained wrapper (in a
container) all reach whichever node is primary. Sentinels need ``replica-announce-ip`` on this
host or they see the replica under the host's eth0 address and find "no good slave"
(machine-notes). Quorum 2, down-after 2000 ms: a replica is promoted ~3 s after the primary dies.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import subprocess
import time
from pathlib import Path

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.redis_server import RedisServer, RedisServerError, free_port

MASTER = "wm-primary"
DOWN_AFTER_MS = 2000
START_TIMEOUT_SECONDS = 15.0


class SentinelProcess:
    """One ``redis-server --sentinel`` (it rewrites its own config file: it must be writable)."""

    def __init__(self, workdir: Path, *, binary: str, host: str, announce: str) -> None:
        self.workdir = workdir
        self.binary = binary
        self.host = host
        self.announce = announce
        self.port = free_port(*sorted({host, announce}))
        self.config_path = workdir / "sentinel.conf"
        self.log_path = workdir / "sentinel.log"
        self._process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    def start(self, primary: RedisServer) -> None:
        binds = " ".join(sorted({self.host, self.announce}))
        self.config_path.write_text(
            f"bind {binds}\n"
            f"port {self.port}\n"
            "protected-mode no\n"
            f"dir {self.workdir}\n"
            f"logfile {self.log_path}\n"
            f"sentinel announce-ip {self.announce}\n"
            f"sentinel monitor {MASTER} {self.announce} {primary.port} 2\n"
            f"sentinel auth-pass {MASTER} {primary.password}\n"
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER} 10000\n"
            f"sentinel parallel-syncs {MASTER} 1\n"
        )
        self.config_path.chmod(0o600)
        self._process = subprocess.Popen(
            [self.binary, str(self.config_path), "--sentinel"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def client(self) -> redis.Redis:
        return redis.Redis(
            host=self.host, port=self.port, decode_responses=True, retry=Retry(NoBackoff(), 0)
        )

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


class SentinelGroup:
    """A primary, ``replicas`` replicas and three sentinels; :meth:`kill_primary` for a failover."""

    def __init__(self, workdir: Path, *, binary: str = "redis-server", replicas: int = 1) -> None:
        password = secrets.token_hex(16)
        self.primary = RedisServer(workdir / "node-0", binary=binary, password=password)
        announce = self.primary.gateway or self.primary.host
        self.announce = announce
        self.nodes = [self.primary]
        for i in range(replicas):
            node = RedisServer(workdir / f"node-{i + 1}", binary=binary, password=password)
            self.nodes.append(node)
        self.sentinels = [
            SentinelProcess(
                workdir / f"sentinel-{i}", binary=binary, host="127.0.0.1", announce=announce
            )
            for i in range(3)
        ]
        self.password = password

    def start(self) -> None:
        for node in self.nodes:
            node.extra_config = (
                f"masterauth {self.password}\n"
                f"replica-announce-ip {self.announce}\n"
                f"replica-announce-port {node.port}\n"
                # Redis waits 5 s for more replicas before a full sync by default.
                "repl-diskless-sync-delay 0\n"
            )
            if node is not self.primary:
                node.extra_config += f"replicaof {self.announce} {self.primary.port}\n"
            node.start()
        self.wait(self._replicas_synced, "replicas in sync")
        for sentinel in self.sentinels:
            sentinel.start(self.primary)
        self.wait(lambda: self._sentinels_agree(replicas=len(self.nodes) - 1), "sentinels ready")

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for node in self.nodes:
            node.stop()

    def url(self, *, host: str = "127.0.0.1", db: int = 0) -> str:
        """What the manager connects with (loopback sentinels; a container gets the gateway)."""
        hosts = ",".join(f"{host}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://:{self.password}@{hosts}/{MASTER}/{db}"

    def current_primary(self) -> RedisServer:
        with contextlib.closing(self.sentinels[0].client()) as client:
            _host, port = client.sentinel_get_master_addr_by_name(MASTER)
        return next(node for node in self.nodes if node.port == int(port))

    def kill_primary(self) -> RedisServer:
        """SIGKILL the node that is primary now (a crash); returns it."""
        primary = self.current_primary()
        primary.stop(kill=True)
        return primary

    def wait_failover(self, old: RedisServer, timeout: float = 30.0) -> RedisServer:
        """Until the sentinels name another, running primary that says it is one."""
        found: list[RedisServer] = []

        def promoted() -> bool:
            node = self.current_primary()
            if node is old or not node.running:
                return False
            with contextlib.closing(node.client(retries=0)) as client:
                if client.info("replication").get("role") != "master":
                    return False
            found[:] = [node]
            return True

        self.wait(promoted, "a replica promoted", timeout=timeout)
        return found[0]

    def _replicas_synced(self) -> bool:
        for node in self.nodes:
            if node is self.primary:
                continue
            with contextlib.closing(node.client(retries=0)) as client:
                if client.info("replication").get("master_link_status") != "up":
                    return False
        return True

    def _sentinels_agree(self, *, replicas: int) -> bool:
        for sentinel in self.sentinels:
            with contextlib.closing(sentinel.client()) as client:
                state = client.sentinel_master(MASTER)
                if int(state.get("num-slaves", 0)) < replicas:
                    return False
                if int(state.get("num-other-sentinels", 0)) < len(self.sentinels) - 1:
                    return False
        return True

    @staticmethod
    def wait(check: object, what: str, timeout: float = START_TIMEOUT_SECONDS) -> None:
        assert callable(check)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except (redis.exceptions.RedisError, OSError, StopIteration) as exc:
                last = exc
            time.sleep(0.05)
        raise RedisServerError(f"{what}: not within {timeout} s (last error: {last})")
