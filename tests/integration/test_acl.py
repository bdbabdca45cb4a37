"""Per-worker Redis users, seen from a worker's own credentials (SPEC §4).

The credentials are taken where the worker finds them: ``WM_REDIS_URL`` in its container's
environment. Its host is the Docker bridge gateway, where the test Redis also listens, so the
test connects with exactly what the container has.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest
import structlog
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, ConnectionError, NoPermissionError

from tests.support.flows import Harness
from tests.support.redis_dump import every_value

pytestmark = [pytest.mark.docker, pytest.mark.redis]

CAT = ["cat"]


async def running_worker(harness: Harness) -> str:
    reply = await harness.client.create(agent_type="CUSTOM", agent_command=CAT)
    assert reply.ok, reply
    worker_id = reply.worker_id
    assert worker_id is not None
    assert await harness.wait_status(worker_id, "RUNNING", "FAILED") == "RUNNING"
    return worker_id


def container_env(harness: Harness, worker_id: str) -> dict[str, str]:
    container = harness.container(worker_id)
    assert container is not None
    pairs = (item.partition("=") for item in container.attrs["Config"]["Env"])
    return {name: value for name, _, value in pairs}


async def test_a_worker_reaches_only_its_own_keys(harness: Harness) -> None:
    with structlog.testing.capture_logs() as logs:
        await harness.start()
        a = await running_worker(harness)
        b = await running_worker(harness)
    keys = harness.keys
    contained_url = container_env(harness, a)["WM_REDIS_URL"]
    # Contained: the wrapper reaches Redis through its relay socket, with its own user.
    assert contained_url.startswith(f"unix://{keys.acl_user(a)}:")
    assert contained_url.endswith("@/run/wm/redis.sock?db=0")
    # The same credentials, straight at Redis (as anyone who learnt them could try).
    parts = urlsplit(harness.settings.redis_url)
    url_a = (
        f"redis://{keys.acl_user(a)}:{urlsplit(contained_url).password}"
        f"@{parts.hostname}:{parts.port}/0"
    )
    # The password is derived, never stored: not in Redis, not in the manager's or the
    # wrapper's logs (which show the URL redacted).
    password = urlsplit(url_a).password
    assert password and len(password) == 64
    assert logs and password not in json.dumps(logs, default=str)
    assert not [text for text in await every_value(harness.redis) if password in text]
    wrapper_logs = harness.container(a).logs().decode("utf-8", "replace")
    assert wrapper_logs and password not in wrapper_logs
    as_a = Redis.from_url(url_a, decode_responses=True)
    try:
        assert await as_a.ping()
        # Its own streams work: append to its output, read its input in the wrapper's group.
        assert await as_a.xadd(keys.output(a), {"type": "stdout", "content": "from A"})
        await as_a.xreadgroup("wrapper", "probe", {keys.input(a): ">"}, count=1)

        # B's data plane: neither its input, nor its output, nor its heartbeat.
        with pytest.raises(NoPermissionError):
            await as_a.xreadgroup("wrapper", "wrapper", {keys.input(b): "0"}, count=1)
        with pytest.raises(NoPermissionError):
            await as_a.xrange(keys.input(b))
        with pytest.raises(NoPermissionError):
            await as_a.xadd(keys.output(b), {"type": "stdout", "content": "forged"})
        with pytest.raises(NoPermissionError):
            await as_a.set(keys.heartbeat(b), "forged")
        with pytest.raises(NoPermissionError):
            await as_a.get(keys.heartbeat(b))
        # Nor the control plane: no commands pushed, no worker records read.
        with pytest.raises(NoPermissionError):
            await as_a.xadd(keys.commands, {"command": "delete", "worker_id": b})
        with pytest.raises(NoPermissionError):
            await as_a.hgetall(keys.worker(b))
        with pytest.raises(NoPermissionError):
            await as_a.keys("*")
        with pytest.raises(NoPermissionError):
            await as_a.execute_command("ACL", "LIST")
    finally:
        await as_a.aclose()
    assert await harness.redis.xlen(keys.commands) > 0  # only the creates, nothing forged
    assert not [f for _i, f in await harness.redis.xrange(keys.commands) if f.get("worker_id") == b]

    deleted = await harness.client.request("delete", worker_id=a)
    assert deleted.ok, deleted
    gone = Redis.from_url(url_a, decode_responses=True)
    try:
        with pytest.raises((AuthenticationError, ConnectionError)) as failure:
            await gone.ping()
        assert "WRONGPASS" in str(failure.value) or "invalid username" in str(failure.value)
    finally:
        await gone.aclose()
    users = await harness.redis.execute_command("ACL", "USERS")
    assert keys.acl_user(a) not in users and keys.acl_user(b) in users
    await harness.client.request("delete", worker_id=b)
    assert keys.acl_user(b) not in await harness.redis.execute_command("ACL", "USERS")


async def test_acl_off_shares_the_worker_url_and_says_so(harness: Harness) -> None:
    with structlog.testing.capture_logs() as logs:
        await harness.start(worker_acl=False)
    warnings = [
        e for e in logs if e["log_level"] == "warning" and "WORKER ACLs ARE OFF" in e["event"]
    ]
    assert warnings, logs
    worker_id = await running_worker(harness)
    env = container_env(harness, worker_id)
    shared = urlsplit(harness.settings.resolved_worker_redis_url()).password
    assert env["WM_REDIS_URL"] == f"unix://:{shared}@/run/wm/redis.sock?db=0"
    users = await harness.redis.execute_command("ACL", "USERS")
    assert harness.keys.acl_user(worker_id) not in users
    # And the worker works over the shared connection.
    input_id = await harness.client.send_input(worker_id, "shared\n")
    events = await harness.events_until_done(worker_id, input_id=input_id)
    assert [e["content"] for e in events if e["type"] == "stdout"] == ["shared"]
    deleted = await harness.client.request("delete", worker_id=worker_id)
    assert deleted.ok, deleted


def _request(*args: str) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        parts.append(f"${len(arg.encode())}\r\n".encode() + arg.encode() + b"\r\n")
    return b"".join(parts)


async def test_a_worker_cannot_name_its_connection_through_hello(harness: Harness) -> None:
    """Redis runs HELLO for any user whatever its ACL rules say, and HELLO takes a SETNAME: the
    relay a contained worker reaches Redis by refuses it; the wrapper itself speaks RESP2."""
    import asyncio

    await harness.start()
    worker_id = await running_worker(harness)
    keys = harness.keys
    user = keys.acl_user(worker_id)
    password = urlsplit(container_env(harness, worker_id)["WM_REDIS_URL"]).password
    assert password
    clients = await harness.redis.client_list()
    wrappers = [c for c in clients if c.get("user") == user]
    assert wrappers and all(c["resp"] == "2" and not c["name"] for c in wrappers), wrappers

    socket = harness.settings.egress_run_dir / "workers" / worker_id / "sock" / "redis.sock"
    forged = f"wm:{harness.settings.manager_id}:consumer"
    reader, writer = await asyncio.open_unix_connection(socket)
    try:
        # Pipelined: each reply in its place, the HELLO refused by Redis itself (NOPROTO).
        writer.write(
            _request("HELLO", "2", "AUTH", user, password, "SETNAME", forged)
            + _request("AUTH", user, password)
            + _request("HELLO", "3", "SETNAME", forged)
            + _request("CLIENT", "SETNAME", forged)
            + _request("PING")
        )
        replies = [await asyncio.wait_for(reader.readuntil(b"\r\n"), 10) for _ in range(5)]
        assert replies[0].startswith(b"-NOPROTO"), replies
        assert replies[1] == b"+OK\r\n", replies
        assert replies[2].startswith(b"-NOPROTO"), replies
        assert replies[3].startswith(b"-NOPERM"), replies
        assert replies[4] == b"+PONG\r\n", replies
        named = [c for c in await harness.redis.client_list() if c["user"] == user and c["name"]]
        assert not named, named
        # An inline command (which the wrapper never sends) ends the connection.
        writer.write(f"HELLO 2 AUTH {user} {password} SETNAME {forged}\r\n".encode())
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()
    named = [c for c in await harness.redis.client_list() if c["user"] == user and c["name"]]
    assert not named, named
