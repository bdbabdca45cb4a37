"""An environment's build reaches its package hosts through the egress service, and nothing else.

Real Redis, Engine and egress service. On this machine containers reach no package mirror, but
the host does (through a TLS-inspecting egress whose CAs are in
``/usr/local/share/ca-certificates``, and whose package hosts resolve to a non-public address):
so the builds here get those CAs (``WM_BUILD_CA_FILES``) and that address granted literally,
and a real ``apt-get install jq`` and ``pip install six`` go through the egress service.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from redis.asyncio import Redis

from tests.support.flows import Harness
from tests.support.redis_server import bindable_gateway
from worker_manager.contract.egress import canonical_egress, non_public_kind
from worker_manager.contract.environments import EnvironmentSpec, ResolvedEnvironment
from worker_manager.contract.kinds import AgentType
from worker_manager.contract.labels import LABEL_BUILD_NETWORK
from worker_manager.egress.control import EgressClient
from worker_manager.environments.build_network import GRANT_PREFIX, EgressBuildNetwork
from worker_manager.images.build import BuildFailed
from worker_manager.images.service import ImageService
from worker_manager.settings import Settings
from worker_manager.settings.environments import DEFAULT_BUILD_EGRESS

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.build]

HOST_CAS = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
PACKAGES = {"apt": ["jq"], "pip": ["six"]}
USE = "jq --version && python3 -c 'import six, sys; print(\"six\", six.__version__, sys.prefix)'"


def host_build_egress() -> list[str]:
    """The default package hosts, plus the non-public addresses they resolve to here."""
    entries = list(DEFAULT_BUILD_EGRESS)
    for host in ("deb.debian.org", "pypi.org", "files.pythonhosted.org"):
        for info in socket.getaddrinfo(host, None, socket.AF_INET):
            address = str(info[4][0])
            if non_public_kind(ipaddress.ip_address(address)) is not None:
                entries += [f"{address}:80", f"{address}:443"]
    return canonical_egress(entries)


def build_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "build_ca_files": HOST_CAS,
            "build_egress": host_build_egress(),
            "build_timeout_seconds": 900,
            "build_failure_ttl_seconds": 0,
        }
    )


def leftovers(client: docker.DockerClient, settings: Settings) -> list[str]:
    found = client.api.containers(
        all=True,
        filters={
            "label": [LABEL_BUILD_NETWORK, f"worker-manager.key_prefix={settings.key_prefix}"]
        },
    )
    return [str(c["Id"]) for c in found]


async def build_grants(egress: EgressClient, settings: Settings) -> list[str]:
    return [
        g.worker_id
        for g in await egress.grants()
        if g.worker_id.startswith(GRANT_PREFIX) and g.key_prefix == settings.key_prefix
    ]


class Listener:
    """A TCP listener on the host that records every connection it accepts."""

    def __init__(self, host: str) -> None:
        self.sock = socket.create_server((host, 0))
        self.host, self.port = host, int(self.sock.getsockname()[1])
        self.accepted: list[Any] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.accepted.append(peer)
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listeners() -> Iterator[list[Listener]]:
    hosts = ["127.0.0.1"]
    gateway = bindable_gateway()
    assert gateway is not None, "the bridge gateway is an address of this host here"
    hosts.append(gateway)
    started = [Listener(host) for host in hosts]
    try:
        yield started
    finally:
        for listener in started:
            listener.close()


async def create_and_wait(
    harness: Harness, environment: dict[str, Any], command: str, wanted: tuple[str, ...]
) -> tuple[str, str, dict[str, str]]:
    reply = await harness.client.create(
        agent_type="CUSTOM",
        agent_command=json.dumps(["sh", "-c", command]),
        environment=json.dumps(environment),
        timeout=60,
    )
    assert reply.ok, reply
    worker_id = reply.worker_id
    assert worker_id is not None
    status = await harness.wait_status(worker_id, *wanted, timeout=900)
    record = await harness.redis.hgetall(harness.keys.worker(worker_id))
    return worker_id, status, record


async def test_apt_and_pip_through_egress_used_by_agent_and_built_once(
    harness: Harness, docker_client: docker.DockerClient
) -> None:
    settings = build_settings(harness.settings)
    manager = await harness.start(**{k: getattr(settings, k) for k in _BUILD_FIELDS})
    # A mark of this run's own: the image is new even on an Engine an earlier run left it on.
    mark = {"BUILD_MARK": uuid.uuid4().hex}
    packages = {**PACKAGES, "env": mark}
    worker_id, status, record = await create_and_wait(harness, packages, USE, ("RUNNING", "FAILED"))
    assert status == "RUNNING", record
    input_id = await harness.client.send_input(worker_id, "use the toolchain")
    events = await harness.events_until_done(worker_id, input_id=input_id, timeout=120)
    mine = [e for e in events if e.get("input_id") == input_id]
    out = [e["content"] for e in mine if e["type"] == "stdout"]
    assert mine[-1]["content"] == "0", mine
    assert any(line.startswith("jq-1.") for line in out), out
    assert any(line.startswith("six ") and "/opt/wm-env" in line for line in out), out

    # Ground truth, as the agent's user: the system's python stays clean of the packages.
    container = harness.container(worker_id)
    code, output = container.exec_run(["/usr/bin/python3", "-c", "import six"], user="1000")
    assert code != 0 and b"No module named 'six'" in output, output
    # The operator's CA was trusted during the build only: not in the image's trust store.
    code, output = container.exec_run(["sh", "-c", "ls /usr/local/share/ca-certificates /tmp"])
    assert b".crt" not in output and b"wm-build" not in output, output

    # The same spec again (its lists in another order): no second build, the same image.
    again = {"env": mark, "pip": ["six"], "apt": ["jq"]}
    second, status, record2 = await create_and_wait(harness, again, USE, ("RUNNING", "FAILED"))
    assert status == "RUNNING", record2
    assert record2["image_hash"] == record["image_hash"]
    assert manager.images.builds == 1

    assert leftovers(docker_client, settings) == []
    assert await build_grants(manager.containment.client, settings) == []
    for wid in (worker_id, second):
        assert (await harness.client.request("delete", worker_id=wid)).ok


_BUILD_FIELDS = (
    "build_ca_files",
    "build_egress",
    "build_timeout_seconds",
    "build_failure_ttl_seconds",
)


async def test_failing_packages_name_themselves(
    harness: Harness, docker_client: docker.DockerClient
) -> None:
    settings = build_settings(harness.settings)
    await harness.start(**{k: getattr(settings, k) for k in _BUILD_FIELDS})
    _, status, record = await create_and_wait(
        harness, {"apt": ["nosuchpkg-wm"]}, "true", ("RUNNING", "FAILED")
    )
    assert status == "FAILED", record
    assert record["reason"].startswith("build_failed: E: Unable to locate package nosuchpkg-wm"), (
        record["reason"]
    )
    _, status, record = await create_and_wait(
        harness, {"pip": ["nosuchpkg-wm"]}, "true", ("RUNNING", "FAILED")
    )
    assert status == "FAILED", record
    first = record["reason"].splitlines()[0]
    assert first.startswith("build_failed: ERROR: ") and "nosuchpkg-wm" in first, record["reason"]
    assert leftovers(docker_client, settings) == []


#: Tries each target directly and, through the build's proxy, by HTTP; prints one word each.
_PROBE_CODE = """
import socket, sys, urllib.request
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), 3).close()
        word = "connected"
    except OSError as exc:
        word = type(exc).__name__
    try:
        urllib.request.urlopen("http://%s/" % target, timeout=5)
        proxied = "proxied"
    except Exception as exc:
        proxied = "refused:" + str(getattr(exc, "code", None) or type(exc).__name__)
    print(target, word, proxied)
