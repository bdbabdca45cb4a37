"""``worker-manager egress``: the per-host service every contained worker reaches the world by.

It is a process of its own (spawned detached by ``serve``, or run by a supervisor or as a
docker-compose service), so a manager restart cuts no worker off: the design note's rule that
the manager is not in the data path. It serves, per worker, three Unix sockets in
``<run dir>/workers/<id>/sock`` (mounted read-only into the container at ``/run/wm``):

* ``redis.sock`` — a relay to Redis for the wrapper (the worker's own ACL user still
  authenticates at Redis; the relay carries requests as sent, but no ``HELLO``, which ACLs
  cannot refuse: :mod:`worker_manager.egress.redis_relay`);
* ``proxy.sock`` — the egress proxy (:mod:`worker_manager.egress.proxy`);
* ``gateway.sock`` — the LLM gateway (:mod:`worker_manager.egress.gateway`), for workers whose
  grant carries a gateway token;

and two files: ``ca.pem``, the service's own CA (with which the proxy opens TLS to the hosts it
adds an operator's credential for: :mod:`worker_manager.egress.credentials`), and
``ca-bundle.pem``, the public roots (``certifi``) plus that CA, which the container's TLS
clients are pointed at (``SSL_CERT_FILE`` and the like).

Each socket belongs to the worker's wrapper user with mode 0600. The manager registers and
revokes workers over ``control.sock`` (root only); every grant is kept on disk, so a restarted
service serves the same workers again before it answers its first request.

It reads its settings once, at start, and reports on ``/healthz`` a keyed digest of each
(:mod:`worker_manager.egress.fingerprint`), never a value: a manager whose own differ restarts
it with them (a key rotation) or refuses to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import certifi
from aiohttp import web
from prometheus_client import REGISTRY, generate_latest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker_base.redis_urls import is_sentinel_url, master_address
from worker_manager.contract.credentials import parse_git_credentials
from worker_manager.contract.egress import parse_egress
from worker_manager.core.clock import iso_now
from worker_manager.core.connections import connect
from worker_manager.core.keys import Keys
from worker_manager.core.logs import get_logger
from worker_manager.egress import redis_relay
from worker_manager.egress.credentials import Credentials
from worker_manager.egress.fingerprint import digest_key, settings_digests
from worker_manager.egress.gateway import ANTHROPIC_API, OPENAI_API, GatewayWorker, LlmGateway
from worker_manager.egress.grants import (
    GATEWAY_SOCKET,
    PROXY_SOCKET,
    REDIS_SOCKET,
    Grant,
    GrantError,
    RunDir,
)
from worker_manager.egress.limits import raise_open_files_limit
from worker_manager.egress.policy import EgressPolicy
from worker_manager.egress.proxy import EgressProxy, ProxyWorker
from worker_manager.egress.version import service_version
from worker_manager.settings import Settings

log = get_logger(__name__)

PUBLIC_ANTHROPIC_API = "https://api.anthropic.com"
#: The certificate of mitmproxy's CA in its confdir (the key is beside it, never published).
MITM_CA_CERT = "mitmproxy-ca-cert.pem"


@dataclass(slots=True)
class _Served:
    grant: Grant
    policy: EgressPolicy
    servers: list[asyncio.AbstractServer] = field(default_factory=list)
    gateway_site: web.UnixSite | None = None
    #: The API its gateway site speaks (``Grant.gateway_api`` when it was opened).
    gateway_api: str = ""


class EgressService:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._run = RunDir(Path(settings.egress_run_dir))
        self._redis: Redis = connect(settings, name="egress")
        self._proxy = EgressProxy(
            self._worker_of,
            self._report,
            credentials=Credentials(
                git=parse_git_credentials(
                    settings.git_credentials.get_secret_value()
                    if settings.git_credentials
                    else None
                ),
                factory_host=settings.factory_api_host,
                factory_key=settings.factory_api_key.get_secret_value()
                if settings.factory_api_key
                else None,
            ),
            confdir=str(self._run.ca_dir),
            upstream_ca=str(self._run.upstream_bundle) if settings.egress_upstream_ca else None,
        )
        # One gateway per API (Grant.gateway_api): a worker's socket is served by its API's.
        self._gateways = {
            "anthropic": LlmGateway(
                redis=self._redis,
                upstream_url=settings.anthropic_base_url or PUBLIC_ANTHROPIC_API,
                api_key=settings.anthropic_api_key,
                oauth_token=settings.claude_code_oauth_token,
                resolve=lambda sockname: self._gateway_worker(sockname, "anthropic"),
                api=ANTHROPIC_API,
            ),
            "openai": LlmGateway(
                redis=self._redis,
                upstream_url=settings.openai_base_url,
                api_key=settings.openai_api_key,
                oauth_token=None,
                resolve=lambda sockname: self._gateway_worker(sockname, "openai"),
                api=OPENAI_API,
            ),
        }
        self._gateway_runners = {
            name: web.AppRunner(self._tracked(gateway.app()), access_log=None, shutdown_timeout=1.0)
            for name, gateway in self._gateways.items()
        }
        #: The gateway requests in flight (their handlers' tasks), to charge them at a stop.
        self._answers: set[asyncio.Task[Any]] = set()
        self._control_runner: web.AppRunner | None = None
        self._served: dict[str, _Served] = {}
        self._lock = asyncio.Lock()
        self._stopped = asyncio.Event()
        #: When the service started serving (Unix time), as /healthz reports it.
        self._started = time.time()
        #: The keyed digests of the settings it runs with, as /healthz reports them.
        self._digests: dict[str, str] = {}

    # --- lookups used by the proxy and the gateway -------------------------------------------
    def _worker_of(self, worker_id: str) -> ProxyWorker | None:
        served = self._served.get(worker_id)
        if served is None:
            return None
        return ProxyWorker(served.policy, served.grant.factory_token)

    def _gateway_worker(self, sockname: str, api: str) -> GatewayWorker | None:
        try:
            worker_id = Path(sockname).parent.parent.name
        except (TypeError, ValueError):
            return None
        served = self._served.get(worker_id)
        if served is None or not served.grant.gateway_token or served.grant.gateway_api != api:
            return None
        if Path(sockname) != self._run.sockets(worker_id) / GATEWAY_SOCKET:
            return None
        grant = served.grant
        return GatewayWorker(
            worker_id=grant.worker_id,
            key_prefix=grant.key_prefix,
            token=grant.gateway_token,
            max_cost_usd=grant.max_cost_usd,
        )

    async def _report(self, worker_id: str, target: str, reason: str) -> None:
        served = self._served.get(worker_id)
        if served is None or not served.grant.report:
            return
        keys = Keys(served.grant.key_prefix)
        await self._redis.xadd(
            keys.output(served.grant.owner),
            {"type": "error", "content": f"egress denied: {target}", "timestamp": iso_now()},
            maxlen=served.grant.output_maxlen,
            approximate=True,
        )

    # --- serving one worker -------------------------------------------------------------------
    async def serve(self, grant: Grant) -> Path:
        """Serve (or re-serve, with a new grant) one worker; returns its socket directory."""
        policy = EgressPolicy(parse_egress(grant.egress))
        async with self._lock:
            current = self._served.get(grant.worker_id)
            self._run.write_grant(grant)
            self._run.publish_ca(grant.worker_id)
            if current is not None and (current.grant.uid, current.grant.gid) == (
                grant.uid,
                grant.gid,
            ):
                current.grant, current.policy = grant, policy
                await self._sync_gateway(current)
                return self._run.sockets(grant.worker_id)
            if current is not None:
                await self._close(current)
            served = _Served(grant, policy)
            self._served[grant.worker_id] = served
            directory = self._run.sockets(grant.worker_id)
            worker_id = grant.worker_id

            async def relayed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                await self._relay_redis(worker_id, reader, writer)

            served.servers.append(await self._listen(directory / REDIS_SOCKET, grant, relayed))

            async def proxied(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                await self._proxy.serve_worker_connection(worker_id, reader, writer)

            served.servers.append(await self._listen(directory / PROXY_SOCKET, grant, proxied))
            await self._sync_gateway(served)
            log.info("serving a worker", worker_id=worker_id, egress=list(grant.egress))
            return directory

    async def revoke(self, worker_id: str) -> bool:
        async with self._lock:
            served = self._served.pop(worker_id, None)
            if served is not None:
                await self._close(served)
            directory = self._run.worker(worker_id)
            existed = directory.exists()
            for path in sorted(directory.rglob("*"), reverse=True) if existed else []:
                with contextlib.suppress(OSError):
                    path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
            with contextlib.suppress(OSError):
                directory.rmdir()
            if served is not None or existed:
                log.info("no longer serving a worker", worker_id=worker_id)
            return served is not None or existed

    async def _sync_gateway(self, served: _Served) -> None:
        path = self._run.sockets(served.grant.worker_id) / GATEWAY_SOCKET
        api = served.grant.gateway_api
        if served.gateway_site is not None and served.gateway_api != api:
            await served.gateway_site.stop()  # another API now: served by its own gateway
            served.gateway_site = None
        if served.grant.gateway_token and served.gateway_site is None:
            _unlink(path)
            site = web.UnixSite(self._gateway_runners[api], str(path))
            served.gateway_api = api
            await site.start()
            _own(path, served.grant)
            served.gateway_site = site
        elif not served.grant.gateway_token and served.gateway_site is not None:
            await served.gateway_site.stop()
            served.gateway_site = None
            _unlink(path)

    async def _listen(self, path: Path, grant: Grant, handler: Any) -> asyncio.AbstractServer:
        _unlink(path)
        server = await asyncio.start_unix_server(handler, path=str(path))
        _own(path, grant)
        return server

    async def _close(self, served: _Served) -> None:
        for server in served.servers:
            server.close()
        if served.gateway_site is not None:
            await served.gateway_site.stop()
        served.servers.clear()
        served.gateway_site = None

    async def _relay_redis(
        self, worker_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        served = self._served.get(worker_id)
        url = (served.grant.redis_url if served else "") or self._settings.redis_url
        try:
            upstream = await asyncio.wait_for(
                _open_redis(url), self._settings.egress_connect_timeout_seconds
            )
        except (OSError, TimeoutError, RedisError) as exc:
            log.warning("redis relay: cannot reach Redis", error=str(exc))
            writer.close()
            return
        await redis_relay.relay((reader, writer), upstream)  # HELLO refused, the rest as sent

    # --- the control socket --------------------------------------------------------------------
    def _control_app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/workers", self._list)
        app.router.add_put("/workers/{worker_id}", self._put)
        app.router.add_delete("/workers/{worker_id}", self._delete)
        return app

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {
                "ok": True,
                "pid": os.getpid(),
                "workers": len(self._served),
                "version": service_version(),
                # Watchers excuse lost heartbeats for a while after this (the relays were down).
                "started": self._started,
                # What a manager compares with its own (digests: never a value).
                "settings": self._digests,
            }
        )

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY), content_type="text/plain")

    async def _list(self, _request: web.Request) -> web.Response:
        now = time.time()
        listed = []
        for worker_id, served in sorted(self._served.items()):
            try:
                age = now - self._run.grant_file(worker_id).stat().st_mtime
            except OSError:
                age = 0.0
            listed.append(
                {
                    "worker_id": worker_id,
                    "key_prefix": served.grant.key_prefix,
                    "age": age,
                    "owner": served.grant.owner,
                }
            )
        return web.json_response(listed)

    async def _put(self, request: web.Request) -> web.Response:
        try:
            grant = Grant.from_json(await request.read())
            if grant.worker_id != request.match_info["worker_id"]:
                raise GrantError("the path and the grant name different workers")
            directory = await self.serve(grant)
        except (GrantError, ValueError) as exc:
            return web.json_response({"ok": False, "error": str(exc)}, status=400)
        return web.json_response({"ok": True, "sockets": str(directory)})

    async def _delete(self, request: web.Request) -> web.Response:
        try:
            found = await self.revoke(request.match_info["worker_id"])
        except GrantError as exc:
            return web.json_response({"ok": False, "error": str(exc)}, status=400)
        return web.json_response({"ok": True, "found": found})

    # --- the process ---------------------------------------------------------------------------
    async def run(self) -> None:
        # Connections are bounded per worker (egress.limits), not by the host's default limit.
        raise_open_files_limit()
        self._run.prepare()
        # Held for the life of the process (closed with it): one service per run directory.
        lock = os.open(self._run.root / "service.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("an egress service already runs here", run_dir=str(self._run.root))
            os.close(lock)
            await self._redis.aclose()
            return
        self._digests = settings_digests(self._settings, digest_key(self._run.root))
        if self._settings.egress_upstream_ca is not None:
            _write_bundle(
                self._run.upstream_bundle,
                certifi.where(),
                str(self._settings.egress_upstream_ca),
            )
        await self._proxy.start()
        # mitmproxy made its CA (or found it) in ca/: what containers must trust.
        _write_bundle(self._run.ca_cert, str(self._run.ca_dir / MITM_CA_CERT))
        _write_bundle(self._run.ca_bundle, certifi.where(), str(self._run.ca_cert))
        for runner in self._gateway_runners.values():
            await runner.setup()
        for grant in self._run.stored_grants():
            try:
                await self.serve(grant)
            except (GrantError, ValueError, OSError) as exc:
                log.warning(
                    "a stored grant is not served", worker_id=grant.worker_id, error=str(exc)
                )
        self._control_runner = web.AppRunner(self._control_app(), access_log=None)
        await self._control_runner.setup()
        _unlink(self._run.control)
        site = web.UnixSite(self._control_runner, str(self._run.control))
        await site.start()
        os.chmod(self._run.control, 0o600)
        self._started = time.time()
        self._run.pid_file.write_text(f"{os.getpid()}\n")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopped.set)
        log.info(
            "egress service ready",
            run_dir=str(self._run.root),
            workers=len(self._served),
            pid=os.getpid(),
        )
        try:
            await self._stopped.wait()
        finally:
            await self.close()

    def stop(self) -> None:
        self._stopped.set()

    def _tracked(self, app: web.Application) -> web.Application:
        """``app`` with its requests' tasks kept in :attr:`_answers` while they run."""

        @web.middleware
        async def track(request: web.Request, handler: Any) -> web.StreamResponse:
            task = asyncio.current_task()
            assert task is not None
            self._answers.add(task)
            try:
                response: web.StreamResponse = await handler(request)
                return response
            finally:
                self._answers.discard(task)

        app.middlewares.append(track)
        return app

    async def _charge_answers_in_flight(self) -> None:
        """Cut every gateway answer still streaming and wait (bounded) until each is charged.

        A stop (a restart on a settings change or key rotation) must not lose what workers
        spent: the gateway charges a cancelled answer for what it read of it (the meter's cut
        estimate, ``LlmGateway._forward``), and that charge has to reach Redis before the
        process ends. aiohttp would wait its ``shutdown_timeout`` for the answers to end by
        themselves, longer than a manager waits before it kills the service
        (``control.stop_service``), and the kill charges nothing."""
        answers = list(self._answers)
        for task in answers:
            task.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ANSWER_SETTLE_SECONDS
        if answers:
            await asyncio.wait(answers, timeout=ANSWER_SETTLE_SECONDS)
        # A charge already under way when its answer was cancelled runs on, shielded.
        for gateway in self._gateways.values():
            await gateway.settle_charges(max(0.1, deadline - loop.time()))
        if answers:
            log.info("answers in flight cut and charged at stop", answers=len(answers))

    async def close(self) -> None:
        for served in list(self._served.values()):
            await self._close(served)
        self._served.clear()
        if self._control_runner is not None:
            await self._control_runner.cleanup()
        await self._charge_answers_in_flight()
        for runner in self._gateway_runners.values():
            await runner.cleanup()  # a request that came in meanwhile is cancelled here
        await self._charge_answers_in_flight()
        for gateway in self._gateways.values():
            await gateway.close()
        await self._proxy.close()
        await self._redis.aclose()
        with contextlib.suppress(OSError):
            if self._run.pid_file.read_text().strip() == str(os.getpid()):
                self._run.pid_file.unlink()


