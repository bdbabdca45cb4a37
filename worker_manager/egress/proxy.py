"""The egress proxy: mitmproxy, with one addon that applies each worker's grant.

mitmproxy runs in the egress service's own event loop. Its listening server is bound to a
loopback port nobody is told about; workers never reach it over TCP. Each worker's
``proxy.sock`` hands its connections straight to mitmproxy's connection handler
(:meth:`EgressProxy.serve_worker_connection`), tagged with the worker's id, so the addon knows
who asks without any credential the agent could copy or forge. A connection that carries no
worker's tag (anything on the host that found the loopback port) is refused outright. A worker
holds at most so many connections at once (:mod:`worker_manager.egress.limits`).

**Deciding.** For each ``CONNECT host:port`` and each plain request (``GET http://host/…``),
before any byte of it goes anywhere (mitmproxy's ``requestheaders``, so a large body streams
through only once it is decided), the addon resolves the name itself, asks
:class:`worker_manager.egress.policy.EgressPolicy` and, when allowed, pins the upstream
connection to the address it checked (so a name cannot re-resolve to a private address between
the check and the connect: DNS rebinding). A plain request is sent to that address (its
``Host`` as the client wrote it), so mitmproxy finds the upstream connection it already holds
there: keep-alive works, instead of a new connection per request. Each server connection then
has a *route*: the destination the proxy decided and connected to (the name as granted, or the
IP literal).

**What the client says inside must name that destination.** A grant is checked by name and
connected by address, and one address (a CDN's shared front end) serves many names, routing by
the name the client sends: the ``Host`` of a plain request, the SNI of a TLS ClientHello, the
``Host`` of a request inside a tunnel. So a plain request or a request inside a tunnel whose
``Host`` names another host is refused, and a tunnel whose ClientHello names another host (to
an IP literal: any host) is closed before its ClientHello goes on, each reported as
``egress denied: host:port`` naming the host the client tried to reach.

**Refusals** are a 403 for the client (a request whose body mitmproxy would stream is dropped
instead: it cannot be answered before its body is read) and an ``error`` event
``egress denied: host:port`` on the worker's own output (each one); the service's log takes a
bounded number of them (:class:`~worker_manager.egress.limits.DenialLog`). While the addon
decides, mitmproxy reads no more of the client (:class:`_Link`): an upload is not queued in
memory behind a slow DNS answer.

**TLS** is passed through untouched after its ClientHello is read (the proxy sees names and
ports, not content), except to the hosts the operator holds a credential for
(:mod:`worker_manager.egress.credentials`): there the addon lets mitmproxy open the tunnel with
the service's CA and adds the credential to each request, chosen by the tunnel's route, never by
anything the client wrote. Only there: never into plain HTTP (:func:`carries_credentials`).
mitmproxy checks those upstreams' certificates against the route's name (against the public
roots, plus ``WM_EGRESS_UPSTREAM_CA`` for an operator's own servers). Inside a tunnel,
anything that is neither TLS nor HTTP is relayed as raw bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from mitmproxy import connection, ctx, http, options, tls
from mitmproxy.addons import default_addons
from mitmproxy.addons.next_layer import NeedsMoreData, NextLayer
from mitmproxy.master import Master
from mitmproxy.net.http import url
from mitmproxy.net.http.http1.read import expected_http_body_size
from mitmproxy.net.tls import starts_like_tls_record
from mitmproxy.proxy import layer, layers, server_hooks
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.http import HTTPMode
from mitmproxy.utils import human
from prometheus_client import Counter

from worker_manager.core.logs import get_logger
from worker_manager.egress.credentials import Credentials
from worker_manager.egress.limits import ConnectionLimit, DenialLog
from worker_manager.egress.policy import EgressPolicy

log = get_logger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: How a refusal reaches the worker's output: (worker_id, "host:port", reason).
Reporter = Callable[[str, str, str], Awaitable[None]]
#: What a name stands for: (host, port) -> its addresses (empty: it does not resolve).
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]


@dataclass(frozen=True, slots=True)
class ProxyWorker:
    """What the proxy knows of one worker: its grant, and its Factory placeholder (if any)."""

    policy: EgressPolicy
    factory_token: str = ""


#: A worker by id, or None when the service serves no such worker.
WorkerLookup = Callable[[str], ProxyWorker | None]

CONNECTIONS = Counter(
    "wm_egress_connections",
    "Connections asked of the egress proxy, by verdict (allowed, denied, over_limit).",
    ["verdict"],
)
CREDENTIALS = Counter(
    "wm_egress_credentials",
    "Requests the egress proxy added an operator's credential to, by kind (git, factory).",
    ["kind"],
)

#: Decisions kept per client connection (each is used by the connect that follows it).
_MAX_PINNED = 256
#: The answer to a connection past its worker's bound (the worker may retry once one closes).
_TOO_MANY = (
    b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)


@dataclass(frozen=True, slots=True)
class Route:
    """Where one server connection goes: what the proxy decided and connected to."""

    worker_id: str
    #: The destination as decided: a name (lower case, no trailing dot) or an IP literal.
    name: str
    port: int
    #: The address checked and connected to.
    address: str

    @property
    def target(self) -> str:
        return f"{self.name}:{self.port}"


def _bare(host: str) -> str:
    return host.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")


def same_host(said: str, name: str) -> bool:
    """Whether ``said`` (a Host's or an SNI's host) is the destination ``name``: names alike
    in any case and with or without a trailing dot, IP literals alike in any spelling."""
    said, name = _bare(said), _bare(name)
    try:
        return ipaddress.ip_address(said) == ipaddress.ip_address(name)
    except ValueError:
        return said == name


def authority_names(authority: str | None, name: str, port: int) -> bool:
    """Whether a request's ``Host`` (``:authority`` in HTTP/2) names the destination
    ``name:port``: the same host, and the same port when it gives one. A request without one
    (HTTP/1.0) names nothing else; one that is not an authority names nothing."""
    if authority is None:
        return True
    try:
        host, given = url.parse_authority(authority, check=True)
    except ValueError:
        return False
    return same_host(host, name) and (given is None or given == port)


def sni_names(sni: str | None, name: str) -> bool:
    """Whether a TLS ClientHello's server name is the destination ``name`` (none names
    nothing else; to an IP literal, a name is another host)."""
    return sni is None or same_host(sni, name)


def shown(host: str) -> str:
    """A host a client wrote, as a refusal may quote it: printable ASCII, bounded."""
    cleaned = "".join(c if 33 <= ord(c) < 127 else "?" for c in host[:255])
    return cleaned or "?"


@dataclass(frozen=True, slots=True)
class _Tagged:
    """A stream writer that tells mitmproxy which worker is on the other end.

    mitmproxy reads the client's ``peername`` and ``sockname`` from the writer; a Unix socket
    has neither in the form it expects, so the worker's id rides in ``sockname`` and the
    connection's serial (to close it from a hook) in ``peername``'s port."""

    writer: asyncio.StreamWriter
    worker_id: str
    serial: int

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return ("127.0.0.1", self.serial)
        if name == "sockname":
            return (self.worker_id, 0)
        return self.writer.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.writer, name)


@dataclass(slots=True)
class _Link:
    """A worker's connection as the addon holds it: its writer (to close it from a hook) and
    whether mitmproxy may read more of it.

    mitmproxy keeps reading a client while one of its hooks runs and queues what it reads in
    memory; a fast upload during a slow DNS answer was held whole (8 bodies of 60 MiB: 1 GB).
    While the addon decides, the worker's bytes stay in its socket instead (:class:`_Held`)."""

    writer: asyncio.StreamWriter
    readable: asyncio.Event


