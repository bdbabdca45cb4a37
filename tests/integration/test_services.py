"""Services beside a worker (SPEC §9), through Redis and the Engine.

A service is a small TCP server of this test's own (Python, from an environment of the
catalogue: the base has Python, so no package mirror is needed) that counts what it is sent in
``/data``. The agent reaches it on ``127.0.0.1``; nothing else reaches it; it is ready before the
worker is RUNNING, keeps its data across a suspend and a resume, is reported when it exits, and
goes with its worker. A service that cannot start fails its worker with ``service_failed``; a
refused one is an ``invalid_command`` naming ``services``. The Engine's own view (``inspect``,
``docker exec``) is the ground truth for its containment.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from tests.integration.test_environment_build import HOST_CAS, host_build_egress
from tests.support.flows import Harness
from worker_manager import Client
from worker_manager.contract.environments import parse_spec
from worker_manager.contract.labels import LABEL_SERVICE_OF

pytestmark = [pytest.mark.docker, pytest.mark.redis]

PORT = 7411
#: Counts the lines it is sent in /data/count (kept across restarts); "quit" exits with code 3;
#: a connection that sends nothing (the readiness probe) is not counted.
SERVER = f"""
import os, socket, sys
path = '/data/count'
count = int(open(path).read()) if os.path.exists(path) else 0
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(('127.0.0.1', {PORT}))
listener.listen()
print('listening', flush=True)
while True:
    conn, _ = listener.accept()
    data = conn.recv(1000).decode().strip()
    if not data:
        conn.close()
        continue
    if data == 'quit':
        conn.sendall(b'bye\\n')
        conn.close()
        sys.exit(3)
    count += 1
    with open(path, 'w') as f:
        f.write(str(count))
    conn.sendall(f'{{count}} {{data}}\\n'.encode())
    conn.close()
"""
#: The agent sends its input to the service and prints the answer (or why there was none).
AGENT = [
    "python3",
    "-c",
    "import socket, sys\n"
    "line = sys.stdin.read().strip()\n"
    "try:\n"
    f"    c = socket.create_connection(('127.0.0.1', {PORT}), 3)\n"
    "except OSError as exc:\n"
    "    print('unreachable', type(exc).__name__)\n"
    "    sys.exit(0)\n"
    "c.sendall(line.encode() + b'\\n')\n"
    "print(c.recv(1000).decode().strip())\n",
]


def service(**overrides: Any) -> dict[str, Any]:
    """Its port declared: ready once the worker's loopback answers there (probed)."""
    return {
        "name": "kv",
        "image": "svc",
        "command": ["python3", "-c", SERVER],
        "port": PORT,
        **overrides,
    }


async def ask(client: Client, worker_id: str, text: str) -> str:
    result = await asyncio.wait_for(client.worker(worker_id).run(text), 120)
    return result.text


def service_containers(harness: Harness, worker_id: str) -> list[Any]:
    return harness.docker.containers.list(
        all=True, filters={"label": f"{LABEL_SERVICE_OF}={worker_id}"}
    )


def volume_names(harness: Harness, worker_id: str) -> set[str]:
    return {
        v.name
        for v in harness.docker.volumes.list(
            filters={"label": f"worker-manager.worker_id={worker_id}"}
        )
    }


async def wait_for(predicate: Any, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.1)


