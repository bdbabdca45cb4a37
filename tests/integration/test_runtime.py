"""WM_CONTAINER_RUNTIME: a contained worker under gVisor (runsc) works like one under runc."""

from __future__ import annotations

import json

import docker
import pytest

from tests.support.availability import unavailable
from tests.support.flows import Harness

pytestmark = [pytest.mark.docker, pytest.mark.redis]


def _has_runsc(client: docker.DockerClient) -> bool:
    return "runsc" in (client.info().get("Runtimes") or {})


async def test_a_worker_runs_under_gvisor(harness: Harness) -> None:
    if not _has_runsc(harness.docker):
        unavailable(
            "the Docker Engine has no runsc runtime (scripts/register-runsc.sh registers "
            "Debian's runsc)"
        )
    await harness.start(container_runtime="runsc")
    reply = await harness.client.request(
        "create", agent_type="CUSTOM", agent_command=json.dumps(["sh", "-c", "cat; uname -a"])
    )
    assert reply.ok, reply
    worker_id = str(reply.worker_id)
    assert await harness.wait_status(worker_id, "RUNNING", "FAILED") == "RUNNING"
    container = harness.container(worker_id)
    assert container is not None
    assert container.attrs["HostConfig"]["Runtime"] == "runsc"
    assert container.attrs["HostConfig"]["NetworkMode"] == "none"
    input_id = await harness.client.send_input(worker_id, "under gvisor\n")
    events = await harness.events_until_done(worker_id, input_id=input_id)
    mine = [e for e in events if e.get("input_id") == input_id]
    stdout = [e["content"] for e in mine if e["type"] == "stdout"]
    assert stdout[0] == "under gvisor"
    assert mine[-1]["content"] == "0"
    assert (await harness.client.request("delete", worker_id=worker_id)).ok