@dataclass(frozen=True, slots=True)
class _Held:
    """The reader mitmproxy reads a worker's connection from: it waits while the link is held."""

    reader: asyncio.StreamReader
    link: _Link

    async def read(self, n: int = -1) -> bytes:
        if not self.link.readable.is_set():
            await self.link.readable.wait()
        return await self.reader.read(n)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.reader, name)


class EgressAddon:
    """mitmproxy hooks: decide, pin, check what the client names, refuse and report; open TLS
    only to add a credential."""

    def __init__(
        self,
        workers: WorkerLookup,
        report: Reporter,
        credentials: Credentials | None = None,
        *,
        resolver: Resolver | None = None,
    ) -> None:
        self._workers = workers
        self._report = report
        self._resolve = resolver or resolve
        self.credentials = credentials or Credentials()
        self.denials = DenialLog()
        #: client connection id -> {(host, port): the route decided for it}
        self._pinned: dict[str, dict[tuple[str, int], Route]] = {}
        #: server connection id -> the route of a CONNECT tunnel. Kept until its client
        #: disconnects: every request in the tunnel carries the tunnel's first server
        #: connection, also after mitmproxy reconnected to the upstream that closed it.
        self._tunnels: dict[str, Route] = {}
        #: client connection id -> the server connection ids of its tunnels
        self._client_tunnels: dict[str, list[str]] = {}
        #: connection serial (see _Tagged) -> the worker's connection, to hold or close it
        self.links: dict[int, _Link] = {}
        #: reports sent from hooks that cannot wait for them
        self._reports: set[asyncio.Future[None]] = set()

    @staticmethod
    def _worker_of(client: Any) -> str | None:
        sockname = getattr(client, "sockname", None)
        if isinstance(sockname, tuple) and sockname and sockname[1] == 0:
            worker = sockname[0]
            return worker if isinstance(worker, str) and worker else None
        return None

    def _lookup(self, worker_id: str | None) -> ProxyWorker | None:
        return self._workers(worker_id) if worker_id else None

    def tunnel_of(self, server: connection.Server) -> Route | None:
        """The route of the tunnel ``server`` is the upstream of, if it is one."""
        return self._tunnels.get(server.id)

    # --- hooks ---------------------------------------------------------------------------------
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        with self._holding(flow.client_conn):
            route = await self._decide(flow, _host_of(flow), flow.request.port)
        if route is not None:
            self._tunnels[flow.server_conn.id] = route
            self._client_tunnels.setdefault(flow.client_conn.id, []).append(flow.server_conn.id)

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Every request but a CONNECT, before its body is read: inside a tunnel, bound to the
        tunnel's route; otherwise decided on its own."""
        if flow.response is not None:
            return
        with self._holding(flow.client_conn):
            await self._bind(flow)

    async def _bind(self, flow: http.HTTPFlow) -> None:
        route = self._tunnels.get(flow.server_conn.id)
        if route is not None and flow.request.host != route.address:
            route = None  # not a request the tunnel carries (those go to its address)
        in_tunnel = route is not None
        if route is None:
            route = await self._decide(flow, _host_of(flow), flow.request.port)
            if route is None:
                return
        authority = flow.request.host_header
        if not authority_names(authority, route.name, route.port):
            assert authority is not None
            try:
                host, given = url.parse_authority(authority, check=True)
            except ValueError:
                host, given = authority, None
            target = f"{shown(host)}:{given or route.port}"
            await self._refuse(
                flow, route.worker_id, target, f"Host names another host than {route.target}"
            )
            return
        if not in_tunnel:
            # The upstream connection is chosen by the address checked, not the name: so
            # mitmproxy finds the connection it already holds there (keep-alive) instead of
            # opening one per request. Only the target changes; Host stays as the client sent it.
            flow.request.data.host = route.address
        if carries_credentials(
            in_tunnel=in_tunnel,
            client_tls=flow.client_conn.tls_established,
            upstream_tls=flow.request.scheme == "https",
        ):
            self._add_credential(flow, route)

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        """A tunnel's ClientHello must name its route; its TLS is opened only where a
        credential goes in, every other tunnel passes through untouched."""
        client = data.context.client
        route = self._tunnels.get(data.context.server.id)
        worker = self._lookup(self._worker_of(client))
        if route is None or worker is None:  # TLS to the proxy itself, or no worker's
            self._close(client)
            return
        sni = data.client_hello.sni
        if not sni_names(sni, route.name):
            assert sni is not None
            target = f"{shown(sni)}:{route.port}"
            reason = f"TLS names another host than {route.target}"
            self._count_refusal(route.worker_id, target, reason)
            self._background(self._send_report(route.worker_id, target, reason))
            # Opened (never relayed: the ClientHello goes nowhere) and closed at once.
            data.ignore_connection = False
            data.establish_server_tls_first = False
            self._close(client)
            return
        data.ignore_connection = not self.credentials.intercepts(
            route.name, route.port, worker.factory_token
        )

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """Connect only where a decision was made, and only to the address that was checked;
        TLS to it names the destination decided (not the address)."""
        address = data.server.address
        pinned = self._pinned.get(data.client.id, {})
        if address is None or (address[0], address[1]) not in pinned:
            data.server.error = "egress denied: no decision for this connection"
            return
        route = pinned[(address[0], address[1])]
        if not _is_literal(route.name) and data.server.sni in (None, address[0], route.address):
            # TLS names the destination decided, not the address: also for a plain request
            # addressed by the checked IP, and for a tunnel's reconnect after its upstream
            # closed (the client's SNI, if any, was already checked to be this name).
            data.server.sni = route.name
        data.server.address = (route.address, address[1])

    def client_disconnected(self, client: connection.Client) -> None:
        self._pinned.pop(client.id, None)
        for server_id in self._client_tunnels.pop(client.id, []):
            self._tunnels.pop(server_id, None)

    # --- the decision --------------------------------------------------------------------------
    async def _decide(self, flow: http.HTTPFlow, host: str, port: int) -> Route | None:
        """The route to ``host:port`` for this flow's worker, pinned for its connection; or
        None with the flow refused."""
        target = f"{host}:{port}"
        worker = self._worker_of(flow.client_conn)
        served = self._lookup(worker)
        if worker is None or served is None:
            CONNECTIONS.labels("denied").inc()
            _refuse_flow(flow, target, "this connection belongs to no worker")
            return None
        addresses = await self._resolve(host, port)
        verdict = served.policy.decide(host, port, addresses)
        if not verdict.allowed:
            await self._refuse(flow, worker, target, verdict.reason)
            return None
        CONNECTIONS.labels("allowed").inc()
        route = Route(worker, host, port, str(addresses[0]))
        pinned = self._pinned.setdefault(flow.client_conn.id, {})
        pinned[(flow.request.host, port)] = route
        # A later connection of this client to the address checked (a plain request is sent
        # to it; mitmproxy reconnects by address inside a tunnel whose upstream closed) is the
        # same decision.
        pinned[(route.address, port)] = route
        while len(pinned) > _MAX_PINNED:  # a connection is used right after its decision
            del pinned[next(iter(pinned))]
        return route

    def _add_credential(self, flow: http.HTTPFlow, route: Route) -> None:
        worker = self._lookup(route.worker_id)
        if worker is None:
            return
        kind = self.credentials.apply(
            route.name, route.port, flow.request.headers, worker.factory_token
        )
        if kind is not None:
            CREDENTIALS.labels(kind).inc()

    # --- refusing ------------------------------------------------------------------------------
    async def _refuse(self, flow: http.HTTPFlow, worker: str, target: str, reason: str) -> None:
        self._count_refusal(worker, target, reason)
        _refuse_flow(flow, target, reason)
        await self._send_report(worker, target, reason)

    def _count_refusal(self, worker: str, target: str, reason: str) -> None:
        CONNECTIONS.labels("denied").inc()
        left_out = self.denials.admit(worker)
        if left_out is not None:
            log.info(
                "egress denied", worker_id=worker, target=target, reason=reason, left_out=left_out
            )

    async def _send_report(self, worker: str, target: str, reason: str) -> None:
        try:
            await self._report(worker, target, reason)
        except Exception as exc:  # a Redis outage must not break the proxy
            log.warning("egress refusal not reported", worker_id=worker, error=str(exc))

    def _close(self, client: connection.Client) -> None:
        """Close a worker's connection from a hook (its transport aborted, nothing flushed)."""
        if self._worker_of(client) is None:
            return
        link = self._link(client)
        if link is not None:
            link.writer.transport.abort()

    def _link(self, client: connection.Client) -> _Link | None:
        if self._worker_of(client) is None or not client.peername:
            return None
        return self.links.get(client.peername[1])

    @contextlib.contextmanager
    def _holding(self, client: connection.Client) -> Iterator[None]:
        """The client's bytes left unread while a hook decides (see :class:`_Link`)."""
        link = self._link(client)
        if link is None:
            yield
            return
        link.readable.clear()
        try:
            yield
        finally:
            link.readable.set()

    def _background(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)


