"""Modules shape the image: a worker built with GIT and CURL has both, one built without has no
curl (and git only because the bootstrapped base carries it: a worker's repository is checked
out with it). The GIT+CURL image runs ``apt-get`` in its build (Debian mirrors must be reachable),
so the first run takes a minute or more; later runs of the same shape reuse the image."""

from __future__ import annotations

import json

import pytest

from tests.support.flows import Harness

pytestmark = [pytest.mark.docker, pytest.mark.redis]

PROBE = ["sh", "-c", "command -v git; command -v curl; git --version && curl --version"]


async def probe(harness: Harness, modules: list[str]) -> tuple[str, list[str]]:
    """Create a CUSTOM worker with ``modules``, run the probe once; (done code, stdout)."""
    reply = await harness.client.create(
        agent_type="CUSTOM", agent_command=PROBE, modules=modules or None
    )
    assert reply.ok, reply
    worker_id = reply.worker_id
    assert worker_id is not None
    status = await harness.wait_status(worker_id, "RUNNING", "FAILED", timeout=900)
    record = await harness.redis.hgetall(harness.keys.worker(worker_id))
    assert status == "RUNNING", record
    input_id = await harness.client.send_input(worker_id, "probe")
    events = await harness.events_until_done(worker_id, input_id=input_id)
    mine = [e for e in events if e.get("input_id") == input_id]
    stdout = [e["content"] for e in mine if e["type"] == "stdout"]
    spec = json.loads(
        await harness.redis.hget(harness.keys.image(record["image_hash"]), "spec") or "{}"
    )
    if spec:  # built by this manager: the modules are part of what the hash covers
        assert spec["modules"] == sorted(modules)
    deleted = await harness.client.request("delete", worker_id=worker_id)
    assert deleted.ok, deleted
    return mine[-1]["content"], stdout


async def test_git_and_curl_only_where_asked_for(harness: Harness) -> None:
    await harness.start(build_timeout_seconds=1200)
    code, stdout = await probe(harness, ["GIT", "CURL"])
    assert code == "0", stdout
    assert "/usr/bin/git" in stdout and "/usr/bin/curl" in stdout
    assert any(line.startswith("git version ") for line in stdout)
    assert any(line.startswith("curl ") for line in stdout)

    code, stdout = await probe(harness, [])
    assert code != "0"
    assert not [line for line in stdout if line.endswith("/curl")], stdout
