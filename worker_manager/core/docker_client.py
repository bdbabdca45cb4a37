"""One Docker SDK client per process, and the way async code calls it.

The SDK is synchronous (requests over the Unix socket); every call runs in a worker thread so the
event loop (and with it every ``status`` command) never waits on Docker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import docker
from docker import DockerClient

P = ParamSpec("P")
T = TypeVar("T")


def connect(timeout: int = 120) -> DockerClient:
    return docker.from_env(timeout=timeout)


async def call(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    return await asyncio.to_thread(fn, *args, **kwargs)
