"""Environments (SPEC §9) through Redis and the Engine: a catalogue environment built into the
worker's image and seen by its agent, the same spec built once whoever asks (by name or ad hoc),
and the refusals (an unknown name, a base not allowed, an ad hoc spec when they are off) as
``invalid_command`` replies naming ``environment``, each dead-lettered."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
from redis.asyncio import Redis

from tests.integration.test_console_http import TOKEN, client, console
from tests.support.flows import Harness
from worker_manager.cli import main as _registers_commands  # noqa: F401
from worker_manager.cli.common import COMMANDS
from worker_manager.cli.parser import build_parser
from worker_manager.console import session
from worker_manager.contract.environments import parse_spec
from worker_manager.contract.labels import LABEL_HASH
from worker_manager.settings import Settings

QUOTED = 'a $HOME "q" \\x'
#: The agent prints what it sees: the baked variables and the file a run line wrote.
SHOW = json.dumps(
    ["sh", "-c", 'cat >/dev/null; printf "%s|%s\\n" "$APP_MARK" "$APP_QUOTED"; cat /etc/wm-env']
)


@pytest.mark.docker
@pytest.mark.redis
@pytest.mark.build
async def test_a_catalogue_environment_is_built_once_and_seen_by_the_agent(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    mark = uuid.uuid4().hex  # a spec of this run's own: a new image
    spec = parse_spec(
        {
            "env": {"APP_MARK": mark, "APP_QUOTED": QUOTED},
            "run": [f"echo built-{mark} > /etc/wm-env", "chmod 644 /etc/wm-env"],
        }
    )
    manager = await harness.start(environments={"tools": spec})

    named = await harness.client.request(
        "create", agent_type="CUSTOM", agent_command=SHOW, environment="tools"
    )
    # The same spec, ad hoc (JSON, its parts in another order): the same image.
    adhoc_spec = {"run": list(spec.run), "env": dict(reversed(spec.env.items()))}
    adhoc = await harness.client.request(
        "create", agent_type="CUSTOM", agent_command=SHOW, environment=json.dumps(adhoc_spec)
    )
    assert named.ok and adhoc.ok, (named, adhoc)
    assert named.worker_id and adhoc.worker_id
    statuses = await asyncio.gather(
        harness.wait_status(named.worker_id, "RUNNING", "FAILED", timeout=300),
        harness.wait_status(adhoc.worker_id, "RUNNING", "FAILED", timeout=300),
    )
    reasons = [
        await harness.redis.hget(harness.keys.worker(w), "reason")
        for w in (named.worker_id, adhoc.worker_id)
    ]
    assert list(statuses) == ["RUNNING", "RUNNING"], reasons

    first = await harness.redis.hgetall(harness.keys.worker(named.worker_id))
    second = await harness.redis.hgetall(harness.keys.worker(adhoc.worker_id))
    assert first["environment"] == "tools"
    digest = spec.with_base(harness.settings.base_image).digest
    assert second["environment"] == digest
    # One image, built once, for both.
    assert first["image_hash"] == second["image_hash"]
    assert manager.images.builds == 1
    images = await asyncio.to_thread(
        harness.docker.images.list, filters={"label": f"{LABEL_HASH}={first['image_hash']}"}
    )
    assert len(images) == 1
    saved = json.loads(
        await harness.redis.hget(harness.keys.image(first["image_hash"]), "spec") or "{}"
    )
    assert saved["environment"] == spec.with_base(harness.settings.base_image).canonical()

    # The status reply and list carry it.
    status = await harness.client.request("status", worker_id=named.worker_id)
    assert (status.details or {}).get("environment") == "tools"
    listed = await harness.client.list_all()
    by_id = {w["worker_id"]: w for w in listed.workers or []}
    assert by_id[adhoc.worker_id]["environment"] == digest

    # The agent sees the baked variables (literally: no $ expansion) and the run line's file.
    input_id = await harness.client.send_input(named.worker_id, "show")
    events = await harness.events_until_done(named.worker_id, input_id=input_id)
    stdout = [
        e["content"] for e in events if e.get("input_id") == input_id and e["type"] == "stdout"
    ]
    assert stdout == [f"{mark}|{QUOTED}", f"built-{mark}"]
    # Ground truth from the Engine.
    container = harness.container(adhoc.worker_id)
    assert container is not None
    code, out = await asyncio.to_thread(container.exec_run, ["cat", "/etc/wm-env"])
    assert code == 0 and out.decode().strip() == f"built-{mark}"
    env = await asyncio.to_thread(lambda: container.image.attrs["Config"]["Env"])
    assert f"APP_QUOTED={QUOTED}" in env

    # `worker-manager environments` lists the entry with its image and last use (Redis only).
    capsys.readouterr()
    args = build_parser().parse_args(["environments", "--json"])
    assert await COMMANDS["environments"](args, manager.settings) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["name"] == "tools" and entry["base"] == harness.settings.base_image
    (listed_image,) = entry["images"]
    assert listed_image["tag"] == f"worker:{first['image_hash']}"
    assert listed_image["shape"] == "CUSTOM" and listed_image["last_used"] > 0

    for worker_id in (named.worker_id, adhoc.worker_id):
        assert (await harness.client.request("delete", worker_id=worker_id)).ok


@pytest.mark.docker
@pytest.mark.redis
@pytest.mark.parametrize(
    ("overrides", "environment", "words"),
    [
        ({}, "nosuch", "'nosuch' is not in this deployment's catalogue"),
        ({}, json.dumps({"base": "debian:bookworm"}), "base 'debian:bookworm' is not allowed"),
        ({"environments_adhoc": "off"}, json.dumps({"env": {"A": "1"}}), "ADHOC=off"),
        ({}, json.dumps({"apt": ["Not_A_Package"]}), "apt: 'Not_A_Package' is not a Debian"),
    ],
)
async def test_refused_environments_are_invalid_commands_and_dead_letters(
    harness: Harness, overrides: dict[str, str], environment: str, words: str
) -> None:
    await harness.start(**overrides)
    request_id = f"env-{uuid.uuid4().hex[:8]}"
    reply = await harness.client.request(
        "create",
        agent_type="CUSTOM",
        agent_command=json.dumps(["cat"]),
        environment=environment,
        request_id=request_id,
    )
    assert not reply.ok and reply.error == "invalid_command"
    assert reply.message is not None
    assert reply.message.startswith("field 'environment'") and words in reply.message
    dead = await harness.redis.xrange(harness.keys.dead)
    letters = [f for _id, f in dead if f.get("request_id") == request_id]
    assert len(letters) == 1 and letters[0]["environment"] == environment
    assert words in letters[0]["dead_reason"]
    # Nothing was created.
    assert await harness.redis.zcard(harness.keys.index) == 0


async def pooled(harness: Harness, shape: str, count: int) -> set[str]:
    """The pooled ids of ``shape`` once the pool holds ``count`` (polled: filling has no
    event)."""
    key = harness.keys.pool(harness.settings.manager_id, shape)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 300
    while True:
        members: set[str] = await harness.redis.smembers(key)
        if len(members) == count:
            return members
        assert loop.time() < deadline, f"the pool of {shape} holds {members}, not {count}"
        await asyncio.sleep(0.1)


@pytest.mark.docker
@pytest.mark.redis
@pytest.mark.build
async def test_shapes_with_an_environment_are_prebuilt_and_pooled(harness: Harness) -> None:
    mark = uuid.uuid4().hex
    spec = parse_spec({"env": {"APP_MARK": mark}, "run": [f"echo built-{mark} > /etc/wm-env"]})
    manager = await harness.start(
        environments={"tools": spec},
        prebuild=["CUSTOM@tools"],
        warm_pool={"CUSTOM@tools": 1},
        warm_pool_interval_seconds=0.3,
    )
    ready = await pooled(harness, "CUSTOM@tools", 1)
    (pooled_id,) = ready
    # The prebuild and the pool's start shared one build of the environment's image.
    assert manager.images.builds == 1
    pooled_container = harness.container(pooled_id)
    assert pooled_container is not None
    code, out = await asyncio.to_thread(pooled_container.exec_run, ["cat", "/etc/wm-env"])
    assert code == 0 and out.decode().strip() == f"built-{mark}"

    # A create of the environment by name takes the pooled worker of its shape...
    named = await harness.client.request(
        "create", agent_type="CUSTOM", agent_command=SHOW, environment="tools"
    )
    # ... one with the same spec ad hoc, or with no environment, never does.
    adhoc = await harness.client.request(
        "create", agent_type="CUSTOM", agent_command=SHOW, environment=json.dumps({"env": {}})
    )
    plain = await harness.client.request("create", agent_type="CUSTOM", agent_command=SHOW)
    assert named.ok and adhoc.ok and plain.ok
    assert named.worker_id == pooled_id
    assert adhoc.worker_id and plain.worker_id
    assert await harness.wait_status(named.worker_id, "RUNNING", "FAILED", timeout=120) == "RUNNING"
    record = await harness.redis.hgetall(harness.keys.worker(named.worker_id))
    assert record["pool"] == "CUSTOM@tools" and record["environment"] == "tools"
    for other in (adhoc.worker_id, plain.worker_id):
        assert "pool" not in await harness.redis.hgetall(harness.keys.worker(other))
    image_hash = record["image_hash"]
    labelled = await asyncio.to_thread(
        harness.docker.images.list, filters={"label": f"{LABEL_HASH}={image_hash}"}
    )
    assert len(labelled) == 1
    for worker_id in (named.worker_id, adhoc.worker_id, plain.worker_id):
        assert (await harness.client.request("delete", worker_id=worker_id)).ok


@pytest.mark.redis
async def test_the_console_shows_a_workers_environment(settings: Settings, redis: Redis) -> None:
    """Over the console's real HTTP, from a record in Redis: the fleet's rows and the worker's
    page name its environment (escaped: a record's text is never markup)."""
    worker_id = str(uuid.uuid4())
    await redis.hset(
        settings.keys.worker(worker_id),
        mapping={
            "worker_id": worker_id,
            "status": "RUNNING",
            "agent_type": "CUSTOM",
            "environment": "node<20>",
        },
    )
    await redis.zadd(settings.keys.index, {worker_id: time.time() * 1000})
    cookies = {session.COOKIE: session.new_session(TOKEN, time.time())}
    async with console(settings) as base, client() as http:
        async with http.get(base + "/ui/rows", cookies=cookies) as resp:
            assert resp.status == 200
            assert "<td>node&lt;20&gt;</td>" in await resp.text()
        async with http.get(base + f"/ui/workers/{worker_id}", cookies=cookies) as resp:
            assert resp.status == 200
            assert '<b id="environment">node&lt;20&gt;</b>' in await resp.text()
