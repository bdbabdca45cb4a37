"""The operator's HTTP endpoints over real HTTP: probes, metrics, limits and the bearer token."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import docker
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from tests.support.redis_server import RedisServer, free_port
from worker_manager.client.requests import CommandClient
from worker_manager.core.keys import MANAGER_GROUP
from worker_manager.service.manager import Manager
from worker_manager.service.metrics import Metrics
from worker_manager.settings import Settings

pytestmark = [pytest.mark.redis, pytest.mark.docker]


@contextlib.asynccontextmanager
async def serving(
    settings: Settings,
    docker_client: docker.DockerClient,
    *,
    draining: bool = False,
    **overrides: object,
) -> AsyncIterator[Manager]:
    """A manager with its HTTP server on a free loopback port, running until the block ends.

    ``draining`` starts it drained (as after SIGUSR1): it never reads a command.
    """
    settings = settings.model_copy(update={"http_addr": "127.0.0.1:0", **overrides})
    manager = Manager(settings, docker=docker_client, http=True)
    if draining:
        manager.draining.set()
    task = asyncio.create_task(manager.run(grace=5))
    ready = asyncio.create_task(manager.ready.wait())
    try:
        done, _ = await asyncio.wait({task, ready}, timeout=30, return_when="FIRST_COMPLETED")
        if task in done:
            task.result()
        assert ready in done, "manager did not become ready"
        yield manager
    finally:
        ready.cancel()
        manager.stop.set()
        await asyncio.wait_for(task, 30)
        await manager.close()


def url(manager: Manager, path: str) -> str:
    assert manager.http is not None
    assert manager.http.port
    return f"{manager.http.url}{path}"


async def test_probes_and_metrics(
    settings: Settings, redis: Redis, docker_client: docker.DockerClient
) -> None:
    async with serving(settings, docker_client) as manager, aiohttp.ClientSession() as http:
        async with http.get(url(manager, "/livez")) as resp:
            assert resp.status == 200
            assert await resp.text() == "ok\n"
        async with http.head(url(manager, "/livez")) as resp:
            assert resp.status == 200
        async with http.get(url(manager, "/readyz")) as resp:
            body = await resp.json()
            assert resp.status == 200, body
            assert body["ready"] is True
            assert body["checks"] == {"intake": "ok", "redis": "ok", "docker": "ok", "loops": "ok"}

        client = CommandClient(redis, settings.keys)
        reply = await client.request("status", worker_id=str(uuid.uuid4()), timeout=10)
        assert reply.error == "not_found"
        await client.push({"command": "explode"})  # invalid: counted, label folded
        listed = await client.request("list", timeout=10)
        assert listed.ok

        # The command counter is bumped after the reply is written; wait for it, bounded.
        text = ""
        async with asyncio.timeout(10):
            while 'wm_commands_total{command="list",result="ok"} 1.0' not in text:
                async with http.get(url(manager, "/metrics")) as resp:
                    assert resp.status == 200
                    assert resp.headers["Content-Type"].startswith("text/plain; version=")
                    text = await resp.text()
        assert 'wm_commands_total{command="status",result="not_found"} 1.0' in text
        assert 'wm_commands_total{command="unknown",result="invalid"} 1.0' in text
        assert 'wm_command_seconds_count{command="status"} 1.0' in text
        assert 'wm_command_seconds_bucket{command="status",le="+Inf"} 1.0' in text
        for status in ("STARTING", "RUNNING", "STOPPED", "FAILED"):
            assert f'wm_workers{{status="{status}"}} 0.0' in text
        assert "wm_consumer_pending 0.0" in text
        assert "wm_consumer_lag 0.0" in text
        assert "wm_redis_up 1.0" in text
        assert "wm_draining 0.0" in text
        for result in ("hit", "miss", "failure"):
            assert f'wm_image_builds_total{{result="{result}"}} 0.0' in text
        assert "wm_image_build_seconds_count 0.0" in text
        assert "wm_gc_removed_images_total 0.0" in text
        assert "wm_gc_freed_bytes_total 0.0" in text
        assert "# TYPE wm_evictions_total counter" in text


async def test_worker_and_backlog_gauges_read_redis(settings: Settings, redis: Redis) -> None:
    """Records by status (expired ones not counted), and the group's pending and lag."""
    keys = settings.keys
    for i, status in enumerate(["RUNNING", "RUNNING", "STOPPED"]):
        worker_id = str(uuid.uuid4())
        await redis.hset(keys.worker(worker_id), mapping={"status": status})
        await redis.zadd(keys.index, {worker_id: i})
    await redis.zadd(keys.index, {str(uuid.uuid4()): 9})  # its record expired
    await redis.xgroup_create(keys.commands, MANAGER_GROUP, id="0", mkstream=True)
    for _ in range(3):
        await redis.xadd(keys.commands, {"command": "list"})
    await redis.xreadgroup(MANAGER_GROUP, "someone", {keys.commands: ">"}, count=1)

    metrics = Metrics()
    await metrics.refresh(redis, keys)
    text = metrics.render().decode()
    assert 'wm_workers{status="RUNNING"} 2.0' in text
    assert 'wm_workers{status="STOPPED"} 1.0' in text
    assert 'wm_workers{status="FAILED"} 0.0' in text
    assert "wm_consumer_pending 1.0" in text
    assert "wm_consumer_lag 2.0" in text


