"""Contained workers (SPEC §7): a hostile CUSTOM agent reaches only what its create granted.

The agent is a Python script inside a real worker container that tries, as a prompt-injected
agent would, to reach the host's ports directly and to go through the fleet's egress proxy to a
granted and an ungranted destination. Everything is observed from outside: the worker's output
stream, the Docker Engine's view of the container, and the servers on the host.
"""

from __future__ import annotations

import asyncio
import errno
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.flows import Harness
from tests.support.redis_server import RedisServer
from worker_manager.core.bridge import docker_bridge_gateway
from worker_manager.egress.control import EgressClient, stop_service

pytestmark = [pytest.mark.docker, pytest.mark.redis]

#: Tries each thing it is told to and prints one line per attempt.
HOSTILE_AGENT = r"""
import json, socket, sys, urllib.request, urllib.error
plan = json.loads(sys.stdin.read())
for host, port in plan.get("direct", []):
    try:
        socket.create_connection((host, port), timeout=3).close()
        print(f"direct {host}:{port} connected")
    except OSError as exc:
        print(f"direct {host}:{port} failed {exc.errno}")
for url in plan.get("get", []):
    try:
        with urllib.request.urlopen(url, timeout=15) as response:
            print(f"get {url} {response.status} {response.read().decode()}")
    except urllib.error.HTTPError as exc:
        print(f"get {url} {exc.code}")
    except OSError as exc:
        print(f"get {url} error {exc}")
for target in plan.get("connect", []):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    print(f"connect {target} {s.recv(200).split(b' ')[1].decode()}")
    s.close()
"""


class HostServer:
    """A tiny HTTP server on the host, on all addresses (so only containment can stop a
    direct connection), counting the requests that reach it."""

    def __init__(self, body: str) -> None:
        self.body = body.encode()
        self.hits = 0
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> HostServer:
        self._server = await asyncio.start_server(self._handle, "0.0.0.0", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.hits += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (len(self.body), self.body)
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


@pytest.fixture
async def servers() -> AsyncIterator[tuple[HostServer, HostServer]]:
    allowed, denied = await HostServer("granted").start(), await HostServer("secret").start()
    try:
        yield allowed, denied
    finally:
        await allowed.close()
        await denied.close()


async def _run(harness: Harness, worker_id: str, plan: dict[str, Any]) -> list[str]:
    input_id = await harness.client.send_input(worker_id, json.dumps(plan))
    events = await harness.events_until_done(worker_id, input_id=input_id, timeout=90)
    return [e["content"] for e in events if e.get("input_id") == input_id and e["type"] == "stdout"]


async def test_a_hostile_agent_reaches_only_what_it_was_granted(
    harness: Harness, servers: tuple[HostServer, HostServer], redis_server: RedisServer
) -> None:
    allowed, denied = servers
    # The host as the egress service sees it: its address on the Docker bridge (loopback is
    # the agent's own NO_PROXY, for its gateway relay). Granted literally, as a private
    # address must be; `localhost` granted by name must still not lead to loopback.
    host = docker_bridge_gateway()
    await harness.start()
    reply = await harness.client.request(
        "create",
        agent_type="CUSTOM",
        agent_command=json.dumps(["python3", "-c", HOSTILE_AGENT]),
        egress=json.dumps([f"{host}:{allowed.port}", f"localhost:{allowed.port}"]),
    )
    assert reply.ok, reply
    worker_id = str(reply.worker_id)
    assert await harness.wait_status(worker_id, "RUNNING", "FAILED") == "RUNNING"

    container = harness.container(worker_id)
    assert container is not None
    assert container.attrs["HostConfig"]["NetworkMode"] == "none"
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    assert mounts["/run/wm"]["RW"] is False
    env = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])
    assert env["HTTP_PROXY"] == env["https_proxy"] == "http://127.0.0.1:3128"
    assert env["WM_REDIS_URL"].startswith("unix://") and "/run/wm/redis.sock" in env["WM_REDIS_URL"]

    direct = [[host, allowed.port], [host, redis_server.port], ["127.0.0.1", allowed.port]]
    lines = await _run(
        harness,
        worker_id,
        {
            "direct": direct,
            "get": [
                f"http://{host}:{allowed.port}/",
                f"http://{host}:{denied.port}/",
                "http://169.254.169.254/latest/meta-data/",
            ],
            "connect": [
                f"{host}:{allowed.port}",
                f"{host}:{denied.port}",
                f"localhost:{allowed.port}",
            ],
        },
    )
    # No direct route anywhere: not the host's ports (via the bridge), not its Redis.
    for address, port in direct:
        assert any(line.startswith(f"direct {address}:{port} failed") for line in lines), lines
    # Through the proxy: the grant, and nothing else.
    assert f"get http://{host}:{allowed.port}/ 200 granted" in lines, lines
    assert f"get http://{host}:{denied.port}/ 403" in lines, lines
    assert "get http://169.254.169.254/latest/meta-data/ 403" in lines, lines
    assert f"connect {host}:{allowed.port} 200" in lines, lines
    assert f"connect {host}:{denied.port} 403" in lines, lines
    assert f"connect localhost:{allowed.port} 403" in lines, lines
    assert denied.hits == 0
    # Each refusal is on the worker's own output.
    output = await harness.redis.xrange(harness.keys.output(worker_id))
    refusals = [f["content"] for _i, f in output if f.get("type") == "error"]
    assert f"egress denied: {host}:{denied.port}" in refusals
    assert f"egress denied: localhost:{allowed.port}" in refusals
    assert "egress denied: 169.254.169.254:80" in refusals

    # The grant is revoked with the worker: its sockets are gone.
    sockets = harness.settings.egress_run_dir / "workers" / worker_id
    assert sockets.exists()
    delete = await harness.client.request("delete", worker_id=worker_id)
    assert delete.ok, delete
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while sockets.exists():
        assert loop.time() < deadline, "the worker's grant outlived it"
        await asyncio.sleep(0.1)


