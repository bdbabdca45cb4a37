"""Figure 7: a download through the egress proxy against the same download direct.

The run's manager has started the host's egress service (``WM_EGRESS=on``, the default). A
grant for a benchmark "worker" (no container: the client here speaks to its ``proxy.sock``
exactly as a contained worker's loopback relay does) allows one HTTP server on the host. Each
sample is one fresh connection and one GET of an 8 MiB body, timed to the last byte: direct to
the server (the baseline), through the proxy as a plain ``GET http://…`` (7), and through a
``CONNECT`` tunnel as an HTTPS client would use it (7b: plain HTTP inside, which the proxy reads
to check each request's ``Host``; 7d: TLS inside, which the proxy relays untouched after its
ClientHello, against the same HTTPS GET direct).
"""

from __future__ import annotations

import asyncio
import ssl
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.env import BenchEnv
from benchmarks.harness import Figure, alternate
from tests.support.git_server import LocalCA
from worker_manager.egress.control import EgressClient
from worker_manager.egress.grants import PROXY_SOCKET, Grant
from worker_manager.settings import Settings

BODY = 8 * 1024 * 1024


class Blob:
    """An HTTP server on the host answering every request with the same body."""

    def __init__(self, size: int, tls: ssl.SSLContext | None = None) -> None:
        self._body = b"x" * size
        self._tls = tls
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> Blob:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self._tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                % len(self._body)
            )
            writer.write(self._body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> float:
    """Send one request; seconds until the whole body is read."""
    start = time.perf_counter()
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":", 1)[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
    )
    await reader.readexactly(length)
    elapsed = time.perf_counter() - start
    writer.close()
    return elapsed


async def egress_figures(env: BenchEnv, runs: int) -> list[Figure]:
    blob = await Blob(BODY).start()
    scratch = tempfile.TemporaryDirectory(prefix="wm-egress-bench-")
    ca = LocalCA(Path(scratch.name), "127.0.0.1")
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(ca.cert_pem, ca.key_pem)
    secure = await Blob(BODY, served).start()
    trusting = ssl.create_default_context(cafile=str(ca.ca_pem))
    settings = Settings(_env_file=None, egress_run_dir=env.egress_run_dir)  # type: ignore[call-arg]
    client = EgressClient(settings)
    worker_id = f"bench-{uuid.uuid4().hex[:12]}"
    target = f"127.0.0.1:{blob.port}"
    secure_target = f"127.0.0.1:{secure.port}"
    try:
        sockets = await client.grant(
            Grant(worker_id=worker_id, key_prefix=env.prefix, egress=(target, secure_target))
        )
        proxy = str(Path(sockets) / PROXY_SOCKET)
        plain = f"GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
        origin = f"GET / HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()

        async def direct(_i: int) -> float:
            start = time.perf_counter()
            reader, writer = await asyncio.open_connection("127.0.0.1", blob.port)
            return (time.perf_counter() - start) + await _get(reader, writer, origin)

        async def proxied(_i: int) -> float:
            start = time.perf_counter()
            reader, writer = await asyncio.open_unix_connection(proxy)
            return (time.perf_counter() - start) + await _get(reader, writer, plain)

        async def tunnelled(_i: int) -> float:
            start = time.perf_counter()
            reader, writer = await asyncio.open_unix_connection(proxy)
            writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            await writer.drain()
            status = await reader.readuntil(b"\r\n\r\n")
            assert b" 200 " in status.split(b"\r\n")[0] + b" ", status
            return (time.perf_counter() - start) + await _get(reader, writer, origin)

        secure_origin = f"GET / HTTP/1.1\r\nHost: {secure_target}\r\n\r\n".encode()

        async def direct_tls(_i: int) -> float:
            start = time.perf_counter()
            reader, writer = await asyncio.open_connection("127.0.0.1", secure.port, ssl=trusting)
            return (time.perf_counter() - start) + await _get(reader, writer, secure_origin)

        async def tunnelled_tls(_i: int) -> float:
            start = time.perf_counter()
            reader, writer = await asyncio.open_unix_connection(proxy)
            writer.write(
                f"CONNECT {secure_target} HTTP/1.1\r\nHost: {secure_target}\r\n\r\n".encode()
            )
            await writer.drain()
            status = await reader.readuntil(b"\r\n\r\n")
            assert b" 200 " in status.split(b"\r\n")[0] + b" ", status
            await writer.start_tls(trusting, server_hostname="127.0.0.1")
            return (time.perf_counter() - start) + await _get(reader, writer, secure_origin)

        base, ours = await alternate(runs, direct, proxied)
        base_t, ours_t = await alternate(runs, direct, tunnelled)
        base_s, ours_s = await alternate(runs, direct_tls, tunnelled_tls)
    finally:
        await client.revoke(worker_id)
        await client.close()
        await blob.close()
        await secure.close()
        scratch.cleanup()
    return [
        Figure(
            name="egress_get",
            title="7. GET 8 MiB through the egress proxy",
            unit="s",
            ours_label="new connection to proxy.sock, GET http://…, last byte",
            baseline_label="the same GET direct to the server",
            goal="ratio_max",
            bound=1.3,
            ours=ours,
            baseline=base,
        ),
        Figure(
            name="egress_connect",
            title="7b. GET 8 MiB through a CONNECT tunnel",
            unit="s",
            ours_label="CONNECT through proxy.sock, then the GET, last byte",
            baseline_label="the same GET direct to the server",
            goal="ratio_max",
            bound=1.3,
            ours=ours_t,
            baseline=base_t,
        ),
        Figure(
            name="egress_connect_tls",
            title="7d. HTTPS GET 8 MiB through a CONNECT tunnel",
            unit="s",
            ours_label="CONNECT through proxy.sock, TLS inside, the GET, last byte",
            baseline_label="the same HTTPS GET direct to the server",
            ours=ours_s,
            baseline=base_s,
            note="TLS relayed untouched after its ClientHello: the path of almost all HTTPS",
        ),
    ]