class TunnelLayers(NextLayer):
    """mitmproxy's own choice of protocol layer, but inside a tunnel: TLS and HTTP are parsed
    (the ClientHello and each ``Host`` judged by :class:`EgressAddon`), anything else is relayed
    as raw bytes, unrecorded. It replaces mitmproxy's ``NextLayer`` addon, whose guesses (a
    first read without a line end is "not HTTP") would let a slow request line through
    unjudged."""

    def __init__(self, addon: EgressAddon) -> None:
        self._addon = addon

    def _next_layer(
        self, context: Context, data_client: bytes, data_server: bytes
    ) -> layer.Layer | None:
        if context.client.tls or self._addon.tunnel_of(context.server) is None:
            # The proxy's own HTTP, or what an opened TLS carries: mitmproxy's choice.
            return super()._next_layer(context, data_client, data_server)
        if starts_like_tls_record(data_client):
            server_tls = layers.ServerTLSLayer(context)
            server_tls.child_layer = layers.ClientTLSLayer(context)
            return server_tls
        if data_client and not data_server:
            line_end = data_client.find(b"\n")
            if _starts_like_http(data_client) and line_end > 0:
                return layers.HttpLayer(context, HTTPMode.transparent)
            if line_end < 0 and len(data_client) < _FIRST_LINE and data_client[:3].isalpha():
                raise NeedsMoreData  # maybe a request line, not whole yet
            if len(data_client) < 3:
                raise NeedsMoreData  # too little to tell TLS from the rest
        elif not data_client and not data_server:
            raise NeedsMoreData
        return layers.TCPLayer(context, ignore=True)


