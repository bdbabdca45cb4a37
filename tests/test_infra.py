"""The shared fixtures do what every other test relies on them to do."""

from __future__ import annotations

import io
import secrets
from urllib.parse import urlsplit

import docker
import pytest
import redis as redis_sync
import redis.exceptions
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.availability import unavailable
from tests.support.docker_cleanup import (
    HASH_LABEL,
    MANAGER_LABEL,
    remove_new_worker_images,
    remove_test_containers,
    remove_test_volumes,
    worker_image_ids,
)
from tests.support.keyspace import delete_prefix
from tests.support.redis_server import RedisServer
from worker_manager.settings import Settings

# A worker's-eye check: authenticate and PING over a raw socket, with nothing but the stdlib.
CONTAINER_PROBE = """
import os, socket
s = socket.create_connection((os.environ["HOST"], int(os.environ["PORT"])), timeout=5)
s.sendall(b"AUTH " + os.environ["PASSWORD"].encode() + b"\\r\\nPING\\r\\n")
buf = b""
while buf.count(b"\\r\\n") < 2:
    chunk = s.recv(256)
    if not chunk:
        break
    buf += chunk
print(buf.decode().replace("\\r\\n", " ").strip())
"""


async def test_redis_answers_with_the_password(redis: Redis) -> None:
    assert await redis.ping() is True


