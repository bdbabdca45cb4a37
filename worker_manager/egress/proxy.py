"""The egress proxy: mitmproxy, with one addon that applies each worker's grant.

mitmproxy runs in the egress service's own event loop. Its listening server is bound to a
loopback port nobody is told about; workers never reach it over TCP. Each worker's
``proxy.sock`` hands its connections straight to mitmproxy's connection handler
(:func:`serve_worker_connection`), tagged with the worker's id, so the addon knows who asks
without any credential the agent could copy or forge. A connection that carries no worker's
tag (anything on the host that found the loopback port) is refused outright.

For each request (a ``CONNECT host:port`` or a plain ``GET http://host/…``) the addon resolves
the name itself, asks :class:`worker_manager.egress.policy.EgressPolicy` and, when allowed,
pins the upstream connection to the address it checked (so a name cannot re-resolve to a
private address between the check and the connect: DNS rebinding). A refusal is a 403 for the
client and an ``error`` event ``egress denied: host:port`` on the worker's own output.

TLS is passed through untouched (the proxy sees names and ports, not content), except to the
hosts the operator holds a credential for (:mod:`worker_manager.egress.credentials`): there the
addon lets mitmproxy open the tunnel with the service's CA and adds the credential to each
request, so the worker never holds it. mitmproxy checks those upstreams' certificates (against
the public roots, plus ``WM_EGRESS_UPSTREAM_CA`` for an operator's own servers).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from mitmproxy import http, options, tls
from mitmproxy.addons import default_addons
from mitmproxy.master import Master
from mitmproxy.proxy import server_hooks
from prometheus_client import Counter

from worker_manager.core.logs import get_logger
from worker_manager.egress.credentials import Credentials, tunnel_options
from worker_manager.egress.policy import EgressPolicy

log = get_logger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: How a refusal reaches the worker's output: (worker_id, "host:port", reason).
Reporter = Callable[[str, str, str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ProxyWorker:
    """What the proxy knows of one worker: its grant, and its Factory placeholder (if any)."""

    policy: EgressPolicy
    factory_token: str = ""


#: A worker by id, or None when the service serves no such worker.
WorkerLookup = Callable[[str], ProxyWorker | None]

CONNECTIONS = Counter(
    "wm_egress_connections",
    "Connections asked of the egress proxy, by verdict (allowed, denied).",
    ["verdict"],
)
CREDENTIALS = Counter(
    "wm_egress_credentials",
    "Requests the egress proxy added an operator's credential to, by kind (git, factory).",
    ["kind"],
)


@dataclass(frozen=True, slots=True)
class _Tagged:
    """A stream writer that tells mitmproxy which worker is on the other end.

    mitmproxy reads the client's ``peername`` and ``sockname`` from the writer; a Unix socket
    has neither in the form it expects, so the worker's id rides in ``sockname``."""

    writer: asyncio.StreamWriter
    worker_id: str

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return ("127.0.0.1", 0)
        if name == "sockname":
            return (self.worker_id, 0)
        return self.writer.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.writer, name)


