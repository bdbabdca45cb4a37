"""The manager's side of the egress service: register and revoke workers, keep it running.

The service listens on ``control.sock`` in its run directory (root only). :func:`ensure_running`
starts it detached (its own session, its own log file beside the socket) when nothing answers
there, so ``serve`` on a fresh host needs no extra step; a supervisor or docker-compose may run
``worker-manager egress`` instead (``WM_EGRESS_SPAWN=false``). A lock file makes sure one host
runs one service, however many managers start at once.

A service that answers with other settings than this manager's (it was started by another
manager, or before a key rotation) is restarted with this manager's, or the manager refuses to
start, naming the settings: :mod:`worker_manager.egress.fingerprint` says which and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import aiohttp
from pydantic import AliasChoices

from worker_manager.core.logs import get_logger
from worker_manager.core.secret_files import SECRETS_DIR_VARIABLE
from worker_manager.egress.fingerprint import (
    NOT_COMPARED,
    SERVICE_SETTINGS,
    EgressSettingsConflict,
    Verdict,
    decide,
    digest_key,
    settings_digests,
)
from worker_manager.egress.grants import Grant, RunDir
from worker_manager.egress.leases import Lease
from worker_manager.egress.version import service_version
from worker_manager.settings import Settings

log = get_logger(__name__)

#: Settings the spawned service needs, passed on in its environment (secrets included: they go
#: from this process to its child, never to Redis, a log or a container).
_PASSED_ON = SERVICE_SETTINGS + NOT_COMPARED


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
        self._digests: dict[str, str] | None = None
        self._lease = Lease(self._run.root, settings.manager_id)
        #: Whether the service has served with this manager's settings since it started.
        self._served = False
        #: Why the service may not serve this manager's workers now (a conflict found by a
        #: periodic check), or None.
        self.conflict: str | None = None

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
        """Serve this worker (its sockets exist when this returns); its socket directory.
        Refused while the service runs with other settings (:attr:`conflict`): a worker is
        never served with settings other than its manager's."""
        if self.conflict is not None:
            raise EgressRefused(f"not granted: {self.conflict}")
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
        self._lease.release()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def digests(self) -> dict[str, str]:
        """This manager's settings as the service would report them (keyed digests)."""
        if self._digests is None:
            self._run.prepare()
            self._digests = settings_digests(
                self._settings,
                digest_key(self._run.root),
                only_set=not self._settings.egress_spawn,  # a supervisor's service
            )
        return self._digests

    async def _health(self) -> dict[str, object] | None:
        try:
            health = await self._call("GET", "/healthz")
        except (EgressUnavailable, EgressRefused):
            return None
        return health if isinstance(health, dict) else None

    async def ensure_running(self, *, wait_seconds: float = 30.0) -> None:
        """Start the service if nothing answers, restart it if it runs with other settings
        than this manager's (or refuse: :class:`EgressSettingsConflict`), and wait until it
        answers with this manager's (:func:`~worker_manager.egress.fingerprint.decide`)."""
        ours = self.digests()
        self._lease.take(ours)
        started = False
        while True:
            health = await self._health()
            if health is None:
                if not self._settings.egress_spawn:
                    raise EgressUnavailable(
                        f"no egress service answers at {self._run.control} and WM_EGRESS_SPAWN "
                        "is off: run `worker-manager egress` (or set WM_EGRESS=off, unsafe)"
                    )
                await self._start(wait_seconds)
                started = True
                continue
            self._note_version(health)
            decision = decide(
                reported_settings(health),
                ours,
                self._lease.others(),
                may_restart=self._settings.egress_spawn,
            )
            if decision.verdict is Verdict.KEEP:
                if self.conflict is not None:
                    log.info("the egress service runs with this manager's settings again")
                self._served, self.conflict = True, None
                return
            if decision.verdict is Verdict.RESTART and started:
                self._conflicting(
                    f"the egress service started with this manager's settings reports others "
                    f"({', '.join(decision.differing)}): see {self._run.root / 'service.log'}"
                )
            if decision.verdict is Verdict.REFUSE:
                self._conflicting(decision.explain(self._run.root))
            log.warning(
                "the egress service runs with other settings: restarting it with this "
                "manager's (its grants are kept)",
                run_dir=str(self._run.root),
                differing=list(decision.differing),
            )
            pid = health.get("pid")
            await asyncio.to_thread(
                stop_service, self._run.root, pid=pid if isinstance(pid, int) else None
            )
            await self._start(wait_seconds)
            started = True

    def _conflicting(self, message: str) -> NoReturn:
        """Raise :class:`EgressSettingsConflict`. At start-up the manager does not start and
        gives its lease up. Found later (the service was restarted under it, by a supervisor
        or another manager), the lease is kept: this manager's workers are still served there,
        and giving it up would let another manager restart the service under them every few
        seconds. Its grants are refused meanwhile (:meth:`grant`: no create is served with
        other settings) and the periodic check that raises this shows in ``/readyz``."""
        if not self._served:
            self._lease.release()
        elif self.conflict != message:
            log.error(
                "the egress service now runs with other settings than this manager's: "
                "its creates are refused until they agree again",
                reason=message,
            )
        self.conflict = message
        raise EgressSettingsConflict(message)

    async def _start(self, wait_seconds: float) -> None:
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

    def _note_version(self, health: dict[str, object]) -> None:
        version = health.get("version")
        if version != service_version() and version != self._warned_version:
            self._warned_version = version
            log.warning(
                "the egress service runs another version: restart it "
                "(`worker-manager egress --stop`; serve starts this one)",
                service_version=version,
                manager_version=service_version(),
            )


