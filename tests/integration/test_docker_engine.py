"""A rootless Docker Engine beside a worker (SPEC §9 "Docker inside a worker"), on the real Engine.

The engine image is built through the real environments path (``ImageService.ensure`` of
``ENGINE_ENVIRONMENT``, through the egress service, as ``test_environment_build`` does). A
stand-in worker runs as workers do (``--network none``, no-new-privileges, every capability
dropped, read-only, uid 1000) from the engine image (it has the docker CLI, as the DOCKER
module's image does), and the engine sidecar runs with exactly
``engine_container_options``. Everything is proved through ``docker exec`` into the stand-in
worker, as its agent (uid 1000), with the docker CLI: the engine answers on the shared socket
(and not to the worker's root), a preloaded base runs and builds, ``-v /:/host`` and
``--privileged`` do not expose the host, the host's Engine lists none of the inner containers,
and an inner container reaches the worker's proxy relay (``10.0.2.2:3128``) and nothing else.
"""

from __future__ import annotations

import contextlib
import secrets
import shlex
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import pytest
from docker.models.containers import Container

from tests.integration.test_environment_build import _BUILD_FIELDS, Listener, build_settings
from tests.support.availability import unavailable
from tests.support.docker_cleanup import MANAGER_LABEL
from tests.support.flows import Harness
from tests.support.redis_server import bindable_gateway
from worker_manager.contract.environments import ResolvedEnvironment
from worker_manager.contract.kinds import AgentType
from worker_manager.docker_engine.preload import PreloadError, preload_images, wait_until_ready
from worker_manager.docker_engine.recipe import (
    ENGINE_ENVIRONMENT,
    ENGINE_ENVIRONMENT_LABEL,
    PROXY_URL,
)
from worker_manager.docker_engine.sidecar import (
    EngineVolumes,
    agent_docker_env,
    create_engine_container,
    data_volume_options,
    engine_container_options,
    socket_volume_options,
    worker_mounts,
)
from worker_manager.docker_engine.support import gather_facts, rootless_problem
from worker_manager.egress.grants import PROXY_PORT
from worker_manager.settings import Settings

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.build]

AGENT = "1000"
#: The stand-in for the worker's egress-proxy relay: records each connection, answers a line.
RELAY = (
    "import socket\n"
    f"s = socket.create_server(('127.0.0.1', {PROXY_PORT}))\n"
    "while True:\n"
    "    c, a = s.accept()\n"
    "    open('/tmp/relay-hits', 'a').write(f'{a[0]}\\n')\n"
    "    c.sendall(b'relay\\n'); c.close()\n"
)


@dataclass
class Pair:
    """A stand-in worker and its engine sidecar."""

    worker: Container
    engine: Container
    volumes: EngineVolumes
    ready_seconds: float

    def agent(self, command: str, user: str = AGENT) -> tuple[int, str]:
        """``sh -c command`` in the worker, as its agent (the agent's variables are the
        container's: DOCKER_HOST, DOCKER_CONFIG)."""
        code, out = self.worker.exec_run(["sh", "-c", command], user=user)
        assert isinstance(code, int) and isinstance(out, bytes)
        return code, out.decode(errors="replace")


async def build_engine_image(harness: Harness) -> tuple[str, Settings]:
    """The engine image, through the manager's ImageService and the egress service."""
    settings = build_settings(harness.settings)
    manager = await harness.start(**{k: getattr(settings, k) for k in _BUILD_FIELDS})
    environment = ResolvedEnvironment(
        label=ENGINE_ENVIRONMENT_LABEL, spec=ENGINE_ENVIRONMENT.with_base(settings.base_image)
    )
    ref = await manager.images.ensure(AgentType.CUSTOM, [], environment=environment)
    await harness.stop(manager)  # the rest is synchronous Docker calls
    return ref.tag, settings


@contextlib.contextmanager
def engine_pair(client: docker.DockerClient, settings: Settings, image: str) -> Iterator[Pair]:
    """Start a stand-in worker and its sidecar; remove both and their volumes afterwards."""
    facts = gather_facts(client, settings.container_runtime)
    problem = rootless_problem(facts)
    if problem is not None:
        unavailable(problem)
    unique = f"wmtest-engine-{secrets.token_hex(4)}"
    labels = {MANAGER_LABEL: settings.manager_id, "worker-manager.test": unique}
    volumes = EngineVolumes(data=f"{unique}-data", socket=f"{unique}-socket")
    made: list[Container] = []
    try:
        client.volumes.create(**data_volume_options(volumes.data, labels))
        client.volumes.create(**socket_volume_options(volumes.socket, labels))
        worker = client.containers.create(
            image,
            ["sleep", "infinity"],
            name=f"{unique}-worker",
            labels=labels,
            user="1000:1000",
            network_mode="none",
            security_opt=["no-new-privileges:true"],
            cap_drop=["ALL"],
            read_only=True,
            tmpfs={"/tmp": "rw,nosuid,nodev,size=64m,mode=1777"},
            mounts=worker_mounts(volumes),
            environment=agent_docker_env(),
            init=True,
        )
        made.append(worker)
        worker.start()
        options = engine_container_options(
            settings,
            worker.name or "",
            volumes,
            image=image,
            name=f"{unique}-engine",
            labels=labels,
            apparmor=facts.apparmor,
        )
        engine = create_engine_container(client, options)
        made.append(engine)
        started = time.monotonic()
        engine.start()
        wait_until_ready(client, str(engine.name), timeout=60)
        ready = time.monotonic() - started
        yield Pair(worker, engine, volumes, ready)
    finally:
        for container in reversed(made):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)
        for name in (volumes.data, volumes.socket):
            with contextlib.suppress(docker.errors.NotFound):
                client.volumes.get(name).remove(force=True)