def test_redis_refuses_without_or_with_a_wrong_password(redis_server: RedisServer) -> None:
    for password in (None, "wrong-" + secrets.token_hex(4)):
        client = redis_sync.Redis(
            host=redis_server.host,
            port=redis_server.port,
            password=password,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            with pytest.raises(redis.exceptions.AuthenticationError):
                client.set("stolen", "1")
        finally:
            client.close()


def test_settings_are_isolated_per_test(settings: Settings, redis_server: RedisServer) -> None:
    assert settings.key_prefix.startswith("t")
    assert len(settings.key_prefix) == 9
    assert settings.manager_id.startswith("test-")
    assert settings.redis_url == redis_server.url
    assert settings.worker_redis_url == redis_server.worker_url
    assert settings.block_ms == 200


def test_worker_url_is_what_the_manager_would_derive(
    settings: Settings, redis_server: RedisServer
) -> None:
    if redis_server.gateway is None:
        unavailable("the Docker bridge gateway is not an address of this host")
    derived = settings.model_copy(update={"worker_redis_url": None})
    assert derived.resolved_worker_redis_url() == redis_server.worker_url


async def test_delete_prefix_removes_only_that_prefix(redis: Redis, settings: Settings) -> None:
    prefix = settings.key_prefix
    outsider = f"x{secrets.token_hex(4)}:keep"
    keys = {f"{prefix}:k{i}": str(i) for i in range(1203)}
    await redis.mset(keys)
    await redis.xadd(f"{prefix}:stream", {"a": "b"})
    await redis.set(outsider, "1")
    try:
        assert await delete_prefix(redis, prefix) == len(keys) + 1
        assert [key async for key in redis.scan_iter(match=f"{prefix}*")] == []
        assert await redis.get(outsider) == "1"
    finally:
        await redis.delete(outsider)


def test_container_reaches_redis_over_the_bridge(
    docker_client: docker.DockerClient, redis_server: RedisServer, settings: Settings
) -> None:
    if redis_server.gateway is None:
        unavailable("the Docker bridge gateway is not an address of this host")
    try:
        docker_client.images.get(settings.base_image)
    except docker.errors.ImageNotFound:
        unavailable(f"base image {settings.base_image} is missing: run `make base-image`")
    url = urlsplit(redis_server.worker_url)
    container = docker_client.containers.create(
        settings.base_image,
        ["python3", "-c", CONTAINER_PROBE],
        environment={
            "HOST": str(url.hostname),
            "PORT": str(url.port),
            "PASSWORD": redis_server.password,
        },
        labels={MANAGER_LABEL: settings.manager_id},
        network=settings.container_network,
    )
    try:
        container.start()
        result = container.wait(timeout=60)
        output = container.logs().decode(errors="replace").strip()
        assert result["StatusCode"] == 0, output
        assert output == "+OK +PONG"
    finally:
        container.remove(force=True)


def test_restart_keeps_port_and_password(redis_server: RedisServer) -> None:
    port, url = redis_server.port, redis_server.url
    for kill in (False, True):
        client = redis_server.client()
        try:
            assert client.set("infra:restart", "before")
            redis_server.restart(kill=kill)
            assert redis_server.running
            assert (redis_server.port, redis_server.url) == (port, url)
            # Same client object: it reconnects to the same address with the same password.
            assert client.ping()
            assert client.get("infra:restart") is None  # no persistence: a restart is a wipe
        finally:
            client.close()


def test_restart_keeping_data_loses_only_acl_users(redis_server: RedisServer) -> None:
    client = redis_server.client()
    try:
        client.set("infra:kept", "before")
        client.acl_setuser("infra-kept-user", enabled=True, nopass=True)
        redis_server.restart(keep_data=True)
        assert client.get("infra:kept") == "before"
        assert client.acl_getuser("infra-kept-user") is None
        redis_server.restart()  # the saved data is not loaded again by a later restart
        assert client.get("infra:kept") is None
    finally:
        client.delete("infra:kept")
        client.close()


def test_stop_then_start(redis_server: RedisServer) -> None:
    redis_server.stop()
    assert not redis_server.running
    client = redis_server.client(retries=0)
    try:
        with pytest.raises(redis.exceptions.ConnectionError):
            client.ping()
        redis_server.start()
        assert client.ping()
    finally:
        client.close()


def test_unavailable_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        unavailable("no redis")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no redis"):
        unavailable("no redis")


def test_docker_sweep_removes_only_test_managers_containers(
    docker_client: docker.DockerClient, settings: Settings
) -> None:
    ours = docker_client.containers.create(
        settings.base_image, ["true"], labels={MANAGER_LABEL: settings.manager_id}
    )
    theirs = docker_client.containers.create(
        settings.base_image, ["true"], labels={MANAGER_LABEL: f"prod-{secrets.token_hex(4)}"}
    )
    try:
        assert ours.id in remove_test_containers(docker_client)
        with pytest.raises(docker.errors.NotFound):
            ours.reload()
        theirs.reload()
    finally:
        theirs.remove(force=True)


def test_docker_sweep_removes_only_test_managers_volumes(
    docker_client: docker.DockerClient, settings: Settings
) -> None:
    ours = docker_client.volumes.create(
        f"wm-test-{secrets.token_hex(4)}", labels={MANAGER_LABEL: settings.manager_id}
    )
    theirs = docker_client.volumes.create(
        f"wm-test-{secrets.token_hex(4)}", labels={MANAGER_LABEL: f"prod-{secrets.token_hex(4)}"}
    )
    try:
        assert ours.name in remove_test_volumes(docker_client)
        with pytest.raises(docker.errors.NotFound):
            ours.reload()
        theirs.reload()
    finally:
        theirs.remove(force=True)


def test_docker_sweep_removes_new_unused_worker_images(
    docker_client: docker.DockerClient, settings: Settings
) -> None:
    tag = f"wm-test-sweep:{secrets.token_hex(4)}"
    image_hash = secrets.token_hex(8)
    dockerfile = f"FROM {settings.base_image}\nLABEL {HASH_LABEL}={image_hash}\n"
    image, _ = docker_client.images.build(
        fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, forcerm=True
    )
    before = worker_image_ids(docker_client) - {image.id}
    user = docker_client.containers.create(tag, ["true"])
    try:
        assert image.id not in remove_new_worker_images(docker_client, before, {image_hash})
        docker_client.images.get(tag)  # still there: a container uses it
    finally:
        user.remove(force=True)
    # An image this session did not record is never swept, even when unused and new.
    assert image.id not in remove_new_worker_images(docker_client, before, set())
    assert image.id in remove_new_worker_images(docker_client, before, {image_hash})
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(tag)