def reported_settings(health: dict[str, object]) -> dict[str, str] | None:
    """The digests a service's ``/healthz`` reports; None from a service that reports none."""
    reported = health.get("settings")
    if not isinstance(reported, dict):
        return None
    return {str(name): str(value) for name, value in reported.items()}


def accepted_variables(field: str) -> list[str]:
    """Every variable a setting is read from (``WM_X``, its aliases), upper case."""
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return [c.upper() for c in alias.choices if isinstance(c, str)]
    if isinstance(alias, str):
        return [alias.upper()]
    return [f"WM_{field}".upper()]


def service_environment(settings: Settings) -> dict[str, str]:
    """The spawned service's environment: this manager's, with each passed-on setting exactly
    as this manager holds it (its other names, its ``_FILE`` form and ``WM_SECRETS_DIR`` left
    out, so the service cannot read another value than the one this manager compares)."""
    dropped = {SECRETS_DIR_VARIABLE}
    for name, _variable in _PASSED_ON:
        for accepted in accepted_variables(name):
            dropped.update((accepted, f"{accepted}_FILE"))
    env = {k: v for k, v in os.environ.items() if k.upper() not in dropped}
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


#: How long a stopped service gets to end by itself before it is killed: well beyond what its
#: own stop takes (the answers it cuts are charged within ``service.ANSWER_SETTLE_SECONDS``,
#: then the gateway and the proxy close, a few seconds each at most). A kill charges nothing.
STOP_SECONDS = 30.0


def stop_service(run_dir: Path, *, timeout: float = STOP_SECONDS, pid: int | None = None) -> bool:
    """SIGTERM the service of this run directory (tests, ``egress --stop``, a restart with
    other settings); True if one ran. ``pid``: only if that one still runs there (a manager
    never stops the service another one has just started)."""
    import signal
    import time

    run = RunDir(run_dir)
    try:
        running = int(run.pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    if pid is not None and running != pid:
        return False
    pid = running
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _ended(pid):
            return True
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return True


def _ended(pid: int) -> bool:
    """Whether process ``pid`` has ended. A service this process spawned stays a zombie
    (signal 0 still reaches it) until it is reaped: reaped here, and a zombie of another
    parent counts as ended (its stop was otherwise taken for a hang and waited out)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def wm_families(text: str) -> str:
    """Only our own metric families of a Prometheus text (not the process's runtime ones,
    which the manager's registry reports for itself)."""
    kept = []
    for line in text.splitlines():
        name = line.split(" ", 3)[2] if line.startswith("# ") and line.count(" ") >= 2 else line
        if name.startswith("wm_"):
            kept.append(line)
    return "\n".join(kept) + ("\n" if kept else "")
