"""Tenants (SPEC §11) through the real interfaces: one manager serving the default namespace and
two tenants, against a real Redis 7 (with real ACL users) and the Docker Engine.

A tenant's commands, replies, records and data plane live under ``<prefix>:t:<tenant>``; a
command naming another tenant's worker gets ``not_found``; quotas refuse with
``quota_exceeded``; a tenant added with ``worker-manager tenants add`` is served within
seconds; an access user of one tenant reaches nothing of another's, nor a fleet key.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import uuid
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, ResponseError

from tests.support.cli import run_cli
from tests.support.flows import Harness
from worker_manager.cli.access import url_with
from worker_manager.commands.handlers import WORKER_ID_NAMESPACE
from worker_manager.console import session
from worker_manager.console.app import VIEW_COOKIE
from worker_manager.contract.tenants import parse_tenants
from worker_manager.core.clock import utc_day

pytestmark = [pytest.mark.docker, pytest.mark.redis]

CAT = json.dumps(["sh", "-c", "echo got: $(cat)"])
REFUSED = (NoPermissionError, ResponseError)


async def running(tenant: Harness) -> str:
    reply = await tenant.client.request("create", agent_type="CUSTOM", agent_command=CAT)
    assert reply.ok and reply.worker_id, reply
    assert await tenant.wait_status(reply.worker_id, "RUNNING", "FAILED") == "RUNNING"
    return reply.worker_id


async def refused(call: object) -> None:
    with pytest.raises(REFUSED):
        await call  # type: ignore[misc]


async def test_each_tenant_is_a_namespace_of_its_own_with_its_quotas(
    harness: Harness, tmp_path: Path
) -> None:
    declared = {"acme": {"max_workers": 2}, "beta": {}}
    await harness.start(tenants=parse_tenants(declared))
    acme, beta = harness.tenant("acme"), harness.tenant("beta")
    assert acme.keys.commands == f"{harness.keys.prefix}:t:acme:commands"

    worker = await running(acme)
    # Its record, data plane and container are the tenant's: input in, output out.
    assert await harness.redis.hget(acme.keys.worker(worker), "status") == "RUNNING"
    assert not await harness.redis.exists(harness.keys.worker(worker))
    container = acme.container(worker)
    assert container is not None and container.name == f"{harness.keys.prefix}-t-acme-{worker}"
    sent = await acme.client.send_input(worker, "hello")
    events = await acme.events_until(worker, lambda f: f.get("content") == "got: hello")
    assert events and sent

    # Another tenant, and the default namespace, cannot reach it: not_found, nothing done.
    for other in (beta, harness):
        for command in ("status", "delete", "suspend", "grant"):
            if command == "grant":
                reply = await other.client.request(command, worker_id=worker, access="drive")
            else:
                reply = await other.client.request(command, worker_id=worker)
            assert reply.error == "not_found", (command, reply)
    assert await harness.redis.hget(acme.keys.worker(worker), "status") == "RUNNING"
    listed = await beta.client.request("list")
    assert listed.ok and worker not in json.dumps(listed.workers)

    # A reply_to outside the tenant's replies is refused (dead-lettered in its namespace).
    outside = await harness.redis.xadd(
        acme.keys.commands,
        {"command": "list", "request_id": "r-outside", "reply_to": harness.keys.replies},
    )
    deadline = asyncio.get_running_loop().time() + 30
    while not await harness.redis.xrange(acme.keys.dead):
        assert asyncio.get_running_loop().time() < deadline, "no dead letter"
        await asyncio.sleep(0.1)
    assert outside

    # max_workers, counted across managers: the third live worker is refused.
    second = await running(acme)
    third = await acme.client.request("create", agent_type="CUSTOM", agent_command=CAT)
    assert third.error == "quota_exceeded" and "max_workers" in (third.message or ""), third
    # A resume counts too: with one suspended and its place taken, it is refused.
    assert (await acme.client.request("suspend", worker_id=second)).ok
    assert await acme.wait_status(second, "SUSPENDED") == "SUSPENDED"
    refill = await running(acme)
    resumed = await acme.client.request("resume", worker_id=second)
    assert resumed.error == "quota_exceeded" and "max_workers" in (resumed.message or "")
    # beta is not acme: its create goes on.
    beta_worker = await running(beta)

    # A worker id is the fleet's: one request_id in two namespaces makes two workers, and an
    # id in use in another namespace is refused.
    twins = [
        await space.client.request(
            "create", agent_type="CUSTOM", agent_command=CAT, request_id="shared-request"
        )
        for space in (beta, harness)
    ]
    assert all(t.ok and t.worker_id for t in twins), twins
    assert twins[0].worker_id != twins[1].worker_id
    taken = await harness.client.request(
        "create", agent_type="CUSTOM", agent_command=CAT, worker_id=worker
    )
    assert taken.error == "conflict" and "taken" in (taken.message or ""), taken
    assert await harness.redis.hget(acme.keys.worker(worker), "status") == "RUNNING"
    # A derived id another namespace took first (the default namespace's ids are computable)
    # refuses that create, never shares the id; a new request_id gets another.
    predicted = str(uuid.uuid5(WORKER_ID_NAMESPACE, "default-request"))
    squatter = await beta.client.request(
        "create", agent_type="CUSTOM", agent_command=CAT, worker_id=predicted
    )
    assert squatter.ok, squatter
    refused_twin = await harness.client.request(
        "create", agent_type="CUSTOM", agent_command=CAT, request_id="default-request"
    )
    assert refused_twin.error == "conflict", refused_twin
    assert not await harness.redis.exists(harness.keys.worker(predicted))
    for space, made in ((beta, twins[0]), (harness, twins[1]), (beta, squatter)):
        assert (await space.client.request("delete", worker_id=made.worker_id)).ok

    # A quota changed with the CLI, and a tenant added with it, reach the running manager.
    code, text = await run_cli(
        harness.settings, tmp_path, "tenants", "add", "beta", "--max-cost-usd-per-day", "1"
    )
    assert code == 0, text
    await harness.redis.set(beta.keys.spend(utc_day()), "1.5")
    code, text = await run_cli(harness.settings, tmp_path, "tenants", "add", "gamma")
    assert code == 0, text
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        over = await beta.client.request("create", agent_type="CUSTOM", agent_command=CAT)
        if over.error == "quota_exceeded":
            break
        assert over.ok and over.worker_id, over
        assert (await beta.client.request("delete", worker_id=over.worker_id)).ok
        assert asyncio.get_running_loop().time() < deadline, "the new quota was not applied"
        await asyncio.sleep(0.5)
    assert "max_cost_usd_per_day" in (over.message or "") and "$1.50" in (over.message or "")
    gamma = harness.tenant("gamma")
    listed = await gamma.client.request("list", timeout=30)
    assert listed.ok, listed
    # WM_TENANTS and the registry together; for beta, named in both, the registry's word.
    code, text = await run_cli(
        harness.settings,
        tmp_path,
        "tenants",
        "list",
        "--json",
        env={"WM_TENANTS": json.dumps(declared)},
    )
    assert code == 0, text
    rows = {row["tenant"]: row for row in json.loads(text.strip().splitlines()[-1])}
    assert set(rows) == {"acme", "beta", "gamma"}
    assert rows["acme"]["max_workers"] == 2 and rows["beta"]["max_cost_usd_per_day"] == 1
    # 'tenants add' again changes only the quotas it names.
    for extra in (["--max-workers", "3"], []):
        code, text = await run_cli(harness.settings, tmp_path, "tenants", "add", "gamma", *extra)
        assert code == 0, text
    code, text = await run_cli(harness.settings, tmp_path, "tenants", "list", "--json")
    rows = {row["tenant"]: row for row in json.loads(text.strip().splitlines()[-1])}
    assert rows["gamma"]["max_workers"] == 3, rows

    # The operator's top counts each tenant's workers (and its day's spend).
    code, text = await run_cli(
        harness.settings, tmp_path, "top", "--once", env={"WM_TENANTS": json.dumps(declared)}
    )
    assert code == 0, text
    assert re.search(r"acme\s+0\s+2\s+1\s+0\s+\$0\.00", text), text
    assert re.search(r"beta\s+\d+\s+\d+\s+\d+\s+\d+\s+\$1\.50", text), text

    # A tenant with live workers is not taken out of the registry (they would go unserved).
    code, text = await run_cli(harness.settings, tmp_path, "tenants", "remove", "beta")
    assert code == 2 and "live or suspended" in text, text
    code, text = await run_cli(harness.settings, tmp_path, "tenants", "remove", "gamma")
    assert code == 0, text

    # The audit trail (the fleet's) names each command's tenant.
    trail = [f for _i, f in await harness.redis.xrange(harness.keys.audit)]
    assert {"acme", "beta", "gamma"} <= {f["tenant"] for f in trail}
    assert any(
        f["tenant"] == "acme" and f["command"] == "create" and f["outcome"] == "ok" for f in trail
    )

    # The Engine's events reach a tenant's worker too (one events stream per host): a killed
    # container ends its worker with its exit code, not by a heartbeat gone quiet.
    killed = acme.container(refill)
    assert killed is not None
    await asyncio.to_thread(killed.kill)
    assert await acme.wait_status(refill, "FAILED", "STOPPED", timeout=10) == "FAILED"
    assert "exited with code" in (
        await harness.redis.hget(acme.keys.worker(refill), "reason") or ""
    )
    for tenant, worker_id in ((acme, worker), (acme, second), (beta, beta_worker)):
        assert (await tenant.client.request("delete", worker_id=worker_id)).ok
        await tenant.wait_container_gone(worker_id)


async def test_a_tenants_access_users_reach_only_its_keys(harness: Harness, tmp_path: Path) -> None:
    manager = await harness.start(
        tenants=parse_tenants(["acme", "beta"]),
        http=True,
        http_addr="127.0.0.1:0",
        ui_token=SecretStr("console-token-for-tenants"),
    )
    assert manager.http is not None
    acme, beta = harness.tenant("acme"), harness.tenant("beta")
    mine, theirs = await running(acme), await running(beta)
    # /metrics counts each tenant's workers and its spend of the day.
    await harness.redis.set(acme.keys.spend(utc_day()), "0.25")
    async with aiohttp.ClientSession() as http, http.get(f"{manager.http.url}/metrics") as got:
        text = await got.text()
    assert 'wm_tenant_workers{status="RUNNING",tenant="acme"} 1.0' in text, text
    assert 'wm_tenant_workers{status="RUNNING",tenant="beta"} 1.0' in text
    assert 'wm_tenant_spend_usd_today{tenant="acme"} 0.25' in text
    users, passwords = {}, {}
    for name, role in (("ann", "producer"), ("vic", "viewer")):
        code, text = await run_cli(
            harness.settings,
            tmp_path,
            "access",
            "add",
            name,
            "--tenant",
            "acme",
            "--role",
            role,
            "--json",
            env={"WM_TENANTS": '["acme", "beta"]'},
        )
        assert code == 0, text
        row = json.loads(text.strip().splitlines()[-1])
        assert row["tenant"] == "acme" and row["role"] == role
        users[name] = url_with(harness.settings, row["username"], row["password"])
        passwords[name] = row["password"]

    producer = Redis.from_url(users["ann"], decode_responses=True)
    viewer = Redis.from_url(users["vic"], decode_responses=True)
    try:
        # The producer drives its tenant through the command stream, as any client does.
        as_ann = Harness(acme.settings, producer, harness.docker)
        reply = await as_ann.client.request("status", worker_id=mine)
        assert reply.ok and reply.status == "RUNNING", reply
        for refusal in (
            await as_ann.client.request("status", worker_id=theirs),
            await as_ann.client.request("delete", worker_id=theirs),
            await as_ann.client.request("grant", worker_id=theirs, access="read"),
        ):
            assert refusal.error == "not_found", refusal
        # A grant in a tenant: one worker's output, nothing of another's, nothing to write.
        granted = await as_ann.client.request("grant", worker_id=mine, access="read")
        assert granted.ok and granted.username and granted.password, granted
        assert granted.username.startswith(f"{acme.keys.prefix}-grant-")
        grant = Redis.from_url(
            url_with(harness.settings, granted.username, granted.password), decode_responses=True
        )
        try:
            assert (await grant.hgetall(acme.keys.worker(mine)))["status"] == "RUNNING"
            await grant.xrange(acme.keys.output(mine))
            await refused(grant.xrange(beta.keys.output(theirs)))
            await refused(grant.xadd(acme.keys.input(mine), {"type": "prompt", "content": "x"}))
        finally:
            await grant.aclose()
        await producer.xadd(acme.keys.input(mine), {"type": "prompt", "content": "from ann"})
        assert await producer.xrange(acme.keys.output(mine)) is not None
        # Nothing of beta's, no worker's own keys, no fleet key, no administration.
        await refused(producer.xrange(beta.keys.commands))
        await refused(producer.xadd(beta.keys.commands, {"command": "list"}))
        await refused(producer.xrange(beta.keys.replies))
        await refused(producer.hgetall(beta.keys.worker(theirs)))
        await refused(producer.xrange(beta.keys.output(theirs)))
        await refused(producer.xadd(beta.keys.input(theirs), {"type": "prompt", "content": "x"}))
        await refused(producer.xadd(acme.keys.output(mine), {"type": "stdout", "content": "x"}))
        await refused(producer.hset(acme.keys.worker(mine), "status", "STOPPED"))
        await refused(producer.set(acme.keys.heartbeat(mine), "x"))
        await refused(producer.get(acme.keys.spec(mine)))
        await refused(producer.get(acme.keys.id_salt))
        await refused(producer.xrange(harness.keys.commands))
        await refused(producer.xrange(harness.keys.audit))
        await refused(producer.hgetall(harness.keys.tenants))
        for admin in (("ACL", "LIST"), ("CONFIG", "GET", "*"), ("KEYS", "*"), ("FLUSHALL",)):
            await refused(producer.execute_command(*admin))
        # The viewer reads its tenant and writes nothing.
        assert (await viewer.hgetall(acme.keys.worker(mine)))["status"] == "RUNNING"
        assert await viewer.xrange(acme.keys.lifecycle)
        await refused(viewer.hgetall(beta.keys.worker(theirs)))
        await refused(viewer.xrange(beta.keys.lifecycle))
        await refused(viewer.xadd(acme.keys.commands, {"command": "list"}))
        await refused(viewer.xadd(acme.keys.input(mine), {"type": "prompt", "content": "x"}))
        await refused(viewer.xrange(acme.keys.input(mine)))
    finally:
        await producer.aclose()
        await viewer.aclose()
    # A name is one user: adding it again under another tenant is refused (a rotation keeps
    # its tenant and role); a tenant no manager serves is refused too.
    code, text = await run_cli(
        harness.settings,
        tmp_path,
        "access",
        "add",
        "vic",
        "--tenant",
        "beta",
        "--role",
        "viewer",
        env={"WM_TENANTS": '["acme", "beta"]'},
    )
    assert code == 2 and "already a viewer of tenant acme" in text, text
    code, text = await run_cli(
        harness.settings, tmp_path, "access", "add", "zed", "--tenant", "nobody", "--role", "viewer"
    )
    assert code == 2 and "no tenant 'nobody'" in text, text

    # The console: a tenant's viewer signs in and sees its tenant only, with no button; the
    # operator chooses the tenant it looks at.
    base, token = manager.http.url, "console-token-for-tenants"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.post(
            f"{base}/ui/login",
            data={"username": "vic", "password": passwords["vic"]},
            allow_redirects=False,
        ) as response:
            assert response.status == 303, await response.text()
            cookies = {session.COOKIE: str(response.cookies[session.COOKIE].value)}
        async with http.get(f"{base}/ui/", cookies=cookies) as response:
            page = await response.text()
            assert response.status == 200 and mine in page and theirs not in page
            assert "tenant <b>acme</b>" in page and "<h2>Managers</h2>" not in page
        async with http.get(f"{base}/ui/workers/{mine}", cookies=cookies) as response:
            page = await response.text()
            assert response.status == 200 and mine in page and "/delete" not in page
        for path, status in (
            (f"/ui/workers/{theirs}", 404),
            ("/ui/view?tenant=beta", 403),
            ("/ui/audit", 403),
        ):
            async with http.get(f"{base}{path}", cookies=cookies, allow_redirects=False) as got:
                assert got.status == status, (path, got.status)
        bearer = {"Authorization": f"Bearer {token}"}
        # An id is a UUID: a tenant's keys cannot be named from the default namespace.
        async with http.get(
            f"{base}/ui/workers/t:acme:{mine}", headers=bearer, allow_redirects=False
        ) as response:
            assert response.status == 404
        async with http.get(
            f"{base}/ui/view?tenant=beta", headers=bearer, allow_redirects=False
        ) as response:
            assert response.status == 303
            view = {VIEW_COOKIE: str(response.cookies[VIEW_COOKIE].value)}
        async with http.get(f"{base}/ui/", headers=bearer, cookies=view) as response:
            page = await response.text()
            assert theirs in page and mine not in page and "<h2>Managers</h2>" in page
        async with http.get(f"{base}/ui/", headers=bearer) as response:
            page = await response.text()  # the default namespace: neither tenant's worker
            assert mine not in page and theirs not in page
    # The trail: the producer's commands, under its tenant, and no password in it.
    trail = [f for _i, f in await harness.redis.xrange(harness.keys.audit)]
    assert any(f["tenant"] == "acme" and f["command"] == "grant" for f in trail)
    for secret in (*passwords.values(), granted.password):
        assert secret not in json.dumps(trail)
    for name in ("ann", "vic"):
        code, _ = await run_cli(harness.settings, tmp_path, "access", "remove", name)
        assert code == 0
    assert (await acme.client.request("delete", worker_id=mine)).ok
    assert (await beta.client.request("delete", worker_id=theirs)).ok


async def test_the_default_namespaces_users_reach_no_tenants_keys(
    harness: Harness, tmp_path: Path
) -> None:
    """Key patterns of the default namespace match no tenant's key, whatever the tenant's name
    (a worker id pattern of ``?`` and ``-`` would match ``<prefix>:t:<name>:commands`` for a
    name of 25 characters with a ``-`` where a UUID has them)."""
    names = [
        "".join("-" if i in (6, 11, 16, 21) else "a" for i in range(n))
        for n in (24, 25, 26, 28, 29)
    ]
    await harness.start(tenants=parse_tenants(names))
    for name in names:  # each answers, so each has its command and reply streams
        listed = await harness.tenant(name).client.request("list", timeout=30)
        assert listed.ok, listed
    users = {}
    for user, role in (("dv", "viewer"), ("dp", "producer")):
        code, text = await run_cli(
            harness.settings, tmp_path, "access", "add", user, "--role", role, "--json"
        )
        assert code == 0, text
        row = json.loads(text.strip().splitlines()[-1])
        users[user] = url_with(harness.settings, row["username"], row["password"])
    for url in users.values():
        client = Redis.from_url(url, decode_responses=True)
        try:
            for name in names:
                keys = harness.tenant(name).keys
                for key in (keys.commands, keys.replies, keys.dead, keys.lifecycle):
                    await refused(client.xrange(key))
                await refused(client.zrange(keys.index, 0, -1))
                await refused(client.xadd(keys.commands, {"command": "list"}))
        finally:
            await client.aclose()


async def test_producer_acl_prints_rules_redis_takes_as_they_are(
    harness: Harness, tmp_path: Path
) -> None:
    """``producer-acl NAME --tenant T`` prints a command to paste into a shell: quoted, so its
    ``[0-9a-f]`` classes and ``>password`` survive; the user it makes writes T's commands only."""
    code, text = await run_cli(harness.settings, tmp_path, "producer-acl", "ci", "--tenant", "acme")
    assert code == 0, text
    line = next(line for line in text.splitlines() if line.startswith("ACL SETUSER"))
    words = shlex.split(line)
    assert words[4] == ">CHANGE-ME"
    user = words[2]
    await harness.redis.execute_command(*words[:4], ">pw-for-ci", *words[5:])
    client = Redis.from_url(url_with(harness.settings, user, "pw-for-ci"), decode_responses=True)
    try:
        acme, beta = harness.tenant("acme"), harness.tenant("beta")
        await client.xadd(acme.keys.commands, {"command": "list"})
        await refused(client.xadd(beta.keys.commands, {"command": "list"}))
        await refused(client.xadd(harness.keys.commands, {"command": "list"}))
    finally:
        await client.aclose()
        await harness.redis.execute_command("ACL", "DELUSER", user)


