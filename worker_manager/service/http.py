"""The operator's HTTP face (SPEC §6): ``/livez``, ``/readyz``, ``/metrics``; nothing else.

The server starts before the manager's start-up checks, so during a slow or failing start-up an
orchestrator sees "alive, not ready" instead of a refused connection. Probes never share fate
with the service: ``/livez`` touches nothing, ``/readyz`` asks Redis and Docker with short
timeouts over a Redis client of its own (no retries, so an outage shows at once) and at most one
Docker ping at a time (a hung Engine must not eat the thread pool every Docker call shares).

It is exposed to whoever can reach ``WM_HTTP_ADDR`` (loopback by default), so requests are
bounded: GET and HEAD only, no body beyond ``http_max_body_bytes`` (413), short header lines and
few headers (400), idle keep-alive connections closed after a few seconds, and an optional
bearer token on everything but ``/livez`` (liveness must stay answerable by a bare kubelet).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from worker_base.redis_urls import client_for
from worker_manager.console.app import SSE_BLOCK_MS, Console
from worker_manager.core.hostport import parse_host_port
from worker_manager.core.logs import get_logger
from worker_manager.service.metrics import CONTENT_TYPE_LATEST, Metrics
from worker_manager.settings import HttpSettings, RedisSettings
from worker_manager.typing import HealthSource

log = get_logger(__name__)

PROBE_TIMEOUT_SECONDS = 2.0
MAX_LINE_BYTES = 4096
MAX_FIELD_BYTES = 4096
MAX_HEADERS = 32
KEEPALIVE_SECONDS = 5.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpServer:
    """Binds ``WM_HTTP_ADDR``; ``port`` is the bound port (useful with ``:0``). Sees the service
    only as a :class:`HealthSource`, and Redis through a probe client of its own."""

    def __init__(
        self,
        http: HttpSettings,
        redis: RedisSettings,
        health: HealthSource,
        metrics: Metrics,
        *,
        image_max_age_days: float = 7.0,
    ) -> None:
        self._health = health
        self._metrics_registry = metrics
        self._keys = redis.keys
        self._max_body = http.http_max_body_bytes
        self.host, self._wanted_port = parse_host_port(http.http_addr)
        self.port: int | None = None
        token = http.http_token.get_secret_value() if http.http_token else ""
        self._token = token.encode()
        self._probe_redis = client_for(
            redis.redis_url,
            decode_responses=True,
            socket_timeout=PROBE_TIMEOUT_SECONDS,
            socket_connect_timeout=PROBE_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 0),
            retry_on_error=[],
            client_name=f"wm:{redis.manager_id}:probe",
            max_connections=8,
        )
        self._docker_ping: asyncio.Future[Any] | None = None
        ui_token = http.ui_token.get_secret_value() if http.ui_token else ""
        #: The console's own client: its live views block on stream reads.
        self._console_redis = (
            client_for(
                redis.redis_url,
                decode_responses=True,
                socket_timeout=SSE_BLOCK_MS / 1000 + 10,
                socket_connect_timeout=PROBE_TIMEOUT_SECONDS,
                client_name=f"wm:{redis.manager_id}:console",
                max_connections=64,
            )
            if ui_token
            else None
        )
        self._console = (
            Console(
                self._console_redis,
                redis.keys,
                ui_token,
                image_max_age_days=image_max_age_days,
                secure_cookie=http.ui_secure_cookie,
                tenants=lambda: self._health.load().tenants,
            )
            if self._console_redis
            else None
        )
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self._max_body,
            middlewares=[self._limits, self._auth],
        )
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        if self._console is not None:
            app.router.add_get("/ui", self._to_console)
            app.add_subapp("/ui/", self._console.app())
        return app

    async def _to_console(self, _request: web.Request) -> web.Response:
        raise web.HTTPSeeOther("/ui/")

    async def start(self) -> None:
        runner = web.AppRunner(
            self.app(),
            access_log=None,
            handle_signals=False,
            keepalive_timeout=KEEPALIVE_SECONDS,
            max_line_size=MAX_LINE_BYTES,
            max_field_size=MAX_FIELD_BYTES,
            max_headers=MAX_HEADERS,
            lingering_time=1.0,
            shutdown_timeout=2.0,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._wanted_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])  # the bound port: differs from 0 when asked for 0
        log.info("http listening", url=self.url, token=bool(self._token))

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        await self._probe_redis.aclose()
        if self._console_redis is not None:
            await self._console_redis.aclose()

    # --- middlewares -----------------------------------------------------------------------
    @web.middleware
    async def _limits(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """No endpoint takes a body; one is read only to hold it to the size limit (413)."""
        limit = self._max_body
        if request.content_length is not None and request.content_length > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
        if request.body_exists:
            await request.read()  # bounded by client_max_size: larger chunked bodies get 413
        return await handler(request)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        # The console checks its own token (a login form, a cookie, a bearer token).
        if not self._token or request.path == "/livez" or request.path.startswith("/ui"):
            return await handler(request)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token):
            return await handler(request)
        return web.Response(
            status=401,
            text="a bearer token is required\n",
            headers={"WWW-Authenticate": 'Bearer realm="worker-manager"'},
        )

    # --- endpoints -------------------------------------------------------------------------
    async def _livez(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _request: web.Request) -> web.Response:
        checks = await self.readiness()
        ready = all(value == "ok" for value in checks.values())
        load = self._health.load()
        body = {
            "ready": ready,
            "checks": checks,
            "commands_in_flight": load.commands_in_flight,
            "creates_in_progress": load.creates_in_progress,
        }
        return web.json_response(body, status=200 if ready else 503, dumps=_dumps)

    async def readiness(self) -> dict[str, str]:
        """Every check by name: ``ok`` or what is wrong."""
        intake = self._health.intake()
        redis, docker = await asyncio.gather(self._check_redis(), self._check_docker())
        problems = self._health.loop_problems()
        loops = "; ".join(f"{name}: {why}" for name, why in sorted(problems.items())) or "ok"
        return {"intake": intake, "redis": redis, "docker": docker, "loops": loops}

    async def _check_redis(self) -> str:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
                await self._probe_redis.ping()
        except TimeoutError:
            return f"no answer to PING within {PROBE_TIMEOUT_SECONDS:g}s"
        except (RedisError, OSError) as exc:
            return f"unreachable: {type(exc).__name__}: {exc}"[:300]
        return "ok"

    async def _check_docker(self) -> str:
        if self._docker_ping is None or self._docker_ping.done():
            loop = asyncio.get_running_loop()
            self._docker_ping = loop.run_in_executor(None, self._health.ping_docker)
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
                await asyncio.shield(self._docker_ping)
        except TimeoutError:
            return f"no answer to ping within {PROBE_TIMEOUT_SECONDS:g}s"
        except Exception as exc:
            return f"unreachable: {type(exc).__name__}: {exc}"[:300]
        return "ok"

    async def _metrics(self, _request: web.Request) -> web.Response:
        metrics, load = self._metrics_registry, self._health.load()
        metrics.in_flight.set(load.commands_in_flight)
        metrics.creates_in_progress.set(load.creates_in_progress)
        metrics.draining.set(1 if load.draining else 0)
        for shape, ready in load.pool_ready.items():
            metrics.pool_ready.labels(shape).set(ready)
        await metrics.refresh(self._probe_redis, self._keys, tenants=load.tenants)
        extra = (await self._health.extra_metrics()).encode()
        response = web.Response(body=metrics.render() + extra)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":")) + "\n"