def host_addresses() -> list[str]:
    """Addresses of this host a container could try: the bridge's gateway, the host's own."""
    found = {bindable_gateway() or ""}
    with contextlib.suppress(OSError):
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            found.add(str(info[4][0]))
    return sorted(a for a in found if a and not a.startswith("127."))


async def test_the_agents_engine_runs_builds_and_is_confined(
    harness: Harness, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    image, settings = await build_engine_image(harness)
    base = settings.base_image
    marker_text = f"host-secret-{secrets.token_hex(8)}"
    marker = Path("/tmp") / f"wm-engine-marker-{secrets.token_hex(4)}"
    marker.write_text(marker_text)
    listeners = [Listener(address) for address in host_addresses()]
    try:
        with engine_pair(docker_client, settings, image) as pair:
            print(f"engine ready in {pair.ready_seconds:.2f}s")
            # The engine answers the agent on the shared socket, as uid 1000 ...
            code, out = pair.agent("docker version --format '{{.Server.Version}}'")
            assert code == 0 and out.strip(), out
            code, out = pair.agent("docker info --format '{{.SecurityOptions}}'")
            assert code == 0 and "rootless" in out, out
            # ... and not the worker's root (no DAC_OVERRIDE: the socket's directory is 0700).
            code, out = pair.agent("docker version", user="0")
            assert code != 0 and "permission denied" in out, out

            # Preloading is bounded before anything is sent.
            with pytest.raises(PreloadError, match="WM_DOCKER_PRELOAD_MAX_BYTES allows 1"):
                preload_images(docker_client, str(pair.engine.name), [base], max_bytes=1)
            loaded = preload_images(docker_client, str(pair.engine.name), [base])
            print(f"preloaded {base} ({loaded.bytes} bytes) in {loaded.seconds:.2f}s")
            code, out = pair.agent(f"docker image inspect --format ok {base}")
            assert code == 0 and out.strip() == "ok", out

            started = time.monotonic()
            code, out = pair.agent(f"docker run --rm {base} echo hi")
            print(f"first inner docker run: {time.monotonic() - started:.2f}s")
            assert code == 0 and out.strip() == "hi", out
            # Inner containers get the worker's proxy (the client config's default).
            code, out = pair.agent(f"docker run --rm {base} env")
            assert f"HTTPS_PROXY={PROXY_URL}" in out.splitlines(), out

            # docker build from the preloaded base.
            dockerfile = f"FROM {base}\nRUN echo built-inside > /built\nCMD cat /built\n"
            write = f"printf %s {shlex.quote(dockerfile)} > /tmp/ctx/Dockerfile"
            code, out = pair.agent(
                f"mkdir -p /tmp/ctx && {write} && "
                "docker build -q -t inner-built /tmp/ctx && docker run --rm inner-built"
            )
            assert code == 0 and out.strip().endswith("built-inside"), out

            # -v /:/host is the sidecar's own root in a user namespace, not the host's.
            code, out = pair.agent(f"docker run --rm -v /:/host {base} ls /host/tmp")
            assert code == 0 and marker.name not in out.split(), out
            assert "wm-engine" in out.split()  # the sidecar's /tmp: mounted, but the sidecar's
            code, out = pair.agent(f"docker run --rm -v /:/host {base} cat /host{marker}")
            assert code != 0 and marker_text not in out, out
            # --privileged inside fails (the kernel refuses sysfs), or sees no more.
            code, out = pair.agent(
                f"docker run --rm --privileged -v /:/host {base} cat /host{marker}"
            )
            assert marker_text not in out, out

            # The host's Engine lists none of the inner containers.
            code, out = pair.agent(f"docker run -d --name inner-sleeper {base} sleep 120")
            assert code == 0, out
            inner_id = out.strip()
            host = docker_client.api.containers(all=True)
            assert not [c for c in host if c["Id"] == inner_id], host
            assert not [c for c in host if "/inner-sleeper" in (c.get("Names") or [])]
            assert not docker_client.images.list(name="inner-built")

            # Network: the worker's loopback relay (10.0.2.2 in the engine) and nothing else.
            pair.worker.exec_run(["python3", "-c", RELAY], user=AGENT, detach=True)
            targets = [(a.host, a.port) for a in listeners] + [
                ("10.0.2.2", PROXY_PORT),
                ("1.1.1.1", 80),
            ]
            probe = (
                "import socket\n"
                f"for addr in {targets!r}:\n"
                "    try:\n"
                "        socket.create_connection(addr, 3).close(); print('reached', *addr)\n"
                "    except OSError as exc:\n"
                "        print('not', *addr, type(exc).__name__)\n"
            )
            time.sleep(0.3)  # the relay listens
            code, out = pair.agent(f"docker exec inner-sleeper python3 -c {shlex.quote(probe)}")
            assert code == 0, out
            assert f"reached 10.0.2.2 {PROXY_PORT}" in out, out
            reached = [line for line in out.splitlines() if line.startswith("reached")]
            assert reached == [f"reached 10.0.2.2 {PROXY_PORT}"], out
            code, hits = pair.agent("cat /tmp/relay-hits")
            assert hits.split() == ["127.0.0.1"], hits  # slirp4netns, in the worker's namespace
            assert all(listener.accepted == [] for listener in listeners)
    finally:
        for listener in listeners:
            listener.close()
        marker.unlink(missing_ok=True)


async def test_this_host_can_run_the_engine(docker_client: docker.DockerClient) -> None:
    """The reference host has what the engine needs: no refusal."""
    facts = gather_facts(docker_client, None)
    assert rootless_problem(facts) is None, facts
    assert "seccomp" in facts.security_names()
