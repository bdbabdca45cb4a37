"""Loading the operator's images into a worker's engine (no registry reachable, as here).

``docker save`` of each listed host image is streamed from the host's Engine into
``docker load`` run in the engine sidecar (``docker exec`` with its stdin, as uid 1000, on the
engine's socket): nothing is written to the host's disk, and what is loaded lands in the
worker's data volume (its disk bound). A bound in bytes applies to the images' size as the
host's Engine reports it before anything is sent, and to the bytes actually streamed.

Measured here (2 cores, fuse-overlayfs): the 200 MB bootstrapped base loads in ~6-7 s.

The functions here block (Docker SDK): call them in a thread.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import docker.errors
from docker import DockerClient

from worker_manager.docker_engine.recipe import DOCKER_HOST, ENGINE_UID, ready_command

#: The proposed default of ``WM_DOCKER_PRELOAD_MAX_BYTES``: the base and a toolchain or two.
DEFAULT_MAX_BYTES = 2 * 1024**3
#: Bytes read from the host's ``docker save`` at a time.
CHUNK_BYTES = 1024 * 1024
_OUTPUT_CHARS = 2000


class PreloadError(Exception):
    """An image could not be loaded into the engine; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Preloaded:
    images: tuple[str, ...]
    bytes: int
    seconds: float


def wait_until_ready(
    client: DockerClient, engine: str, timeout: float = 60.0, interval: float = 0.2
) -> float:
    """Seconds until the engine in the sidecar ``engine`` answers on its socket; PreloadError
    when the sidecar stops or ``timeout`` passes first."""
    started = time.monotonic()
    while True:
        container = client.containers.get(engine)
        if container.status not in ("created", "running"):
            logs = container.logs(tail=20).decode(errors="replace")
            raise PreloadError(f"the engine sidecar is {container.status}: {logs[-800:]}")
        if container.status == "running":
            code, _ = container.exec_run(ready_command(), user=str(ENGINE_UID))
            if code == 0:
                return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise PreloadError(f"the engine did not answer within {timeout:.0f}s")
        time.sleep(interval)


def planned_bytes(client: DockerClient, images: Sequence[str]) -> int:
    """The images' size as the host's Engine reports it; PreloadError for a missing one."""
    total = 0
    for name in images:
        try:
            attrs: dict[str, Any] = client.images.get(name).attrs
        except docker.errors.ImageNotFound:
            raise PreloadError(f"image {name!r} (WM_DOCKER_IMAGES) is not on this host") from None
        total += int(attrs.get("Size") or 0)
    return total


def preload_images(
    client: DockerClient, engine: str, images: Sequence[str], max_bytes: int = DEFAULT_MAX_BYTES
) -> Preloaded:
    """Load ``images`` (host image names) into the engine of the sidecar ``engine`` (its name or
    ID, running and ready); PreloadError naming the image and the engine's own words."""
    started = time.monotonic()
    planned = planned_bytes(client, images)
    if planned > max_bytes:
        raise PreloadError(
            f"the images to preload ({', '.join(images)}) are {planned} bytes; "
            f"WM_DOCKER_PRELOAD_MAX_BYTES allows {max_bytes}"
        )
    sent = 0
    for name in images:
        sent += _load_one(client, engine, name, max_bytes - sent)
    return Preloaded(tuple(images), sent, time.monotonic() - started)


def _load_one(client: DockerClient, engine: str, name: str, budget: int) -> int:
    api = client.api
    exec_id = api.exec_create(
        engine,
        ["docker", f"--host={DOCKER_HOST}", "load", "--quiet"],
        stdin=True,
        user=str(ENGINE_UID),
    )["Id"]
    connection = api.exec_start(exec_id, socket=True)
    raw = cast(socket.socket, getattr(connection, "_sock", connection))
    sent = 0
    stream = api.get_image(name, chunk_size=CHUNK_BYTES)
    try:
        for chunk in stream:
            sent += len(chunk)
            if sent > budget:
                raise PreloadError(
                    f"image {name!r}: more bytes than WM_DOCKER_PRELOAD_MAX_BYTES allows "
                    "were streamed; load stopped"
                )
            raw.sendall(chunk)
        raw.shutdown(socket.SHUT_WR)
        output = _read_frames(raw)
    finally:
        stream.close()
        connection.close()
    code = _exit_code(client, exec_id)
    if code != 0:
        text = output.decode(errors="replace").strip()[-_OUTPUT_CHARS:]
        raise PreloadError(f"image {name!r}: docker load exited with {code}: {text}")
    return sent


def _read_frames(raw: socket.socket) -> bytes:
    """Stdout and stderr of a non-TTY exec (Docker's multiplexed frames), until EOF."""
    data = bytearray()
    while chunk := raw.recv(65536):
        data += chunk
    out = bytearray()
    at = 0
    while at + 8 <= len(data):
        (size,) = struct.unpack(">I", data[at + 4 : at + 8])
        out += data[at + 8 : at + 8 + size]
        at += 8 + size
    return bytes(out)


def _exit_code(client: DockerClient, exec_id: str) -> int | None:
    for _ in range(50):
        info: dict[str, Any] = client.api.exec_inspect(exec_id)
        if not info.get("Running"):
            code = info.get("ExitCode")
            return int(code) if code is not None else None
        time.sleep(0.1)
    return None