async def test_draining_manager_is_not_ready_and_leaves_commands(
    settings: Settings, redis: Redis, docker_client: docker.DockerClient
) -> None:
    async with (
        serving(settings, docker_client, draining=True) as manager,
        aiohttp.ClientSession() as http,
    ):
        for _ in range(2):
            await redis.xadd(settings.keys.commands, {"command": "list"})
        async with http.get(url(manager, "/readyz")) as resp:
            assert resp.status == 503
            assert (await resp.json())["checks"]["intake"].startswith("draining")
        async with http.get(url(manager, "/livez")) as resp:
            assert resp.status == 200
        async with http.get(url(manager, "/metrics")) as resp:
            text = await resp.text()
        assert "wm_draining 1.0" in text
        assert "wm_consumer_lag 2.0" in text
        assert "wm_consumer_pending 0.0" in text


async def test_bearer_token_protects_all_but_livez(
    settings: Settings, docker_client: docker.DockerClient
) -> None:
    token = "s3cret-token"
    async with (
        serving(settings, docker_client, http_token=SecretStr(token)) as manager,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(url(manager, "/livez")) as resp:
            assert resp.status == 200
        for path in ("/readyz", "/metrics"):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
                async with http.get(url(manager, path), headers=headers) as resp:
                    assert resp.status == 401, (path, headers)
                    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                    assert token not in await resp.text()
            good = {"Authorization": f"Bearer {token}"}
            async with http.get(url(manager, path), headers=good) as resp:
                assert resp.status == 200, path


async def test_request_limits(settings: Settings, docker_client: docker.DockerClient) -> None:
    async with serving(settings, docker_client) as manager, aiohttp.ClientSession() as http:
        limit = manager.settings.http_max_body_bytes
        async with http.get(url(manager, "/livez"), data=b"x" * (limit + 1)) as resp:
            assert resp.status == 413

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(limit // 1024 + 2):
                yield b"y" * 1024

        async with http.get(url(manager, "/livez"), data=chunks()) as resp:
            assert resp.status == 413  # no Content-Length: held to the limit while read
        async with http.get(url(manager, "/livez"), data=b"x" * 16) as resp:
            assert resp.status == 200  # a small body is tolerated (and ignored)
        async with http.get(url(manager, "/livez"), headers={"X-Big": "a" * 10_000}) as resp:
            assert resp.status in (400, 431)
        many = {f"X-H{i}": "v" for i in range(100)}
        async with http.get(url(manager, "/livez"), headers=many) as resp:
            assert resp.status in (400, 431)
        async with http.post(url(manager, "/livez")) as resp:
            assert resp.status == 405
        async with http.get(url(manager, "/nope")) as resp:
            assert resp.status == 404


async def test_readyz_is_honest_before_start_up_and_while_redis_is_down(
    settings: Settings, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    """HTTP answers before start-up; readiness follows Redis down and back up."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    own = settings.model_copy(update={"redis_url": server.url, "worker_redis_url": server.url})
    try:
        # Before start-up: alive, not ready, and saying why.
        early = Manager(
            own.model_copy(update={"http_addr": "127.0.0.1:0"}), http=True, docker=docker_client
        )
        assert early.http is not None
        await early.http.start()
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(url(early, "/livez")) as resp:
                    assert resp.status == 200
                async with http.get(url(early, "/readyz")) as resp:
                    assert resp.status == 503
                    assert (await resp.json())["checks"]["intake"] == "starting"
        finally:
            await early.http.stop()
            await early.close()

        async with serving(own, docker_client) as manager, aiohttp.ClientSession() as http:
            async with http.get(url(manager, "/readyz")) as resp:
                assert resp.status == 200
            server.stop()
            async with http.get(url(manager, "/readyz")) as resp:
                body = await resp.json()
                assert resp.status == 503
                assert body["checks"]["redis"] != "ok"
                assert body["checks"]["docker"] == "ok"
            async with http.get(url(manager, "/livez")) as resp:
                assert resp.status == 200  # liveness never depends on Redis
            async with http.get(url(manager, "/metrics")) as resp:
                assert resp.status == 200
                assert "wm_redis_up 0.0" in await resp.text()
            server.start()
            async with http.get(url(manager, "/readyz")) as resp:
                assert resp.status == 200, await resp.text()
    finally:
        server.stop()


async def test_readyz_when_redis_was_never_there(
    settings: Settings, docker_client: docker.DockerClient
) -> None:
    closed = f"redis://127.0.0.1:{free_port('127.0.0.1')}/0"
    manager = Manager(
        settings.model_copy(update={"redis_url": closed, "http_addr": "127.0.0.1:0"}),
        http=True,
        docker=docker_client,
    )
    assert manager.http is not None
    await manager.http.start()
    try:
        async with aiohttp.ClientSession() as http, http.get(url(manager, "/readyz")) as resp:
            body = await resp.json()
            assert resp.status == 503
            assert body["checks"]["redis"].startswith("unreachable")
            assert body["checks"]["docker"] == "ok"
    finally:
        await manager.http.stop()
        await manager.close()
