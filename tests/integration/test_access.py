"""Access (SPEC §11) against a real Redis 7 with real ACL users: Redis itself enforces it.

A ``read`` grant reads one worker's record and output and nothing else; a ``drive`` grant also
writes that worker's input; both stop at their expiry and with their worker. A viewer reads the
records, lifecycle and outputs and writes nothing; a producer's user reads none of the command
streams but its own replies. Every command handled leaves an audit entry without a secret.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.support.cli import run_cli
from tests.support.flows import Harness
from worker_manager.cli.access import access_user, url_with

pytestmark = [pytest.mark.docker, pytest.mark.redis]

CAT = json.dumps(["sh", "-c", "echo got: $(cat)"])
REFUSED = (NoPermissionError, ResponseError)


async def as_user(url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def refused(call: Awaitable[Any]) -> None:
    """``call`` (not yet awaited) is refused by Redis."""
    with pytest.raises(REFUSED):
        await call


async def gone(url: str, timeout: float = 30) -> None:
    """Until the credential no longer logs in."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        client = Redis.from_url(url, decode_responses=True)
        try:
            await client.ping()
        except (AuthenticationError, ResponseError, RedisConnectionError):
            return
        finally:
            await client.aclose()
        assert loop.time() < deadline, "the credential still works"
        await asyncio.sleep(0.2)


async def started(harness: Harness) -> tuple[str, str]:
    await harness.start(producers=["search"])
    ids = []
    for _ in range(2):
        reply = await harness.client.request("create", agent_type="CUSTOM", agent_command=CAT)
        assert reply.ok and reply.worker_id
        ids.append(reply.worker_id)
    for worker_id in ids:
        assert await harness.wait_status(worker_id, "RUNNING", "FAILED") == "RUNNING"
    return ids[0], ids[1]


async def test_a_grant_reaches_one_worker_and_ends_with_its_time_or_its_worker(
    harness: Harness, tmp_path: Path
) -> None:
    mine, other = await started(harness)
    keys = harness.keys
    hello = await harness.client.send_input(mine, "hello")
    await harness.events_until_done(mine, input_id=hello)

    read = await harness.client.request("grant", worker_id=mine, access="read")
    assert read.ok and read.username and read.password and read.expires_at, read
    url = url_with(harness.settings, read.username, read.password)
    async for r in as_user(url):
        assert (await r.hgetall(keys.worker(mine)))["status"] == "RUNNING"
        output = await r.xrange(keys.output(mine))
        assert any(f.get("content") == "got: hello" for _i, f in output)
        await refused(r.xrange(keys.output(other)))
        await refused(r.hgetall(keys.worker(other)))
        await refused(r.xadd(keys.input(mine), {"type": "prompt", "content": "x"}))
        await refused(r.xrange(keys.commands))
        await refused(r.get(keys.spec(mine)))
        for admin in (("ACL", "LIST"), ("CONFIG", "GET", "*"), ("KEYS", "*"), ("FLUSHALL",)):
            await refused(r.execute_command(*admin))

    # The person's ready-made command: `worker-manager tail` with the grant's URL.
    code, text = await run_cli(
        harness.settings,
        tmp_path,
        "tail",
        mine,
        env={"WM_REDIS_URL": url, "WM_KEY_PREFIX": keys.prefix},
    )
    assert code == 0 and "got: hello" in text, text

    drive = await harness.client.request("grant", worker_id=mine, access="drive")
    assert drive.ok and drive.username and drive.password
    drive_url = url_with(harness.settings, drive.username, drive.password)
    async for r in as_user(drive_url):
        driven = await r.xadd(keys.input(mine), {"type": "prompt", "content": "driven"})
        await refused(r.xadd(keys.input(other), {"type": "prompt", "content": "x"}))
    events = await harness.events_until_done(mine, input_id=driven)
    assert any(e.get("content") == "got: driven" for e in events)

    # At its time: a short grant stops working by itself.
    short = await harness.client.request("grant", worker_id=mine, access="read", ttl_seconds="1")
    assert short.ok and short.username and short.password
    await gone(url_with(harness.settings, short.username, short.password))
    # Past the deployment's longest: refused, naming the setting.
    long = await harness.client.request(
        "grant", worker_id=mine, access="read", ttl_seconds="999999"
    )
    assert long.error == "invalid_command" and "WM_GRANT_MAX_SECONDS" in (long.message or "")

    # With its worker: a delete ends every grant of it.
    assert (await harness.client.request("delete", worker_id=mine)).ok
    await gone(url)
    await gone(drive_url)
    assert (await harness.client.request("grant", worker_id=mine, access="read")).error == (
        "conflict"
    )

    # The trail: every command above, and not one secret in it.
    trail = await harness.redis.xrange(keys.audit)
    seen = [(f["command"], f["outcome"]) for _i, f in trail]
    assert ("grant", "ok") in seen and ("delete", "ok") in seen and ("create", "ok") in seen
    assert ("grant", "invalid") in seen
    text_of_trail = json.dumps([f for _i, f in trail])
    for secret in (read.password, drive.password, short.password):
        assert secret not in text_of_trail
    assert "hello" not in text_of_trail and "driven" not in text_of_trail
    assert (await harness.client.request("delete", worker_id=other)).ok