async def test_workers_stay_connected_through_manager_and_service_restarts(
    harness: Harness, servers: tuple[HostServer, HostServer]
) -> None:
    allowed, _denied = servers
    host = docker_bridge_gateway()
    manager = await harness.start()
    reply = await harness.client.request(
        "create",
        agent_type="CUSTOM",
        agent_command=json.dumps(["python3", "-c", HOSTILE_AGENT]),
        egress=json.dumps([f"{host}:{allowed.port}"]),
    )
    assert reply.ok, reply
    worker_id = str(reply.worker_id)
    assert await harness.wait_status(worker_id, "RUNNING", "FAILED") == "RUNNING"
    plan = {"get": [f"http://{host}:{allowed.port}/"]}
    wanted = f"get http://{host}:{allowed.port}/ 200 granted"

    # The manager is not in the data path: with it gone the worker still works.
    await harness.stop(manager)
    assert wanted in await _run(harness, worker_id, plan)

    # The egress service restarted: a manager starts it again and it serves the same grants.
    assert stop_service(harness.settings.egress_run_dir)
    await harness.start()
    client = EgressClient(harness.settings)
    try:
        assert await client.healthy()
        assert worker_id in await client.workers()
    finally:
        await client.close()
    assert wanted in await _run(harness, worker_id, plan)


#: What a prompt-injected agent tries against its own wrapper; one JSON line of findings.
AGAINST_THE_WRAPPER = r"""
import json, os, signal, socket
found = {"uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups())}
found["caps"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
found["redis_url_in_env"] = "WM_REDIS_URL" in os.environ
wrapper = [p for p in os.listdir("/proc") if p.isdigit()
           and open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")[1:2] == [b"-I"]]
found["wrapper_found"] = bool(wrapper)
def attempt(name, action):
    try:
        action()
        found[name] = "done"
    except OSError as exc:
        found[name] = exc.errno
for pid in wrapper:
    attempt("read_environ", lambda: open(f"/proc/{pid}/environ", "rb").read())
    attempt("stop_wrapper", lambda: os.kill(int(pid), signal.SIGSTOP))
    attempt("kill_wrapper", lambda: os.kill(int(pid), signal.SIGKILL))
attempt("redis_socket", lambda: socket.socket(socket.AF_UNIX).connect("/run/wm/redis.sock"))
attempt("private_files", lambda: os.listdir("/home/.worker-manager/private"))
attempt("own_private_dir", lambda: os.mkdir("/home/.worker-manager/mine"))
attempt("root_fs", lambda: open("/usr/local/bin/planted", "w").write("x"))
attempt("workspace", lambda: open("/workspace/note", "w").write("x"))
attempt("home", lambda: open(os.path.expanduser("~/note"), "w").write("x"))
attempt("tmp", lambda: open("/tmp/note", "w").write("x"))
print(json.dumps(found))
"""


async def test_the_agent_cannot_read_signal_or_speak_for_its_wrapper(harness: Harness) -> None:
    await harness.start()
    reply = await harness.client.request(
        "create",
        agent_type="CUSTOM",
        agent_command=json.dumps(["python3", "-c", AGAINST_THE_WRAPPER]),
    )
    assert reply.ok, reply
    worker_id = str(reply.worker_id)
    assert await harness.wait_status(worker_id, "RUNNING", "FAILED") == "RUNNING"
    container = harness.container(worker_id)
    assert container.attrs["HostConfig"]["ReadonlyRootfs"] is True
    assert container.attrs["HostConfig"]["CapAdd"] == ["SETUID", "SETGID", "KILL"]
    assert {m["Destination"]: m["Type"] for m in container.attrs["Mounts"]} == {
        "/home": "volume",
        "/workspace": "volume",
        "/run/wm": "bind",
    }

    [line] = await _run(harness, worker_id, {})
    found = json.loads(line)
    # The agent is a user of its own, with no capability and no Redis credentials.
    assert (found["uid"], found["gid"]) == (1000, 1000), found
    assert set(found["groups"]) <= {1000}, found  # none of root's groups
    assert int(found["caps"], 16) == 0 and found["redis_url_in_env"] is False
    # Its wrapper's environment, signals, Redis relay and private files are out of reach.
    assert found["wrapper_found"]
    for attempt in ("read_environ", "stop_wrapper", "kill_wrapper", "redis_socket"):
        assert found[attempt] in (errno.EACCES, errno.EPERM), (attempt, found)
    assert found["private_files"] == errno.EACCES and found["own_private_dir"] == errno.EACCES
    # It writes only its workspace, its home and /tmp.
    assert found["root_fs"] == errno.EROFS
    assert found["workspace"] == found["home"] == found["tmp"] == "done", found
    # The wrapper is unharmed: it still answers.
    assert await _run(harness, worker_id, {}) != []
    record = await harness.redis.hgetall(harness.keys.worker(worker_id))
    assert record["status"] == "RUNNING", record