#: How long a stop waits for the answers it cut to be charged (``control.stop_service`` waits
#: well beyond it before it kills the service).
ANSWER_SETTLE_SECONDS = 5.0


async def _open_redis(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection to the Redis the manager uses (TCP, or its Unix socket); behind
    Sentinel, to the primary the sentinels name now (asked per connection: after a failover the
    wrappers' reconnects reach the new primary)."""
    if is_sentinel_url(url):
        return await asyncio.open_connection(*await master_address(url))
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return await asyncio.open_unix_connection(parts.path)
    return await asyncio.open_connection(parts.hostname or "localhost", parts.port or 6379)


def _write_bundle(target: Path, *sources: str) -> None:
    """``target`` (world-readable: certificates only) as the PEM files ``sources`` in turn."""
    text = "".join(
        Path(source).read_text(encoding="ascii").rstrip("\n") + "\n" for source in sources
    )
    scratch = target.with_name(f".{target.name}.tmp")
    scratch.write_text(text, encoding="ascii")
    os.chmod(scratch, 0o644)
    os.replace(scratch, target)


def _own(path: Path, grant: Grant) -> None:
    """Only the worker's wrapper user may connect (a socket is connected by writing to it).

    Giving a socket to another user takes root; a service run by an unprivileged developer
    (``make run`` without root) whose uid is not the container's leaves it open to all
    instead, and says so: run the service as root in production."""
    try:
        os.chown(path, grant.uid, grant.gid)
    except PermissionError:
        if os.getuid() != grant.uid:
            log.warning(
                "not root: the worker's sockets are open to every user of the host",
                worker_id=grant.worker_id,
            )
            os.chmod(path, 0o666)  # noqa: S103 - said so in the log, for non-root only
            return
    os.chmod(path, 0o600)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
