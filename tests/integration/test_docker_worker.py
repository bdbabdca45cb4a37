"""A ``DOCKER`` worker's own Docker Engine (SPEC §9), through Redis and the manager.

A create with the ``DOCKER`` module gets, with ``WM_DOCKER_MODULE=rootless`` (the default), a
rootless engine beside it as its ``docker`` service; the operator's images (``WM_DOCKER_IMAGES``:
the base) are loaded into it. Through the agent (a shell, uid 1000) and the host's Engine for
ground truth: its own ``docker run`` and ``docker build`` work; ``-v /:/host`` and
``--privileged`` inside do not reach the host's files; the host's Engine lists none of the inner
containers; what it built survives a suspend; everything goes with the worker. Where the
deployment turned the module off, the create is refused with a sentence saying so.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.test_environment_build import HOST_CAS, host_build_egress
from tests.support.flows import Harness
from worker_manager import Client
from worker_manager.contract.labels import LABEL_SERVICE_OF

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.build]

SHELL = json.dumps(["sh", "-c", 'eval "$(cat)"'])


def beside(harness: Harness, worker_id: str) -> list[str]:
    found = harness.docker.containers.list(
        all=True, filters={"label": f"{LABEL_SERVICE_OF}={worker_id}"}
    )
    return [str(c.name) for c in found]


def volumes(harness: Harness, worker_id: str) -> set[str]:
    found = harness.docker.volumes.list(filters={"label": f"worker-manager.worker_id={worker_id}"})
    return {v.name for v in found}


async def until(predicate: Callable[[], bool], timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await asyncio.to_thread(predicate):
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.2)


async def test_a_docker_worker_runs_and_builds_on_an_engine_of_its_own(
    harness: Harness, tmp_path: Path
) -> None:
    base = harness.settings.base_image
    await harness.start(
        build_ca_files=HOST_CAS,
        build_egress=host_build_egress(),
        build_timeout_seconds=900,
        docker_images=[base],
    )
    client = Client(harness.redis, key_prefix=harness.settings.key_prefix)
    worker = await client.create(agent_type="CUSTOM", agent_command=SHELL, modules=["DOCKER"])
    info = await worker.wait_running(timeout=900)
    assert info.services == {"docker": "running"}

    async def sh(line: str, timeout: float = 180) -> tuple[int | None, str]:
        result = await asyncio.wait_for(worker.run(line), timeout)
        return result.exit_code, result.text

    # Its engine, rootless, reached through DOCKER_HOST; the base was loaded into it.
    code, text = await sh("docker info --format '{{json .SecurityOptions}}'")
    assert code == 0 and "rootless" in text, text
    code, text = await sh(f"docker run --rm {base} echo hello from inside")
    assert (code, text) == (0, "hello from inside")
    code, text = await sh(
        "mkdir -p /tmp/ctx && "
        f"printf 'FROM {base}\\nRUN echo built > /built\\nCMD cat /built\\n' > /tmp/ctx/Dockerfile"
        " && docker build -q -t inner-built /tmp/ctx >/dev/null && docker run --rm inner-built"
    )
    assert (code, text) == (0, "built"), text

    # The host's files are not its to mount, privileged or not.
    marker = f"wm-host-marker-{uuid.uuid4().hex}"
    (Path("/tmp") / marker).write_text("host secret")
    try:
        code, text = await sh(
            f"docker run --rm -v /:/host {base} cat /host/tmp/{marker} 2>&1; echo exit=$?"
        )
        assert "host secret" not in text and text.endswith("exit=1"), text
        code, text = await sh(
            f"docker run --rm --privileged -v /:/host {base} cat /host/tmp/{marker} 2>&1; "
            "echo exit=$?"
        )
        assert "host secret" not in text, text
    finally:
        (Path("/tmp") / marker).unlink()
    # The host's Engine sees none of what runs inside.
    name = f"inner-{uuid.uuid4().hex[:8]}"
    code, _ = await sh(f"docker run -d --name {name} {base} sleep 300")
    assert code == 0
    host_names = {c.name for c in harness.docker.containers.list(all=True)}
    assert name not in host_names
    images = {t for i in harness.docker.images.list() for t in i.tags}
    assert "inner-built:latest" not in images

    # Suspended and resumed: its engine's data (the image it built) is kept.
    await worker.suspend()
    await until(lambda: not beside(harness, worker.id))
    assert (await worker.status()).services == {"docker": "stopped"}
    code, text = await sh("docker run --rm inner-built", timeout=600)
    assert (code, text) == (0, "built"), text

    # Gone with the worker: its engine, its volumes.
    await worker.delete()
    await until(lambda: not beside(harness, worker.id))
    await until(lambda: not volumes(harness, worker.id))


async def test_the_docker_module_turned_off_is_refused_with_a_sentence(harness: Harness) -> None:
    manager = await harness.start(docker_module="off")
    reply = await harness.client.request(
        "create", agent_type="CUSTOM", agent_command=SHELL, modules=json.dumps(["DOCKER"])
    )
    assert not reply.ok and reply.error == "invalid_command"
    assert reply.message == (
        "field 'modules': DOCKER: the DOCKER module is off in this deployment "
        "(WM_DOCKER_MODULE=off)"
    )
    # A create's own service may not take the engine's name.
    await harness.stop(manager)
    await harness.start()
    reply = await harness.client.request(
        "create",
        agent_type="CUSTOM",
        agent_command=SHELL,
        modules=json.dumps(["DOCKER"]),
        services=json.dumps([{"name": "docker", "image": "x"}]),
    )
    assert not reply.ok and reply.error == "invalid_command"
    assert reply.message is not None and "the DOCKER module's own engine's" in reply.message