class EgressAddon:
    """mitmproxy hooks: decide, pin, refuse and report; open TLS only to add a credential."""

    def __init__(
        self, workers: WorkerLookup, report: Reporter, credentials: Credentials | None = None
    ) -> None:
        self._workers = workers
        self._report = report
        self.credentials = credentials or Credentials()
        #: client connection id -> {(host, port): the address checked for it}
        self._pinned: dict[str, dict[tuple[str, int], str]] = {}
        #: client connection id -> the (host, port) of its tunnel, as the worker named it
        self._tunnels: dict[str, tuple[str, int]] = {}

    @staticmethod
    def _worker_of(client: Any) -> str | None:
        sockname = getattr(client, "sockname", None)
        if isinstance(sockname, tuple) and sockname and sockname[1] == 0:
            worker = sockname[0]
            return worker if isinstance(worker, str) and worker else None
        return None

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        await self._decide(flow)
        if flow.response is None:
            self._tunnels[flow.client_conn.id] = (_host_of(flow), flow.request.port)

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.request.method == "CONNECT" or flow.response is not None:
            return
        await self._decide(flow)
        if flow.response is None:
            self._add_credential(flow)

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        """Open TLS only where a credential goes in; every other tunnel passes through."""
        client = data.context.client
        worker = self._lookup(self._worker_of(client))
        tunnel = self._tunnels.get(client.id)
        data.ignore_connection = not (
            worker is not None
            and tunnel is not None
            and self.credentials.intercepts(tunnel[0], tunnel[1], worker.factory_token)
        )

    def _add_credential(self, flow: http.HTTPFlow) -> None:
        worker = self._lookup(self._worker_of(flow.client_conn))
        if worker is None:
            return
        kind = self.credentials.apply(
            _host_of(flow), flow.request.port, flow.request.headers, worker.factory_token
        )
        if kind is not None:
            CREDENTIALS.labels(kind).inc()

    def _lookup(self, worker_id: str | None) -> ProxyWorker | None:
        return self._workers(worker_id) if worker_id else None

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """Connect only where a decision was made, and only to the address that was checked."""
        address = data.server.address
        pinned = self._pinned.get(data.client.id, {})
        if address is None or (address[0], address[1]) not in pinned:
            data.server.error = "egress denied: no decision for this connection"
            return
        data.server.address = (pinned[(address[0], address[1])], address[1])

    def client_disconnected(self, client: Any) -> None:
        self._pinned.pop(client.id, None)
        self._tunnels.pop(client.id, None)

    async def _decide(self, flow: http.HTTPFlow) -> None:
        host, port = _host_of(flow), flow.request.port
        target = f"{host}:{port}"
        worker = self._worker_of(flow.client_conn)
        served = self._lookup(worker)
        policy = served.policy if served is not None else None
        if worker is None or policy is None:
            CONNECTIONS.labels("denied").inc()
            flow.response = _refusal(target, "this connection belongs to no worker")
            return
        addresses = await resolve(host, port)
        verdict = policy.decide(host, port, addresses)
        if not verdict.allowed:
            CONNECTIONS.labels("denied").inc()
            flow.response = _refusal(target, verdict.reason)
            log.info("egress denied", worker_id=worker, target=target, reason=verdict.reason)
            try:
                await self._report(worker, target, verdict.reason)
            except Exception as exc:  # a Redis outage must not break the proxy
                log.warning("egress refusal not reported", worker_id=worker, error=str(exc))
            return
        CONNECTIONS.labels("allowed").inc()
        self._pinned.setdefault(flow.client_conn.id, {})[(flow.request.host, port)] = str(
            addresses[0]
        )


def _host_of(flow: http.HTTPFlow) -> str:
    return flow.request.host.lower().rstrip(".")


def _refusal(target: str, reason: str) -> http.Response:
    body = f"egress denied: {target} ({reason})\n".encode()
    return http.Response.make(403, body, {"content-type": "text/plain; charset=utf-8"})


async def resolve(host: str, port: int) -> list[IPAddress]:
    """The addresses a name stands for (an IP literal stands for itself); empty if none."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    seen: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address not in seen:
            seen.append(address)
    return seen


class EgressProxy:
    """mitmproxy's master with our addon; workers' connections come in through
    :meth:`serve_worker_connection`."""

    def __init__(
        self,
        workers: WorkerLookup,
        report: Reporter,
        *,
        credentials: Credentials | None = None,
        confdir: str | None = None,
        upstream_ca: str | None = None,
    ) -> None:
        self._addon = EgressAddon(workers, report, credentials)
        self._confdir = confdir
        self._upstream_ca = upstream_ca
        self._master: Master | None = None
        self._task: asyncio.Task[None] | None = None
        self._instance: Any = None

    async def start(self) -> None:
        """mitmproxy's master belongs to the running loop, so it is made here."""
        opts = options.Options()
        master = self._master = Master(opts, with_termlog=False)
        logging.getLogger("mitmproxy").setLevel(logging.WARNING)
        master.addons.add(*default_addons())
        master.addons.add(self._addon)
        extra: dict[str, Any] = {}
        if self._confdir is not None:
            extra["confdir"] = self._confdir  # the CA that opens credentialed tunnels
        if self._upstream_ca is not None:
            extra["ssl_verify_upstream_trusted_ca"] = self._upstream_ca
        opts.update(
            mode=["regular@127.0.0.1:0"],
            # Tunnels are raw bytes but to the hosts a credential goes to, whose TLS the addon
            # opens per worker (tls_clienthello).
            **tunnel_options(self._addon.credentials),
            # CONNECT is answered only once the upstream connection is made.
            connection_strategy="eager",
            # Bodies stream through past 256 KiB (a download is not held in memory).
            stream_large_bodies="256k",
            **extra,
        )
        self._task = asyncio.create_task(master.run(), name="mitmproxy")
        server = master.addons.get("proxyserver")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while loop.time() < deadline:
            if self._task.done():
                self._task.result()  # raises what stopped it
            instances = list(server.servers) if server is not None else []
            if instances and all(instance.is_running for instance in instances):
                self._instance = instances[0]
                return
            await asyncio.sleep(0.02)
        raise RuntimeError("mitmproxy did not start within 30 s")

    async def serve_worker_connection(
        self, worker_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        assert self._instance is not None, "start() first"
        await self._instance.handle_stream(reader, _Tagged(writer, worker_id))

    async def close(self) -> None:
        if self._master is None:
            return
        self._master.shutdown()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5)
            except (TimeoutError, asyncio.CancelledError, Exception):
                self._task.cancel()
