"""Fixtures every test shares: a private redis-server, per-test Settings, Redis and Docker.

Infrastructure that is missing makes a test skip on a developer machine and fail under
``CI=true`` (:mod:`tests.support.availability`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import pytest
from redis.asyncio import Redis

from tests.support.availability import require_docker, require_redis_server
from tests.support.docker_cleanup import (
    SESSION_MANAGER_PREFIX,
    remove_new_worker_images,
    remove_test_containers,
    remove_test_volumes,
    worker_image_ids,
)
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.keyspace import delete_prefix, session_image_hashes
from tests.support.redis_server import RedisServer, bindable_gateway
from worker_manager.egress.control import stop_service
from worker_manager.images import agent_binaries
from worker_manager.images.agent_binaries import AgentBinary
from worker_manager.settings import BOOTSTRAP_BASE_TAG, Settings


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session; tests keep apart by key prefix."""
    binary = require_redis_server()
    server = RedisServer(tmp_path_factory.mktemp("redis"), binary=binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def base_image_name() -> str:
    return os.environ.get("WM_BASE_IMAGE") or BOOTSTRAP_BASE_TAG


@pytest.fixture(scope="session")
def egress_run_dir(redis_server: RedisServer) -> Iterator[Path]:
    """One egress service for the session's managers (the first manager starts it; grants
    carry each test's key prefix). Short path: Unix socket paths are limited to 107 bytes."""
    run_dir = Path(tempfile.mkdtemp(prefix="wm-eg-", dir="/tmp"))
    try:
        yield run_dir
    finally:
        stop_service(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def private_egress_dir() -> Iterator[Path]:
    """An egress service of the test's own, for managers whose gateway settings (upstream,
    keys) differ from the session's: the service reads them when it starts."""
    run_dir = Path(tempfile.mkdtemp(prefix="wm-pe-", dir="/tmp"))
    try:
        yield run_dir
    finally:
        stop_service(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def settings(redis_server: RedisServer, egress_run_dir: Path) -> Settings:
    """Settings of one test: its own key prefix and manager ID, fast timers, no ``.env``."""
    # _env_file=None: a developer's .env (written by `make run`) must not point tests at it.
    return Settings(  # type: ignore[call-arg]  # pydantic-settings' init-only argument
        _env_file=None,
        key_prefix=f"t{secrets.token_hex(4)}",
        manager_id=f"{SESSION_MANAGER_PREFIX}{secrets.token_hex(4)}",
        redis_url=redis_server.url,
        worker_redis_url=redis_server.worker_url,
        base_image=base_image_name(),
        heartbeat_interval_seconds=0.5,
        heartbeat_ttl_seconds=3,
        watch_interval_seconds=0.2,
        claim_idle_ms=1000,
        block_ms=200,
        egress_run_dir=egress_run_dir,
    )


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    """A client of the session Redis; the test's keys are deleted afterwards."""
    client = Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        yield client
    finally:
        try:
            await delete_prefix(client, settings.key_prefix)
        finally:
            await client.aclose()


@pytest.fixture(scope="session")
def docker_client(redis_server: RedisServer) -> Iterator[docker.DockerClient]:
    """The real Docker Engine; what test managers left behind is removed at session end.

    Only images this session's managers recorded (in this session's own redis-server) are
    candidates, so a session never removes an image another session just built.
    """
    client = require_docker()
    images_before = worker_image_ids(client)
    try:
        yield client
    finally:
        try:
            remove_test_containers(client)
            remove_test_volumes(client)
            remove_new_worker_images(client, images_before, session_image_hashes(redis_server))
        finally:
            client.close()


@pytest.fixture(scope="session")
def fake_anthropic() -> Iterator[FakeAnthropic]:
    """The scripted Messages API, where both the host and worker containers reach it."""
    server = FakeAnthropic(host=bindable_gateway() or "127.0.0.1").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def claude_binary(docker_client: docker.DockerClient) -> AgentBinary:
    """The real Claude Code binary, from the pinned wheel (downloaded once per machine)."""
    architecture = str(docker_client.info().get("Architecture") or "x86_64")
    return agent_binaries.claude_binary(Settings(_env_file=None), architecture)  # type: ignore[call-arg]