async def test_viewers_read_and_producers_write_only_their_own(
    harness: Harness, tmp_path: Path
) -> None:
    mine, _other = await started(harness)
    keys = harness.keys
    code, text = await run_cli(
        harness.settings, tmp_path, "access", "add", "ann", "--role", "viewer", "--json"
    )
    assert code == 0, text
    viewer = json.loads(text.strip().splitlines()[-1])
    assert viewer["username"] == access_user(harness.settings, "ann")
    viewer_url = url_with(harness.settings, viewer["username"], viewer["password"])
    async for r in as_user(viewer_url):
        assert (await r.hgetall(keys.worker(mine)))["status"] == "RUNNING"
        assert await r.xrange(keys.lifecycle)
        await r.xrange(keys.output(mine))
        await refused(r.xadd(keys.input(mine), {"type": "prompt", "content": "x"}))
        await refused(r.xadd(keys.commands, {"command": "list"}))
        await refused(r.xrange(keys.commands))
        await refused(r.xrange(keys.input(mine)))  # prompts are not a viewer's
        await refused(r.get(keys.spec(mine)))  # a create's env neither
        await refused(r.hset(keys.worker(mine), "status", "STOPPED"))
        await refused(r.execute_command("KEYS", "*"))

    code, text = await run_cli(
        harness.settings, tmp_path, "access", "add", "search", "--role", "producer", "--json"
    )
    assert code == 0, text
    producer = json.loads(text.strip().splitlines()[-1])
    producer_url = url_with(harness.settings, producer["username"], producer["password"])
    async for r in as_user(producer_url):
        await r.xadd(keys.producer_commands("search"), {"command": "list"})
        await r.xadd(keys.input(mine), {"type": "prompt", "content": "from search"})
        await refused(r.xrange(keys.commands))  # nobody else's commands
        await refused(r.xrange(keys.producer_commands("other")))
        await refused(r.xrange(f"{keys.replies}:other"))
        await refused(r.xadd(keys.output(mine), {"type": "stdout", "content": "x"}))
        await refused(r.set(keys.heartbeat(mine), "x"))
        await refused(r.get(keys.spec(mine)))

    code, text = await run_cli(harness.settings, tmp_path, "access", "list", "--json")
    assert code == 0
    assert {row["name"]: row["role"] for row in json.loads(text.strip().splitlines()[-1])} == {
        "ann": "viewer",
        "search": "producer",
    }
    for name in ("ann", "search"):
        code, _ = await run_cli(harness.settings, tmp_path, "access", "remove", name)
        assert code == 0
    await gone(viewer_url)
    await gone(producer_url)
    code, text = await run_cli(harness.settings, tmp_path, "audit", "--json")
    assert code == 0 and '"command": "create"' in text


async def test_the_console_signs_in_access_users_with_their_roles_rights(
    harness: Harness, tmp_path: Path
) -> None:
    """A viewer signs in with its access user (Redis checks the password), sees the fleet and
    no buttons, and is refused every action; a producer acts as itself (its own stream), so it
    deletes what it created; the trail names who acted."""
    import aiohttp
    from pydantic import SecretStr

    from worker_manager.client.requests import CommandClient
    from worker_manager.console import session

    token = "console-token-for-access"
    manager = await harness.start(
        producers=["search"], http=True, http_addr="127.0.0.1:0", ui_token=SecretStr(token)
    )
    assert manager.http is not None
    base = manager.http.url
    users = {}
    for name, role in (("vic", "viewer"), ("search", "producer")):
        code, text = await run_cli(
            harness.settings, tmp_path, "access", "add", name, "--role", role, "--json"
        )
        assert code == 0, text
        users[name] = json.loads(text.strip().splitlines()[-1])["password"]
    async for as_search in as_user(
        url_with(harness.settings, access_user(harness.settings, "search"), users["search"])
    ):
        created = await CommandClient(as_search, harness.keys, producer="search").create(
            agent_type="CUSTOM", agent_command=["cat"], timeout=60
        )
    assert created.ok and created.worker_id
    worker_id = created.worker_id
    assert await harness.wait_status(worker_id, "RUNNING", "FAILED") == "RUNNING"

    async def signed_in(http: aiohttp.ClientSession, name: str, password: str) -> str:
        async with http.post(
            f"{base}/ui/login",
            data={"username": name, "password": password},
            allow_redirects=False,
        ) as response:
            assert response.status == 303, await response.text()
            return str(response.cookies[session.COOKIE].value)

    jar = aiohttp.DummyCookieJar()
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        async with http.post(
            f"{base}/ui/login", data={"username": "vic", "password": "wrong"}
        ) as response:
            assert response.status == 401
        cookie = await signed_in(http, "vic", users["vic"])
        cookies = {session.COOKIE: cookie}
        csrf = session.csrf_for(token, cookie)
        async with http.get(f"{base}/ui/workers/{worker_id}", cookies=cookies) as response:
            page = await response.text()
            assert response.status == 200 and worker_id in page and "/delete" not in page
        async with http.post(
            f"{base}/ui/workers/{worker_id}/delete",
            data={"csrf": csrf},
            cookies=cookies,
            allow_redirects=False,
        ) as response:
            assert response.status == 403
        async with http.get(f"{base}/ui/audit", cookies=cookies) as response:
            assert response.status == 403

        cookie = await signed_in(http, "search", users["search"])
        cookies = {session.COOKIE: cookie}
        async with http.post(
            f"{base}/ui/workers/{worker_id}/delete",
            data={"csrf": session.csrf_for(token, cookie)},
            cookies=cookies,
            allow_redirects=False,
        ) as response:
            assert response.status == 303, await response.text()
    assert await harness.wait_status(worker_id, "STOPPED", timeout=60) == "STOPPED"
    trail = [f for _i, f in await harness.redis.xrange(harness.keys.audit)]
    assert {"command": "delete", "sender": "console:search"}.items() <= next(
        f for f in trail if f.get("sender") == "console:search"
    ).items()
    assert any(f["command"] == "delete" and f["sender"] == "search" for f in trail)
    for name in users:
        await run_cli(harness.settings, tmp_path, "access", "remove", name)
