"""A manager running in the test's event loop against the session's Redis and Docker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import docker
import pytest
from redis.asyncio import Redis

from tests.support.availability import require_redis_server
from tests.support.docker_cleanup import remove_test_containers, remove_test_volumes
from tests.support.flows import Harness
from tests.support.git_server import GitServer
from tests.support.sentinel import SentinelGroup
from worker_manager.core.bridge import docker_bridge_gateway
from worker_manager.service.manager import Manager
from worker_manager.settings import Settings

ManagerFactory = Callable[..., "asyncio.Future[Manager]"]


@pytest.fixture
async def harness(
    settings: Settings, redis: Redis, docker_client: docker.DockerClient
) -> AsyncIterator[Harness]:
    """Start managers on demand (``await harness.start()``); all are stopped at the end, and
    what they left on the Engine is removed then (their manager ids start with the test's):
    workers left running would otherwise beat and relay until the session ends, slowing every
    test after them."""
    h = Harness(settings, redis, docker_client)
    try:
        yield h
    finally:
        try:
            await h.close()
        finally:
            await asyncio.to_thread(remove_test_containers, docker_client, settings.manager_id)
            await asyncio.to_thread(remove_test_volumes, docker_client, settings.manager_id)


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    """A primary, a replica and three sentinels of the test's own (tests/support/sentinel.py)."""
    group = SentinelGroup(tmp_path / "sentinel", binary=require_redis_server())
    group.start()
    try:
        yield group
    finally:
        group.stop()


@pytest.fixture
async def http_git(tmp_path: Path) -> AsyncIterator[GitServer]:
    """Git repositories served over plain HTTP from the host (``tests.support.git_server``),
    on the Docker bridge's address, where workers' checkouts reach them."""
    root = tmp_path / "repos"
    root.mkdir()
    server = await GitServer(root, host=docker_bridge_gateway()).start()
    try:
        yield server
    finally:
        await server.close()