@pytest.mark.build
async def test_a_service_is_reached_by_its_agent_alone_and_kept_across_a_suspend(
    harness: Harness,
) -> None:
    # A spec of this run's own, so the service's image is built here, from the base.
    spec = parse_spec({"env": {"SVC_MARK": uuid.uuid4().hex}})
    await harness.start(environments={"svc": spec})
    client = Client(harness.redis, key_prefix=harness.settings.key_prefix)

    worker = await client.create(
        agent_type="CUSTOM", agent_command=json.dumps(AGENT), services=[service()]
    )
    other = await client.create(agent_type="CUSTOM", agent_command=json.dumps(AGENT))
    info = await worker.wait_running(timeout=300)
    # Ready before RUNNING: the record says so, and the first input is answered.
    assert info.services == {"kv": "running"}
    assert await ask(client, worker.id, "one") == "1 one"
    assert await ask(client, worker.id, "two") == "2 two"

    # Nothing else reaches it: another worker's loopback is its own, and the service's
    # container has no address of its own for anyone to reach.
    await other.wait_running()
    assert (await ask(client, other.id, "x")).startswith("unreachable")
    (container,) = await asyncio.to_thread(service_containers, harness, worker.id)
    attrs = container.attrs
    worker_container = harness.container(worker.id)
    assert worker_container is not None
    host = attrs["HostConfig"]
    assert host["NetworkMode"] == f"container:{worker_container.id}"
    assert not attrs["NetworkSettings"].get("IPAddress")
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and "NET_RAW" not in (host["CapAdd"] or [])
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["Memory"] > 0 and host["PidsLimit"] > 0
    # No operator secret, no egress socket, none of the worker's volumes; only the proxy.
    env = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
    assert env["HTTP_PROXY"].startswith("http://127.0.0.1:")
    assert not [name for name in env if name.startswith(("ANTHROPIC", "OPENAI", "WM_"))]
    mounts = {m["Destination"]: m for m in attrs["Mounts"]}
    assert set(mounts) == {"/data"}
    assert mounts["/data"]["Name"] in volume_names(harness, worker.id)

    # Suspend: its container goes, its data stays; resume: it is back, and counts on.
    suspended = await worker.suspend()
    assert suspended.status == "SUSPENDED"
    await wait_for(lambda: asyncio.to_thread(lambda: not service_containers(harness, worker.id)))
    assert (await worker.status()).services == {"kv": "stopped"}
    assert mounts["/data"]["Name"] in await asyncio.to_thread(volume_names, harness, worker.id)
    # (the wrapper reads the input that wakes it only once the service answers)
    assert await ask(client, worker.id, "three") == "3 three"
    assert (await worker.wait_running()).services == {"kv": "running"}

    # It exits later: an error event on the worker's output names it; the worker goes on.
    assert await ask(client, worker.id, "quit") == "bye"

    async def reported() -> bool:
        entries = await harness.redis.xrange(harness.keys.output(worker.id))
        return any(
            f.get("type") == "error" and f.get("content") == "service 'kv' exited with code 3"
            for _id, f in entries
        )

    await wait_for(reported)
    info = await worker.status()
    assert info.status == "RUNNING" and info.services == {"kv": "exited with code 3"}
    assert (await ask(client, worker.id, "four")).startswith("unreachable")

    # Delete: its containers and volumes go with it.
    await worker.delete()
    await other.delete()
    assert await asyncio.to_thread(service_containers, harness, worker.id) == []
    assert await asyncio.to_thread(volume_names, harness, worker.id) == set()
    assert (await worker.status()).services == {"kv": "removed"}


@pytest.mark.build
async def test_a_service_that_cannot_start_fails_its_worker_naming_it(harness: Harness) -> None:
    await harness.start(
        environments={"svc": parse_spec({"env": {"SVC_FAIL": "1"}})},
        service_start_timeout_seconds=3,
    )
    client = Client(harness.redis, key_prefix=harness.settings.key_prefix)
    crashing = service(command=["sh", "-c", "echo cannot open /data/db >&2; exit 1"])
    worker = await client.create(
        agent_type="CUSTOM", agent_command=json.dumps(AGENT), services=[crashing]
    )
    assert await harness.wait_status(worker.id, "RUNNING", "FAILED", timeout=300) == "FAILED"
    info = await worker.status()
    assert info.reason == "service_failed: kv: exited with code 1: cannot open /data/db"
    await wait_for(lambda: asyncio.to_thread(lambda: not service_containers(harness, worker.id)))
    await wait_for(lambda: asyncio.to_thread(lambda: harness.container(worker.id) is None))

    # A port that never answers: failed at the deadline, naming the port.
    silent = service(command=["sleep", "600"], port=7999)
    slow = await client.create(
        agent_type="CUSTOM", agent_command=json.dumps(AGENT), services=[silent]
    )
    assert await harness.wait_status(slow.id, "RUNNING", "FAILED", timeout=300) == "FAILED"
    reason = (await slow.status()).reason
    assert reason == "service_failed: kv: nothing answered on port 7999 within 3 s", reason
    await wait_for(lambda: asyncio.to_thread(lambda: not service_containers(harness, slow.id)))