#: How much of a tunnel's first bytes are read for a request line before they count as raw.
_FIRST_LINE = 8192


def _starts_like_http(data: bytes) -> bool:
    """A request line's start: a method's letters, then a space before the first line ends."""
    first = data.split(b"\n", 1)[0]
    return len(data) >= 3 and data[:3].isalpha() and b" " in first


async def _answer_too_many(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int
) -> None:
    """Answer 429 and close. The request is read first (a second at most, 64 KiB at most):
    a socket closed with unread bytes is reset, and the client would never see the answer."""
    try:
        with contextlib.suppress(
            OSError,
            ValueError,
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,  # 64 KiB without a head's end
        ):
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 1)
        body = (
            f"egress: this worker has {limit} connections open, the most it may; "
            "close one and retry\n"
        ).encode()
        with contextlib.suppress(OSError):
            writer.write(_TOO_MANY % (len(body), body))
            await writer.drain()
    finally:
        writer.close()


def carries_credentials(*, in_tunnel: bool, client_tls: bool, upstream_tls: bool) -> bool:
    """Whether an operator's credential may go into a request: only inside a tunnel whose TLS
    the proxy opened (so the request is bound to the tunnel's route), going on over TLS that
    mitmproxy verifies against the route's name. Never over plain HTTP, on any port: the
    address the proxy connected to proves nothing without a certificate, and anyone on the
    path (or who poisons the service's DNS) would read the token."""
    return in_tunnel and client_tls and upstream_tls