async def test_a_busy_namespace_keeps_to_its_fair_share_while_another_is_busy(
    harness: Harness,
) -> None:
    """The consumer of a flooded stream has at most WM_COMMAND_FAIR_SHARE commands in flight
    while another namespace has started one within the last second; alone, as many as
    WM_COMMAND_CONCURRENCY."""
    from worker_manager.commands.consumer import CommandConsumer, Delivery
    from worker_manager.commands.fairness import FairShare
    from worker_manager.core.connections import connect

    settings = harness.settings.model_copy(update={"command_concurrency": 16})
    stream = f"{harness.keys.prefix}:fair-test"
    fair = FairShare(3)
    release = asyncio.Event()
    running: set[str] = set()
    most = 0

    async def dispatch(delivery: Delivery) -> None:
        nonlocal most
        running.add(delivery.entry_id)
        most = max(most, len(running))
        await release.wait()
        running.discard(delivery.entry_id)
        await harness.redis.xack(stream, "worker-manager", delivery.entry_id)

    reader = connect(settings, blocking=True, name="fair-test", decode=False)
    consumer = CommandConsumer(
        settings, harness.redis, reader, dispatch, stream=stream, fair=fair, namespace="flooded"
    )
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop, grace=1))

    async def until(done: Callable[[], bool]) -> None:
        deadline = asyncio.get_running_loop().time() + 10
        while not done():
            assert asyncio.get_running_loop().time() < deadline, len(running)
            await asyncio.sleep(0.01)

    try:
        await consumer.ensure_group()
        for i in range(10):
            await harness.redis.xadd(stream, {"command": "status", "n": str(i)})
        await until(lambda: len(running) == 10)  # alone: all ten at once
        release.set()
        await until(lambda: not running)
        release.clear()
        most = 0
        fair.started("another")  # another namespace is busy now
        for i in range(10):
            await harness.redis.xadd(stream, {"command": "status", "n": str(i)})
        await until(lambda: len(running) == 3)
        fair.started("another")
        await asyncio.sleep(0.2)  # had it more room, it would have taken more meanwhile
        assert most == 3, most
        release.set()
    finally:
        stop.set()
        release.set()
        await asyncio.wait_for(task, 10)
        await reader.aclose()
        await harness.redis.delete(stream)