@pytest.mark.parametrize(
    ("services", "words"),
    [
        ([{"name": "kv", "image": "nosuch"}], "image 'nosuch' is neither in"),
        ([{"name": "Bad Name", "image": "svc"}], "is not a service name"),
        ([{"name": "kv", "image": "svc"}, {"name": "kv", "image": "svc"}], "used twice"),
        ([{"name": "kv", "image": "svc"}], "give the service a command"),
        ([{"name": "kv", "image": "svc", "env": {"HTTP_PROXY": "x"}}], "HTTP_PROXY"),
        ([{"name": "kv", "image": "svc", "port": 0}], "a port is an integer"),
    ],
)
async def test_refused_services_are_invalid_commands_and_dead_letters(
    harness: Harness, services: list[dict[str, Any]], words: str
) -> None:
    await harness.start(environments={"svc": parse_spec({})})
    request_id = f"svc-{uuid.uuid4().hex[:8]}"
    reply = await harness.client.request(
        "create",
        agent_type="CUSTOM",
        agent_command=json.dumps(["cat"]),
        services=json.dumps(services),
        request_id=request_id,
    )
    assert not reply.ok and reply.error == "invalid_command", reply
    assert reply.message is not None
    assert reply.message.startswith("field 'services'") and words in reply.message, reply.message
    dead = await harness.redis.xrange(harness.keys.dead)
    letters = [f for _id, f in dead if f.get("request_id") == request_id]
    assert len(letters) == 1 and words in letters[0]["dead_reason"]
    assert await harness.redis.zcard(harness.keys.index) == 0


@pytest.mark.build
async def test_a_debian_redis_service_keeps_its_data_across_a_suspend(harness: Harness) -> None:
    """The README's example, for real: Debian's redis-server built through the egress service
    (the site's CAs and the package hosts' addresses granted, as in test_environment_build),
    reached by the agent's redis-cli on 127.0.0.1, its data kept while the worker sleeps."""
    await harness.start(
        build_ca_files=HOST_CAS, build_egress=host_build_egress(), build_timeout_seconds=900
    )
    client = Client(harness.redis, key_prefix=harness.settings.key_prefix)
    worker = await client.create(
        agent_type="CUSTOM",
        agent_command=json.dumps(["sh", "-c", 'eval "$(cat)"']),
        environment={"apt": ["redis-tools"]},
        services=[
            {
                "name": "cache",
                "image": {"apt": ["redis-server"]},
                "command": ["redis-server", "--dir", "/data", "--appendonly", "yes"],
                "port": 6379,
            }
        ],
    )
    info = await worker.wait_running(timeout=900)
    assert info.services == {"cache": "running"}
    stored = await asyncio.wait_for(worker.run("redis-cli set greeting hello"), 60)
    assert (stored.exit_code, stored.text) == (0, "OK")

    await worker.suspend()
    await wait_for(
        lambda: asyncio.to_thread(lambda: not service_containers(harness, worker.id)), 60
    )
    kept = await asyncio.wait_for(worker.run("redis-cli get greeting"), 300)
    assert (kept.exit_code, kept.text) == (0, "hello")
    await worker.delete()
    assert await asyncio.to_thread(volume_names, harness, worker.id) == set()


@pytest.mark.build
async def test_after_a_manager_crash_the_reconciler_leaves_no_service_behind(
    harness: Harness,
) -> None:
    environments = {"svc": parse_spec({"env": {"SVC_RECONCILE": "1"}})}
    manager = await harness.start(environments=environments, reconcile_interval_seconds=3600)
    client = Client(harness.redis, key_prefix=harness.settings.key_prefix)
    leftover, crashed = [
        await client.create(
            # No port: ready once it has stayed up a moment.
            agent_type="CUSTOM",
            agent_command=json.dumps(AGENT),
            services=[service(port=None)],
        )
        for _ in range(2)
    ]
    for worker in (leftover, crashed):
        assert (await worker.wait_running(timeout=300)).services == {"kv": "running"}

    # The manager goes away; meanwhile one worker is ended in Redis only (a crash between the
    # transition and the teardown), and the other's service dies with nobody watching.
    await harness.stop(manager)
    await harness.redis.hset(harness.keys.worker(leftover.id), "status", "STOPPED")
    (dying,) = await asyncio.to_thread(service_containers, harness, crashed.id)
    await asyncio.to_thread(dying.kill)

    manager = await harness.start(environments=environments, reconcile_interval_seconds=3600)
    assert await asyncio.to_thread(service_containers, harness, leftover.id) == []
    assert harness.container(leftover.id) is None
    info = await crashed.status()
    assert info.status == "RUNNING" and info.services == {"kv": "exited with code 137"}
    entries = await harness.redis.xrange(harness.keys.output(crashed.id))
    errors = [f["content"] for _id, f in entries if f.get("type") == "error"]
    assert errors == ["service 'kv' exited with code 137"]
    # Said once: a second pass finds nothing to do.
    report = await manager.reconciler.reconcile()
    assert not report.changed(), report
    await crashed.delete()
    assert await asyncio.to_thread(service_containers, harness, crashed.id) == []