def _host_of(flow: http.HTTPFlow) -> str:
    return flow.request.host.lower().rstrip(".")


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(_bare(host))
    except ValueError:
        return False
    return True


def _answerable(flow: http.HTTPFlow) -> bool:
    """Whether a refusal can be a response: mitmproxy will read the request's body whole
    (none, or a known length it does not stream) before it answers."""
    try:
        size = expected_http_body_size(flow.request)
    except ValueError:
        return False
    if size == 0:
        return not flow.request.is_http2 or flow.request.method in ("GET", "HEAD", "OPTIONS")
    limit = human.parse_size(ctx.options.stream_large_bodies)
    return size is not None and size > 0 and (limit is None or size <= limit)


def _refuse_flow(flow: http.HTTPFlow, target: str, reason: str) -> None:
    if _answerable(flow):
        flow.response = _refusal(target, reason)
    else:
        # A body mitmproxy would stream cannot be answered early: the flow is dropped
        # (connection closed) before any of it goes anywhere.
        flow.kill()


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
    :meth:`serve_worker_connection`.

    ``resolver`` replaces DNS (tests give names to loopback servers); the service never sets
    it."""

    def __init__(
        self,
        workers: WorkerLookup,
        report: Reporter,
        *,
        credentials: Credentials | None = None,
        confdir: str | None = None,
        upstream_ca: str | None = None,
        connection_limit: ConnectionLimit | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self._addon = EgressAddon(workers, report, credentials, resolver=resolver)
        self._confdir = confdir
        self._upstream_ca = upstream_ca
        self.connections = connection_limit or ConnectionLimit()
        self._serials = itertools.count(1)
        #: workers whose connection past the bound is being answered 429
        self._answering: set[str] = set()
        self._master: Master | None = None
        self._task: asyncio.Task[None] | None = None
        self._instance: Any = None

    async def start(self) -> None:
        """mitmproxy's master belongs to the running loop, so it is made here."""
        opts = options.Options()
        master = self._master = Master(opts, with_termlog=False)
        logging.getLogger("mitmproxy").setLevel(logging.WARNING)
        # mitmproxy's own, but the choice of layer inside a tunnel is ours (TunnelLayers).
        master.addons.add(
            *(
                TunnelLayers(self._addon) if isinstance(addon, NextLayer) else addon
                for addon in default_addons()
            )
        )
        master.addons.add(self._addon)
        extra: dict[str, Any] = {}
        if self._confdir is not None:
            extra["confdir"] = self._confdir  # the CA that opens credentialed tunnels
        if self._upstream_ca is not None:
            extra["ssl_verify_upstream_trusted_ca"] = self._upstream_ca
        opts.update(
            mode=["regular@127.0.0.1:0"],
            # Every tunnel's first bytes are read (its ClientHello judged); TLS is then opened
            # only where a credential goes in (tls_clienthello) and relayed raw elsewhere.
            ignore_hosts=[],
            allow_hosts=[],
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
        if not self.connections.acquire(worker_id):
            CONNECTIONS.labels("over_limit").inc()
            if self._addon.denials.admit(worker_id) is not None:
                log.info(
                    "egress connection over the limit",
                    worker_id=worker_id,
                    limit=self.connections.per_worker,
                )
            if worker_id in self._answering:  # one answered at a time: a flood costs no fds
                writer.close()
                return
            self._answering.add(worker_id)
            try:
                await _answer_too_many(reader, writer, self.connections.per_worker)
            finally:
                self._answering.discard(worker_id)
            return
        serial = next(self._serials)
        readable = asyncio.Event()
        readable.set()
        link = self._addon.links[serial] = _Link(writer, readable)
        try:
            await self._instance.handle_stream(
                _Held(reader, link), _Tagged(writer, worker_id, serial)
            )
        finally:
            self._addon.links.pop(serial, None)
            self.connections.release(worker_id)

    async def close(self) -> None:
        if self._master is None:
            return
        self._master.shutdown()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5)
            except (TimeoutError, asyncio.CancelledError, Exception):
                self._task.cancel()