"""


def probe_line(targets: list[str]) -> str:
    """One run line (the contract allows no newline in one): the probe, its report kept."""
    code = json.dumps(_PROBE_CODE)
    return (
        f"python3 -I -S -c 'exec({code})' {' '.join(targets)} > /opt/probe.txt; cat /opt/probe.txt"
    )


async def test_run_line_reaches_no_host_port_nor_other_address(
    settings: Settings, redis: Redis, docker_client: docker.DockerClient, listeners: list[Listener]
) -> None:
    settings = build_settings(settings)
    egress = EgressClient(settings)
    await egress.ensure_running()
    network = EgressBuildNetwork(settings, docker_client, egress)
    images = ImageService(settings, redis, docker_client, build_network=network)
    targets = [f"{item.host}:{item.port}" for item in listeners] + ["192.0.2.1:80", "1.1.1.1:80"]

    def environment(*run: str) -> ResolvedEnvironment:
        spec = EnvironmentSpec.model_validate({"run": list(run)}).with_base(settings.base_image)
        return ResolvedEnvironment(label="probe", spec=spec)

    try:
        probe = probe_line(targets)
        ref = await images.ensure(AgentType.CUSTOM, [], environment=environment(probe))
        report = docker_client.containers.run(
            ref.tag, ["cat", "/opt/probe.txt"], network_mode="none", remove=True
        ).decode()
        lines = dict(line.split(" ", 1) for line in report.splitlines())
        assert set(lines) == set(targets), report
        for result in lines.values():
            direct, proxied = result.split()
            assert direct != "connected", report  # no route but loopback
            assert proxied.startswith("refused:"), report  # the proxy grants none of them
        assert all(not item.accepted for item in listeners), [i.accepted for i in listeners]
        # The proxy refused (403s above); a build has no output stream to report them on.
        assert await redis.keys(f"{settings.key_prefix}:build-*") == []

        # The same line, ending as it decides: the build fails and says which line.
        with pytest.raises(BuildFailed) as failed:
            await images.ensure(AgentType.CUSTOM, [], environment=environment(probe, "exit 3"))
        assert failed.value.message.startswith("wm-env: run line 2 exited with 3"), failed.value
        assert all(not item.accepted for item in listeners)
        assert leftovers(docker_client, settings) == []
        assert await build_grants(egress, settings) == []
    finally:
        await egress.close()


async def test_sweep_removes_what_a_crashed_build_left(
    settings: Settings, docker_client: docker.DockerClient
) -> None:
    egress = EgressClient(settings)
    await egress.ensure_running()
    network = EgressBuildNetwork(settings, docker_client, egress)
    route = network.route("f" * 64, settings.base_image)
    await route.__aenter__()  # a build whose manager dies: never exited
    assert len(leftovers(docker_client, settings)) == 1
    assert await build_grants(egress, settings) == [f"{GRANT_PREFIX}ffffffffffff"]
    removed = await network.sweep(grace_seconds=0)
    assert any(name.startswith("wm-build-ffffffffffff-") for name in removed), removed
    assert f"{GRANT_PREFIX}ffffffffffff" in removed
    assert leftovers(docker_client, settings) == []
    assert await build_grants(egress, settings) == []
    await egress.close()


#: A ``.pth`` in the environment's venv: any interpreter that reads that site-packages runs it.
PTH_LINE = (
    "echo \"import os; open('/tmp/pth-ran-%d' % os.getuid(), 'w').close()\""
    " > $(ls -d /opt/wm-env/lib/python3*/site-packages)/wm-probe.pth"
)


async def test_a_packages_pth_never_runs_in_the_root_wrapper(harness: Harness) -> None:
    """``python3`` on ``PATH`` is the environment's (its venv is first), but the root wrapper
    starts with ``-I -S``: no site-packages, so no ``.pth`` of a package runs as root."""
    settings = build_settings(harness.settings)
    await harness.start(**{k: getattr(settings, k) for k in _BUILD_FIELDS})
    spec = {"pip": ["six"], "run": [PTH_LINE]}
    worker_id, status, record = await create_and_wait(
        harness, spec, "python3 -c 'import six'", ("RUNNING", "FAILED")
    )
    assert status == "RUNNING", record
    input_id = await harness.client.send_input(worker_id, "go")
    events = await harness.events_until_done(worker_id, input_id=input_id, timeout=120)
    assert [e for e in events if e.get("input_id") == input_id][-1]["content"] == "0", events
    code, output = harness.container(worker_id).exec_run(["ls", "/tmp"])
    assert code == 0, output
    ran = output.decode().split()
    assert "pth-ran-1000" in ran, ran  # the agent's python3 is the venv's: the .pth is live
    assert "pth-ran-0" not in ran, ran  # and the wrapper, root, never read it
    assert (await harness.client.request("delete", worker_id=worker_id)).ok
