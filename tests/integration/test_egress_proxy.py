"""The egress proxy from a worker's side (SPEC §7), through the real mitmproxy and its addon.

Each test speaks to the proxy as a hostile agent would, over the worker's own Unix socket, and
watches loopback servers standing for the world: what reaches them (names, headers, bytes) and
what the proxy reports. Names under ``.test`` resolve to loopback through the proxy's resolver
(a constructor argument the service never sets), and their TLS is signed by a CA of the test.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import resource
import shutil
import ssl
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.support.git_server import LocalCA
from worker_manager.contract.credentials import parse_git_credentials
from worker_manager.egress.control import EgressClient
from worker_manager.egress.credentials import Credentials
from worker_manager.egress.limits import ConnectionLimit
from worker_manager.egress.policy import EgressPolicy
from worker_manager.egress.proxy import EgressProxy, IPAddress, ProxyWorker
from worker_manager.settings import Settings

LOOPBACK = ipaddress.ip_address("127.0.0.1")


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, f"never happened within {timeout}s: {what}"
        await asyncio.sleep(0.05)


# --- the world: loopback servers ------------------------------------------------------------------
@dataclass
class Upstream:
    """An HTTP server on loopback (TLS when given a context) that records what reaches it."""

    tls: ssl.SSLContext | None = None
    port: int = 0
    heads: list[str] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)
    connections: int = 0
    received: list[int] = field(default_factory=list)
    #: Close each connection after its first answer (as a server ending an idle keep-alive).
    one_answer_each: bool = False
    _server: asyncio.AbstractServer | None = None
    _handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = field(default_factory=dict)

    async def start(self) -> Upstream:
        if self.tls is not None:
            self.tls.sni_callback = self._sni
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def _sni(self, _sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        self.server_names.append(name)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = writer
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                self.heads.append(head)
                if head.startswith("SSH-"):  # a protocol that is not HTTP: echoed
                    writer.write(head.encode())
                    await writer.drain()
                    continue
                self.received.append(await _read_body(reader, head))
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nreached")
                await writer.drain()
                if self.one_answer_each:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    def authorizations(self) -> list[str]:
        return [
            line.split(":", 1)[1].strip()
            for head in self.heads
            for line in head.split("\r\n")
            if line.lower().startswith("authorization:")
        ]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._handlers.values():
            writer.close()
        await _finished(list(self._handlers))


async def _finished(tasks: list[asyncio.Task[None]]) -> None:
    """Wait for connection handlers to end by themselves (a cancelled one is logged as an
    error by asyncio's stream server)."""
    pending = [task for task in tasks if not task.done()]
    if pending:
        await asyncio.wait(pending, timeout=10)


async def _read_body(reader: asyncio.StreamReader, head: str) -> int:
    headers = {
        k.strip().lower(): v.strip()
        for k, _, v in (line.partition(":") for line in head.split("\r\n")[1:])
    }
    if "content-length" in headers:
        left = int(headers["content-length"])
        while left:  # a piece at a time: the test process's memory is measured
            left -= len(await reader.readexactly(min(left, 1 << 16)))
        return int(headers["content-length"])
    if headers.get("transfer-encoding") == "chunked":
        total = 0
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            total += size
            if size == 0:
                return total
    return 0


# --- the proxy, as the service runs it ------------------------------------------------------------
@dataclass
class Proxy:
    """The egress proxy with one Unix socket per worker, as the service serves them."""

    root: Path
    credentials: Credentials = field(default_factory=Credentials)
    upstream_ca: Path | None = None
    limit: ConnectionLimit | None = None
    slow_names: float = 0.0
    workers: dict[str, ProxyWorker] = field(default_factory=dict)
    reports: list[tuple[str, str, str]] = field(default_factory=list)
    proxy: EgressProxy | None = None
    _servers: list[asyncio.AbstractServer] = field(default_factory=list)
    _handlers: list[asyncio.Task[None]] = field(default_factory=list)
    #: Where the sockets are: a short path (a Unix socket's is at most 107 bytes).
    _sockets: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="wm-px-")))

    async def start(self) -> Proxy:
        self.proxy = EgressProxy(
            self.workers.get,
            self._report,
            credentials=self.credentials,
            confdir=str(self.root / "conf"),
            upstream_ca=str(self.upstream_ca) if self.upstream_ca else None,
            connection_limit=self.limit,
            resolver=self._resolve,
        )
        await self.proxy.start()
        return self

    @property
    def ca(self) -> Path:
        return self.root / "conf" / "mitmproxy-ca-cert.pem"

    async def _resolve(self, host: str, port: int) -> list[IPAddress]:
        try:
            return [ipaddress.ip_address(host.strip("[]"))]
        except ValueError:
            pass
        if not host.endswith(".test"):
            return []
        if host.startswith("slow."):
            await asyncio.sleep(self.slow_names)
        return [LOOPBACK]

    async def _report(self, worker_id: str, target: str, reason: str) -> None:
        self.reports.append((worker_id, target, reason))

    def denied(self, worker_id: str) -> list[str]:
        """What the worker's output would say: ``egress denied: host:port`` per refusal."""
        return [f"egress denied: {t}" for w, t, _r in self.reports if w == worker_id]

    async def serve(self, worker_id: str, grant: list[str], factory_token: str = "") -> str:
        self.workers[worker_id] = ProxyWorker(EgressPolicy.from_entries(grant), factory_token)
        path = str(self._sockets / f"{worker_id}.sock")
        proxy = self.proxy
        assert proxy is not None

        async def proxied(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._handlers.append(task)
            await proxy.serve_worker_connection(worker_id, reader, writer)

        self._servers.append(await asyncio.start_unix_server(proxied, path=path))
        return path

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        await _finished(self._handlers)
        if self.proxy is not None:
            await self.proxy.close()
        shutil.rmtree(self._sockets, ignore_errors=True)


@pytest.fixture
async def upstreams() -> AsyncIterator[list[Upstream]]:
    started: list[Upstream] = []
    yield started
    for upstream in started:
        await upstream.close()


@pytest.fixture
async def proxies() -> AsyncIterator[list[Proxy]]:
    started: list[Proxy] = []
    Client.opened.clear()
    yield started
    for client in Client.opened:
        client.close()
    Client.opened.clear()
    for proxy in started:
        await proxy.close()


async def plain(upstreams: list[Upstream]) -> Upstream:
    upstreams.append(await Upstream().start())
    return upstreams[-1]


async def tls_upstream(upstreams: list[Upstream], ca: LocalCA) -> Upstream:
    upstreams.append(await Upstream(tls=ca.server_context()).start())
    return upstreams[-1]


# --- a hostile client -----------------------------------------------------------------------------
class Client:
    """One connection to the proxy's socket, spoken to byte by byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    #: Every client of the running test, closed before the proxy is.
    opened: list[Client] = []

    @classmethod
    async def open(cls, path: str) -> Client:
        client = cls(*await asyncio.open_unix_connection(path))
        cls.opened.append(client)
        return client

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> tuple[int, bytes]:
        """A response's status and body (content-length bodies only); (0, b"") if closed."""
        try:
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 20)
        except (asyncio.IncompleteReadError, ConnectionError):
            return 0, b""
        lines = head.decode().split("\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        body = await asyncio.wait_for(self.reader.readexactly(length), 20) if length else b""
        return int(lines[0].split(" ")[1]), body

    async def connect(self, target: str) -> int:
        await self.send(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        return (await self.response())[0]

    async def tls(self, context: ssl.SSLContext, server_name: str | None) -> bool:
        """TLS inside the tunnel; False when the proxy closed it instead."""
        try:
            await asyncio.wait_for(self.writer.start_tls(context, server_hostname=server_name), 20)
        except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
            return False
        return True

    async def get(self, target: str, host: str, extra: str = "") -> tuple[int, bytes]:
        await self.send(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
        return await self.response()

    async def closed(self) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1), 20) == b""
        except ConnectionError:
            return True

    def close(self) -> None:
        self.writer.close()


def trusting(*cas: Path, check_hostname: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context()
    for ca in cas:
        context.load_verify_locations(str(ca))
    context.check_hostname = check_hostname
    return context


def basic(token: str) -> str:
    return "Basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode()


# --- h: a credential for a named HTTPS host -------------------------------------------------------
async def test_a_git_credential_reaches_a_named_https_host_keyed_by_name(
    tmp_path: Path, upstreams: list[Upstream], proxies: list[Proxy]
) -> None:
    ca = LocalCA(tmp_path / "ca", "git.test")
    git = await tls_upstream(upstreams, ca)
    credentials = Credentials(git=parse_git_credentials(json.dumps({"git.test": "tok-name"})))
    proxy = await Proxy(tmp_path, credentials, upstream_ca=ca.ca_pem).start()
    proxies.append(proxy)
    # The name resolves to loopback here, which only a literal entry reaches.
    socket = await proxy.serve("w", [f"git.test:{git.port}", f"127.0.0.1:{git.port}"])

    client = await Client.open(socket)
    assert await client.connect(f"git.test:{git.port}") == 200
    assert await client.tls(trusting(proxy.ca), "git.test")
    status, body = await client.get("/info/refs", f"git.test:{git.port}", "Authorization: x\r\n")
    assert (status, body) == (200, b"reached")
    # The operator's token, not what the agent sent; and TLS to the name, not its address.
    assert git.authorizations() == [basic("tok-name")]
    assert git.server_names == ["git.test"]

    # A client that names nothing in its ClientHello: the proxy names the destination upstream.
    quiet = await Client.open(socket)
    assert await quiet.connect(f"git.test:{git.port}") == 200
    assert await quiet.tls(trusting(proxy.ca, check_hostname=False), None)
    assert (await quiet.get("/info/refs", f"git.test:{git.port}"))[0] == 200
    assert git.authorizations() == [basic("tok-name")] * 2
    assert git.server_names == ["git.test"] * 2
    assert proxy.reports == []


# --- a credential goes only into TLS the proxy opened and verifies ------------------------------
async def test_no_credential_goes_out_over_plain_http(
    tmp_path: Path, upstreams: list[Upstream], proxies: list[Proxy]
) -> None:
    web = await plain(upstreams)
    # Keyed by the bare name (any port) and by name and port, git and Factory alike.
    credentials = Credentials(
        git=parse_git_credentials(
            json.dumps({"git.test": "tok-bare", f"port.test:{web.port}": "tok-port"})
        ),
        factory_host="api.test",
        factory_key="fk-real",
    )
    proxy = await Proxy(tmp_path, credentials).start()
    proxies.append(proxy)
    names = ("git.test", "port.test", "api.test")
    # The names resolve to loopback here, which only a literal entry reaches.
    grant = [f"{name}:{web.port}" for name in names] + [f"127.0.0.1:{web.port}"]
    socket = await proxy.serve("w", grant, "wm-mine")

    client = await Client.open(socket)
    for name in names:
        status, _ = await client.get(
            f"http://{name}:{web.port}/info/refs",
            f"{name}:{web.port}",
            "Authorization: Bearer wm-mine\r\n",
        )
        assert status == 200, name
    # Plain HTTP inside a tunnel to the credential's host: the same.
    tunnel = await Client.open(socket)
    assert await tunnel.connect(f"git.test:{web.port}") == 200
    assert (await tunnel.get("/info/refs", f"git.test:{web.port}"))[0] == 200

    # What the agent sent went on unchanged (its placeholder is worth nothing); nothing of the
    # operator's went out in clear.
    assert web.authorizations() == ["Bearer wm-mine"] * 3
    assert not any("tok-" in head or "fk-real" in head for head in web.heads)
    assert proxy.reports == []


# --- b: a credential never follows a Host the agent chose -----------------------------------------
async def test_a_credential_never_follows_a_host_header_the_agent_chose(
    tmp_path: Path, upstreams: list[Upstream], proxies: list[Proxy]
) -> None:
    front = await plain(upstreams)  # a shared front end, routing by Host
    ca = LocalCA(tmp_path / "ca", "127.0.0.1")
    tls_front = await tls_upstream(upstreams, ca)
    keyed_by_address = {
        f"127.0.0.1:{front.port}": "tok-plain",
        f"127.0.0.1:{tls_front.port}": "tok-tls",
    }
    credentials = Credentials(git=parse_git_credentials(json.dumps(keyed_by_address)))
    proxy = await Proxy(tmp_path, credentials, upstream_ca=ca.ca_pem).start()
    proxies.append(proxy)
    socket = await proxy.serve("w", [f"127.0.0.1:{front.port}", f"127.0.0.1:{tls_front.port}"])

    # Plain HTTP: the URL names the credential's host, the Host header another.
    client = await Client.open(socket)
    status, body = await client.get(f"http://127.0.0.1:{front.port}/x", "evil.test")
    assert status == 403 and b"egress denied: evil.test" in body
    assert front.heads == [], "nothing reached the front end"
    # The same request naming its own destination goes through, without the token: plain
    # HTTP never carries one (test_no_credential_goes_out_over_plain_http).
    assert (await client.get(f"http://127.0.0.1:{front.port}/x", f"127.0.0.1:{front.port}"))[
        0
    ] == 200
    assert front.authorizations() == []

    # Inside intercepted TLS to an address the credential is keyed by.
    tunnel = await Client.open(socket)
    assert await tunnel.connect(f"127.0.0.1:{tls_front.port}") == 200
    assert await tunnel.tls(trusting(proxy.ca, check_hostname=False), None)
    status, body = await tunnel.get("/x", "evil.test")
    assert status == 403 and b"egress denied: evil.test" in body
    assert tls_front.authorizations() == []
    assert proxy.denied("w") == [
        f"egress denied: evil.test:{front.port}",
        f"egress denied: evil.test:{tls_front.port}",
    ]


# --- e: the name inside must be the name granted --------------------------------------------------
async def test_a_tunnel_and_a_plain_request_carry_only_the_name_that_was_granted(
    tmp_path: Path, upstreams: list[Upstream], proxies: list[Proxy]
) -> None:
    ca = LocalCA(tmp_path / "ca", "granted.test")
    cdn = await tls_upstream(upstreams, ca)  # one address, many names
    web = await plain(upstreams)
    proxy = await Proxy(tmp_path).start()
    proxies.append(proxy)
    socket = await proxy.serve(
        "w",
        [
            f"granted.test:{cdn.port}",
            f"granted.test:{web.port}",
            f"127.0.0.1:{cdn.port}",
            f"127.0.0.1:{web.port}",
        ],
    )
    direct = trusting(ca.ca_pem)  # a tunnel's TLS is the upstream's own

    # The granted name end to end (TLS passed through untouched).
    ok = await Client.open(socket)
    assert await ok.connect(f"granted.test:{cdn.port}") == 200
    assert await ok.tls(direct, "granted.test")
    assert (await ok.get("/", "granted.test"))[0] == 200
    assert cdn.server_names == ["granted.test"]

    # A ClientHello naming another host through the granted name's tunnel: closed, and it
    # never reached the upstream.
    fronted = await Client.open(socket)
    assert await fronted.connect(f"granted.test:{cdn.port}") == 200
    assert not await fronted.tls(trusting(ca.ca_pem, check_hostname=False), "other.test")
    # Through a tunnel to an IP literal, any name is another host.
    by_address = await Client.open(socket)
    assert await by_address.connect(f"127.0.0.1:{cdn.port}") == 200
    assert not await by_address.tls(trusting(ca.ca_pem, check_hostname=False), "granted.test")
    assert cdn.server_names == ["granted.test"]

    # Plain HTTP, and HTTP inside a tunnel, naming another host than the one connected to.
    client = await Client.open(socket)
    status, _ = await client.get(f"http://granted.test:{web.port}/", "other.test")
    assert status == 403
    inside = await Client.open(socket)
    assert await inside.connect(f"granted.test:{web.port}") == 200
    assert (await inside.get("/", f"other.test:{web.port}"))[0] == 403
    # A request line that arrives slowly (its first read holds no line end) is still HTTP.
    slow = await Client.open(socket)
    assert await slow.connect(f"granted.test:{web.port}") == 200
    await slow.send(b"GET ")
    await asyncio.sleep(0.3)  # the client's own pace: the proxy reads "GET " alone
    await slow.send(f"/ HTTP/1.1\r\nHost: other.test:{web.port}\r\n\r\n".encode())
    assert (await slow.response())[0] == 403
    # One whose body would stream is dropped before any of it goes anywhere.
    upload = await Client.open(socket)
    await upload.send(
        f"POST http://granted.test:{web.port}/ HTTP/1.1\r\nHost: other.test\r\n"
        "transfer-encoding: chunked\r\n\r\n4\r\nbody\r\n".encode()
    )
    assert await upload.closed()
    assert web.heads == []
    # Anything else a tunnel carries goes through as it is.
    raw = await Client.open(socket)
    assert await raw.connect(f"granted.test:{web.port}") == 200
    await raw.send(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
    echoed = await asyncio.wait_for(raw.reader.readexactly(23), 20)
    assert echoed == b"SSH-2.0-OpenSSH_9.2\r\n\r\n"

    refused_names = [
        f"egress denied: other.test:{cdn.port}",
        f"egress denied: granted.test:{cdn.port}",
    ]
    assert proxy.denied("w") == refused_names + [f"egress denied: other.test:{web.port}"] * 4


# --- keep-alive and reconnects --------------------------------------------------------------------
async def test_plain_keep_alive_to_a_named_host_reuses_one_upstream_connection(
    tmp_path: Path, upstreams: list[Upstream], proxies: list[Proxy]
) -> None:
    web = await plain(upstreams)
    proxy = await Proxy(tmp_path).start()
    proxies.append(proxy)
    socket = await proxy.serve("w", [f"web.test:{web.port}", f"127.0.0.1:{web.port}"])
    client = await Client.open(socket)
    for n in range(20):
        status, body = await client.get(f"http://web.test:{web.port}/{n}", f"web.test:{web.port}")
        assert (status, body) == (200, b"reached"), n
    assert web.connections == 1
    # Each request still names the host the client wrote, not the address connected to.
    assert all(f"\r\nHost: web.test:{web.port}\r\n" in head for head in web.heads)


async def test_an_https_url_sent_to_the_proxy_keeps_its_name_for_tls_and_its_connection(
    tmp_path: Path, upstreams: list[Upstream], proxies: list[Proxy]
) -> None:
    ca = LocalCA(tmp_path / "ca", "web.test")
    web = await tls_upstream(upstreams, ca)
    proxy = await Proxy(tmp_path, upstream_ca=ca.ca_pem).start()
    proxies.append(proxy)
    socket = await proxy.serve("w", [f"web.test:{web.port}", f"127.0.0.1:{web.port}"])
    client = await Client.open(socket)
    for n in range(8):
        status, _ = await client.get(f"https://web.test:{web.port}/{n}", f"web.test:{web.port}")
        assert status == 200, n
    # TLS to the name (verified against it), once, however many requests.
    assert web.server_names == ["web.test"]
    assert web.connections == 1


async def test_a_tunnel_keeps_its_route_after_its_upstream_closes(
    tmp_path: Path, upstreams: list[Upstream], proxies: list[Proxy]
) -> None:
    ca = LocalCA(tmp_path / "ca", "git.test")
    git = await tls_upstream(upstreams, ca)
    git.one_answer_each = True  # ends every connection after one answer
    credentials = Credentials(git=parse_git_credentials(json.dumps({"git.test": "tok-name"})))
    proxy = await Proxy(tmp_path, credentials, upstream_ca=ca.ca_pem).start()
    proxies.append(proxy)
    socket = await proxy.serve("w", [f"git.test:{git.port}", f"127.0.0.1:{git.port}"])

    client = await Client.open(socket)
    assert await client.connect(f"git.test:{git.port}") == 200
    assert await client.tls(trusting(proxy.ca, check_hostname=False), None)
    for n in range(3):
        status, body = await client.get(f"/{n}", f"git.test:{git.port}")
        assert (status, body) == (200, b"reached"), (n, body)
    assert git.connections == 3
    assert git.authorizations() == [basic("tok-name")] * 3
    assert git.server_names == ["git.test"] * 3, "each reconnect names the route's host"
    assert proxy.reports == []


# --- f: IPv6 forms of IPv4 addresses --------------------------------------------------------------
async def test_a_wide_ipv6_grant_reaches_no_ipv4_loopback_through_its_ipv6_forms(
    tmp_path: Path, upstreams: list[Upstream], proxies: list[Proxy]
) -> None:
    web = await plain(upstreams)
    proxy = await Proxy(tmp_path).start()
    proxies.append(proxy)
    socket = await proxy.serve("w", [f"[::/0]:{web.port}"])
    for literal in ("::ffff:127.0.0.1", "::ffff:7f00:1", "64:ff9b::7f00:1", "2002:7f00:1::1"):
        client = await Client.open(socket)
        assert await client.connect(f"[{literal}]:{web.port}") == 403, literal
        again = await Client.open(socket)
        assert (await again.get(f"http://[{literal}]:{web.port}/", f"[{literal}]:{web.port}"))[
            0
        ] == 403
    assert web.connections == 0
    assert f"egress denied: ::ffff:127.0.0.1:{web.port}" in proxy.denied("w")


# --- g: one worker cannot starve the others -------------------------------------------------------
async def test_one_worker_cannot_hold_every_connection(
    tmp_path: Path, upstreams: list[Upstream], proxies: list[Proxy]
) -> None:
    web = await plain(upstreams)
    proxy = await Proxy(tmp_path, limit=ConnectionLimit(8)).start()
    proxies.append(proxy)
    greedy = await proxy.serve("greedy", [f"127.0.0.1:{web.port}"])
    other = await proxy.serve("other", [f"127.0.0.1:{web.port}"])

    idle = [await Client.open(greedy) for _ in range(8)]
    assert proxy.proxy is not None

    async def all_held() -> bool:
        return proxy.proxy is not None and proxy.proxy.connections.open("greedy") == 8

    await eventually(all_held, "eight idle connections held")
    over = await Client.open(greedy)
    status, body = await over.response()
    assert status == 429 and b"8 connections" in body
    # Another worker is served at once.
    bystander = await Client.open(other)
    target = f"http://127.0.0.1:{web.port}/"
    assert (await asyncio.wait_for(bystander.get(target, f"127.0.0.1:{web.port}"), 10))[0] == 200
    # One closed, one more may open.
    idle.pop().close()

    async def served_again() -> bool:
        client = await Client.open(greedy)
        try:
            status, _ = await client.get(target, f"127.0.0.1:{web.port}")
        finally:
            client.close()
        assert status in (200, 429), status
        return status == 200

    await eventually(served_again, "a connection of the greedy worker served again")
    for client in idle:
        client.close()


async def test_a_connection_past_the_bound_sending_no_request_head_is_closed_quietly(
    tmp_path: Path, upstreams: list[Upstream], proxies: list[Proxy]
) -> None:
    web = await plain(upstreams)
    proxy = await Proxy(tmp_path, limit=ConnectionLimit(1)).start()
    proxies.append(proxy)
    socket = await proxy.serve("w", [f"127.0.0.1:{web.port}"])
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    try:
        held = await Client.open(socket)

        async def holding() -> bool:
            return proxy.proxy is not None and proxy.proxy.connections.open("w") == 1

        await eventually(holding, "one connection held")
        over = await Client.open(socket)
        await over.send(b"a" * (70 << 10))  # more than a head may be, and no end of it
        status, _ = await over.response()
        assert status in (0, 429), status
        assert await over.closed()
        held.close()
        # The handlers ended without an exception asyncio would have to report.
        await _finished(proxy._handlers)
    finally:
        loop.set_exception_handler(None)
    assert unhandled == [], unhandled


def rss_mib() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 >> 20


async def test_large_bodies_stream_through_even_while_a_name_is_slow_to_resolve(
    tmp_path: Path, upstreams: list[Upstream], proxies: list[Proxy]
) -> None:
    web = await plain(upstreams)
    proxy = await Proxy(tmp_path, slow_names=1.0).start()
    proxies.append(proxy)
    socket = await proxy.serve("w", [f"slow.test:{web.port}", f"127.0.0.1:{web.port}"])
    size, block = 64 << 20, b"x" * (1 << 20)
    baseline, peak = rss_mib(), [0]

    async def watch() -> None:
        while True:
            peak[0] = max(peak[0], rss_mib())
            await asyncio.sleep(0.02)

    async def upload(chunked: bool) -> int:
        client = await Client.open(socket)
        framing = "transfer-encoding: chunked" if chunked else f"content-length: {size}"
        await client.send(
            f"POST http://slow.test:{web.port}/up HTTP/1.1\r\nHost: slow.test:{web.port}\r\n"
            f"{framing}\r\n\r\n".encode()
        )
        for _ in range(size // len(block)):
            await client.send(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
        if chunked:
            await client.send(b"0\r\n\r\n")
        status, _ = await client.response()
        client.close()
        return status

    watcher = asyncio.create_task(watch())
    try:
        statuses = await asyncio.wait_for(
            asyncio.gather(*(upload(n % 2 == 0) for n in range(4))), 120
        )
    finally:
        watcher.cancel()
    assert statuses == [200] * 4
    assert sorted(web.received) == [size] * 4
    # 256 MiB went through; the proxy held a few MiB of it at a time.
    assert peak[0] - baseline < 96, (baseline, peak[0])


async def test_every_refusal_is_reported_and_the_log_takes_a_bounded_number(
    tmp_path: Path, proxies: list[Proxy]
) -> None:
    proxy = await Proxy(tmp_path).start()
    proxies.append(proxy)
    socket = await proxy.serve("w", ["granted.test:443"])
    client = await Client.open(socket)
    with capture_logs() as logs:
        for n in range(300):
            status, _ = await client.get(f"http://denied{n}.test/", f"denied{n}.test")
            assert status == 403
    assert len(proxy.denied("w")) == 300, "each refusal is on the worker's output"
    logged = [entry for entry in logs if entry["event"] == "egress denied"]
    assert 0 < len(logged) <= 25, len(logged)


@pytest.mark.redis
async def test_the_service_raises_its_open_files_limit_to_the_hard_one(
    settings: Settings, private_egress_dir: Path
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Started from a process whose soft limit is low (as on many hosts), it inherits that one.
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
    client = EgressClient(settings.model_copy(update={"egress_run_dir": private_egress_dir}))
    try:
        await client.ensure_running()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        await client.close()
    pid = int((private_egress_dir / "service.pid").read_text())
    limits = Path(f"/proc/{pid}/limits").read_text().splitlines()
    files = next(line for line in limits if line.startswith("Max open files")).split()
    unlimited = hard == resource.RLIM_INFINITY
    wanted = [str(1 << 20), "unlimited"] if unlimited else [str(hard), str(hard)]
    assert files[3:5] == wanted, files
