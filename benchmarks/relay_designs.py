"""Figure 7c: what a relay without mitmproxy would cost, for the design note of figure 7.

Figure 7 misses its goal by what mitmproxy's relay costs per chunk. This figure measures the
designs that could carry the bytes once the proxy has decided (the CONNECT's target, the
ClientHello's name): the same 8 MiB GET as figure 7, through a relay process of its own on a
Unix socket (as the egress service is), against the same GET direct. Three relays:

* ``streams`` — :func:`worker_base.relays.splice`, asyncio streams in 64 KiB chunks (what the
  wrapper's loopback relay does inside a worker);
* ``sockets`` — non-blocking sockets, ``sock_recv_into`` a 256 KiB buffer and ``sock_sendall``:
  no stream objects, a quarter of the system calls;
* ``splice`` — Linux ``splice(2)`` through a pipe (``os.splice``), one thread a direction: the
  bytes never enter the process.

Nothing here decides anything: it is the cost of the relay alone. ``--only relays``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.egress_bench import BODY, Blob, _get
from benchmarks.harness import Figure, alternate
from worker_base.relays import splice

KINDS = ("streams", "sockets", "splice")
BUFFER = 256 * 1024


async def _streams(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
    await splice((reader, writer), await asyncio.open_connection("127.0.0.1", port))


def _take_socket(writer: asyncio.StreamWriter, *, blocking: bool) -> socket.socket:
    """The accepted connection as a plain socket of our own (the stream stops reading it)."""
    transport = writer.transport
    transport.pause_reading()  # type: ignore[attr-defined]
    sock = socket.socket(fileno=os.dup(writer.get_extra_info("socket").fileno()))
    sock.setblocking(blocking)
    return sock


async def _sockets(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
    loop = asyncio.get_running_loop()
    client = _take_socket(writer, blocking=False)
    upstream = socket.create_connection(("127.0.0.1", port))
    upstream.setblocking(False)

    async def pump(source: socket.socket, sink: socket.socket) -> None:
        buffer = bytearray(BUFFER)
        view = memoryview(buffer)
        with_eof = True
        try:
            while n := await loop.sock_recv_into(source, buffer):
                await loop.sock_sendall(sink, view[:n])
        except OSError:
            with_eof = False
        if with_eof:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    try:
        await asyncio.gather(pump(client, upstream), pump(upstream, client))
    finally:
        client.close()
        upstream.close()
        writer.transport.abort()


def _splice_one_way(source: socket.socket, sink: socket.socket) -> None:
    read_end, write_end = os.pipe()
    try:
        while moved := os.splice(source.fileno(), write_end, 1 << 20):
            while moved:
                moved -= os.splice(read_end, sink.fileno(), moved)
    except OSError:
        pass
    finally:
        os.close(read_end)
        os.close(write_end)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


async def _splice(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
    client = _take_socket(writer, blocking=True)
    upstream = socket.create_connection(("127.0.0.1", port))
    try:
        await asyncio.gather(
            asyncio.to_thread(_splice_one_way, client, upstream),
            asyncio.to_thread(_splice_one_way, upstream, client),
        )
    finally:
        client.close()
        upstream.close()
        writer.transport.abort()


async def _serve(kind: str, path: str, port: int) -> None:
    relay = {"streams": _streams, "sockets": _sockets, "splice": _splice}[kind]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await relay(reader, writer, port)

    server = await asyncio.start_unix_server(handle, path=path)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


async def relay_figures(scratch: Path, runs: int) -> list[Figure]:
    blob = await Blob(BODY).start()
    origin = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{blob.port}\r\n\r\n".encode()
    relays: list[subprocess.Popen[bytes]] = []
    figures: list[Figure] = []

    async def direct(_i: int) -> float:
        start = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", blob.port)
        return (time.perf_counter() - start) + await _get(reader, writer, origin)

    try:
        for kind in KINDS:
            path = str(scratch / f"relay-{kind}.sock")
            relay = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.relay_designs", kind, path, str(blob.port)],
                stdout=subprocess.PIPE,
            )
            relays.append(relay)
            assert relay.stdout is not None
            await asyncio.to_thread(relay.stdout.readline)

            async def relayed(_i: int, path: str = path) -> float:
                start = time.perf_counter()
                reader, writer = await asyncio.open_unix_connection(path)
                return (time.perf_counter() - start) + await _get(reader, writer, origin)

            base, ours = await alternate(runs, direct, relayed, warmup=2)
            figures.append(
                Figure(
                    name=f"egress_relay_{kind}",
                    title=f"7c. GET 8 MiB through a bare relay: {kind}",
                    unit="s",
                    ours_label=f"a {kind} relay process on a Unix socket, last byte",
                    baseline_label="the same GET direct to the server",
                    ours=ours,
                    baseline=base,
                    note="the relay alone, no decision: what figure 7's bytes could cost",
                )
            )
    finally:
        for relay in relays:
            relay.terminate()
            relay.wait()
        await blob.close()
    return figures


def main() -> None:
    kind, path, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    asyncio.run(_serve(kind, path, port))


if __name__ == "__main__":
    main()
