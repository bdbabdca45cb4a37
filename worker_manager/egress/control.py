"""The manager's side of the egress service: register and revoke workers, keep it running.

The service listens on ``control.sock`` in its run directory (root only). :func:`ensure_running`
starts it detached (its own session, its own log file beside the socket) when nothing answers
there, so ``serve`` on a fresh host needs no extra step; a supervisor or docker-compose may run
``worker-manager egress`` instead (``WM_EGRESS_SPAWN=false``). A lock file makes sure one host
runs one service, however many managers start at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from worker_manager.core.logs import get_logger
from worker_manager.egress.grants import Grant, RunDir
from worker_manager.egress.version import service_version
from worker_manager.settings import Settings

log = get_logger(__name__)

#: Settings the spawned service needs, passed on in its environment (secrets included: they go
#: from this process to its child, never to Redis, a log or a container).
_PASSED_ON = (
    ("redis_url", "WM_REDIS_URL"),
    ("egress_run_dir", "WM_EGRESS_RUN_DIR"),
    ("anthropic_base_url", "WM_ANTHROPIC_BASE_URL"),
    ("anthropic_api_key", "WM_ANTHROPIC_API_KEY"),
    ("claude_code_oauth_token", "WM_CLAUDE_CODE_OAUTH_TOKEN"),
    ("factory_api_key", "WM_FACTORY_API_KEY"),
    ("factory_api_host", "WM_FACTORY_API_HOST"),
    ("git_credentials", "WM_GIT_CREDENTIALS"),
    ("egress_upstream_ca", "WM_EGRESS_UPSTREAM_CA"),
    ("egress_connect_timeout_seconds", "WM_EGRESS_CONNECT_TIMEOUT_SECONDS"),
    ("log_level", "WM_LOG_LEVEL"),
)


@dataclass(frozen=True, slots=True)
class Served:
    worker_id: str
    key_prefix: str
    age_seconds: float
    #: The worker the grant belongs to (a checkout's grant acts for its worker).
    owner: str = ""


class EgressUnavailable(ConnectionError):
    """The egress service does not answer: an outage to ride out (it is restarted)."""


class EgressRefused(RuntimeError):
    """The egress service answered and refused (a grant it cannot serve)."""


class EgressClient:
    def __init__(self, settings: Settings, *, timeout: float = 10.0) -> None:
        self._settings = settings
        self._run = RunDir(Path(settings.egress_run_dir))
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._warned_version: object = service_version()

    @property
    def run_dir(self) -> RunDir:
        return self._run

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(self._run.control)),
                timeout=self._timeout,
            )
        return self._session

    async def _call(self, method: str, path: str, body: str | None = None) -> object:
        try:
            async with self._client().request(
                method, f"http://egress{path}", data=body
            ) as response:
                data = await response.json(content_type=None)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise EgressUnavailable(
                f"the egress service at {self._run.control} does not answer ({exc})"
            ) from None
        if response.status != 200:
            message = data.get("error") if isinstance(data, dict) else data
            raise EgressRefused(f"the egress service refused: {message}")
        return data

    async def grant(self, grant: Grant) -> Path:
        """Serve this worker (its sockets exist when this returns); its socket directory."""
        await self._call("PUT", f"/workers/{grant.worker_id}", grant.to_json())
        return self._run.sockets(grant.worker_id)

    async def revoke(self, worker_id: str) -> None:
        await self._call("DELETE", f"/workers/{worker_id}")

    async def grants(self) -> list[Served]:
        """The workers the service serves (every key prefix), with their grants' ages."""
        data = await self._call("GET", "/workers")
        found: list[Served] = []
        for item in data if isinstance(data, list) else []:
            if isinstance(item, dict):
                found.append(
                    Served(
                        str(item.get("worker_id", "")),
                        str(item.get("key_prefix", "")),
                        float(item.get("age", 0.0)),
                        str(item.get("owner") or item.get("worker_id", "")),
                    )
                )
        return found

    async def workers(self) -> list[str]:
        return [served.worker_id for served in await self.grants()]

    async def started_at(self) -> float | None:
        """When the service became ready (Unix time); None when it does not answer."""
        try:
            data = await self._call("GET", "/healthz")
        except (EgressUnavailable, EgressRefused):
            return None
        started = data.get("started") if isinstance(data, dict) else None
        return float(started) if isinstance(started, int | float) else None

    async def healthy(self) -> bool:
        try:
            await self._call("GET", "/healthz")
        except (EgressUnavailable, EgressRefused):
            return False
        return True

    async def metrics(self) -> str:
        """The service's Prometheus text (the manager's /metrics adds its ``wm_`` families)."""
        try:
            async with self._client().get("http://egress/metrics") as response:
                return await response.text() if response.status == 200 else ""
        except (aiohttp.ClientError, OSError, TimeoutError):
            return ""

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def ensure_running(self, *, wait_seconds: float = 30.0) -> None:
        """Start the service if nothing answers, and wait until it does."""
        try:
            health = await self._call("GET", "/healthz")
        except (EgressUnavailable, EgressRefused):
            health = None
        if isinstance(health, dict):
            version = health.get("version")
            if version != service_version() and version != self._warned_version:
                self._warned_version = version
                log.warning(
                    "the egress service runs another version: restart it "
                    "(`worker-manager egress --stop`; serve starts this one)",
                    service_version=version,
                    manager_version=service_version(),
                )
            return
        if not self._settings.egress_spawn:
            raise EgressUnavailable(
                f"no egress service answers at {self._run.control} and WM_EGRESS_SPAWN is off: "
                "run `worker-manager egress` (or set WM_EGRESS=off, unsafe)"
            )
        spawn(self._settings)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while loop.time() < deadline:
            if await self.healthy():
                return
            await asyncio.sleep(0.05)
        raise EgressUnavailable(
            f"the egress service did not start within {wait_seconds:.0f} s: "
            f"see {self._run.root / 'service.log'}"
        )


def service_environment(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for name, variable in _PASSED_ON:
        value = getattr(settings, name)
        if value is None:
            env.pop(variable, None)
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[variable] = str(value)
    return env


def spawn(settings: Settings) -> None:
    """Start ``worker-manager egress`` detached: it outlives this process."""
    run = RunDir(Path(settings.egress_run_dir))
    run.prepare()
    log_path = run.root / "service.log"
    with open(log_path, "ab") as log_file:
        subprocess.Popen(
            [sys.executable, "-m", "worker_manager", "egress"],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=service_environment(settings),
            cwd=str(run.root),
            start_new_session=True,
            close_fds=True,
        )
    log.info("egress service started", run_dir=str(run.root), log=str(log_path))


def stop_service(run_dir: Path, *, timeout: float = 10.0) -> bool:
    """SIGTERM the service of this run directory (tests and ``egress --stop``); True if one ran."""
    import signal
    import time

    run = RunDir(run_dir)
    try:
        pid = int(run.pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return True


def wm_families(text: str) -> str:
    """Only our own metric families of a Prometheus text (not the process's runtime ones,
    which the manager's registry reports for itself)."""
    kept = []
    for line in text.splitlines():
        name = line.split(" ", 3)[2] if line.startswith("# ") and line.count(" ") >= 2 else line
        if name.startswith("wm_"):
            kept.append(line)
    return "\n".join(kept) + ("\n" if kept else "")
