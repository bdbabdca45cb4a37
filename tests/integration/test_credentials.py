"""Credentials brokered by the egress proxy (SPEC §7): the operator's git token reaches a git
server over HTTPS (a clone and a push from inside a worker), and a FACTORY worker's requests to
Factory's API carry the operator's key, while neither is anywhere inside a container."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from pydantic import SecretStr

from tests.integration.test_agents_docker import OVERLAY
from tests.support.flows import Harness
from tests.support.git_server import GitServer, LocalCA
from tests.support.inside import found_inside
from tests.support.redis_dump import every_value
from worker_manager.core.bridge import docker_bridge_gateway

pytestmark = [pytest.mark.docker, pytest.mark.redis]

#: Runs the prompt as a shell script, in the workspace.
SHELL_AGENT = ["sh", "-c", 'cd /workspace && eval "$(cat)"']


@pytest.fixture
async def https_git(tmp_path: Path) -> AsyncIterator[GitServer]:
    host = docker_bridge_gateway()
    ca = LocalCA(tmp_path / "ca", host)
    root = tmp_path / "repos"
    root.mkdir()
    server = await GitServer(root, host=host, token=f"tok-{secrets.token_hex(12)}", ca=ca).start()
    try:
        yield server
    finally:
        await server.close()


async def run(harness: Harness, worker_id: str, script: str) -> list[dict[str, str]]:
    input_id = await harness.client.send_input(worker_id, script)
    events = await harness.events_until_done(worker_id, input_id=input_id, timeout=120)
    return [e for e in events if e.get("input_id") == input_id]


def lines(events: list[dict[str, str]], kind: str) -> list[str]:
    return [e["content"] for e in events if e["type"] == kind]


async def test_a_git_push_over_https_carries_a_token_no_worker_holds(
    private_egress_dir: Path, harness: Harness, https_git: GitServer
) -> None:
    assert https_git.ca is not None and https_git.token is not None
    token = https_git.token
    first = https_git.create("demo", {"README": "hello\n"})
    target = f"{https_git.host}:{https_git.port}"
    await harness.start(
        egress_run_dir=private_egress_dir,
        git_credentials=SecretStr(json.dumps({target: token})),
        egress_upstream_ca=https_git.ca.ca_pem,
    )
    granted = await harness.client.request(
        "create",
        agent_type="CUSTOM",
        agent_command=json.dumps(SHELL_AGENT),
        egress=json.dumps([target]),
    )
    ungranted = await harness.client.request(
        "create", agent_type="CUSTOM", agent_command=json.dumps(SHELL_AGENT)
    )
    assert granted.ok and ungranted.ok, (granted, ungranted)
    worker, other = str(granted.worker_id), str(ungranted.worker_id)
    for worker_id in (worker, other):
        assert await harness.wait_status(worker_id, "RUNNING", "FAILED") == "RUNNING"

    url = https_git.url("demo")
    events = await run(
        harness,
        worker,
        f"git clone -q {url} demo && cd demo && echo more >> README"
        " && git -c user.name=agent -c user.email=agent@example.com commit -qam more"
        " && git push -q origin main && git rev-parse HEAD",
    )
    assert lines(events, "done") == ["0"], events
    pushed = lines(events, "stdout")[-1]
    # The server has the agent's commit: the push went through, authenticated.
    assert https_git.head("demo") == pushed != first
    basic = "Basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode()
    assert basic in {auth for _m, _p, auth in https_git.requests}
    # The token is nowhere in the container, in its environment or its files (.git/config).
    assert found_inside(harness.container(worker), token) == []

    # A worker whose grant does not name the host reaches nothing, token or not.
    events = await run(harness, other, f"git clone -q {url} demo")
    assert lines(events, "done") != ["0"]
    output = await harness.redis.xrange(harness.keys.output(other))
    assert f"egress denied: {target}" in [f["content"] for _i, f in output if f["type"] == "error"]
    served = len(https_git.requests)

    # Nothing of the token in Redis either.
    assert not [text for text in await every_value(harness.redis) if token in text]
    assert len(https_git.requests) == served


class FakeFactoryApi:
    """Factory's API as far as this test needs: HTTPS, and it records what key it was sent."""

    def __init__(self, ca: LocalCA) -> None:
        self.ca = ca
        self.seen: list[str] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> FakeFactoryApi:
        app = web.Application()
        app.router.add_get("/api/whoami", self._whoami)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "0.0.0.0", 0, ssl_context=self.ca.server_context())
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.port = int(server.sockets[0].getsockname()[1])
        return self

    async def _whoami(self, request: web.Request) -> web.Response:
        self.seen.append(request.headers.get("Authorization", ""))
        return web.Response(text="ok")

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def test_a_factory_worker_spends_the_key_only_through_the_proxy(
    private_egress_dir: Path, harness: Harness, tmp_path: Path
) -> None:
    host = docker_bridge_gateway()
    ca = LocalCA(tmp_path / "ca", host)
    api = await FakeFactoryApi(ca).start()
    key = f"fk-{secrets.token_hex(16)}"
    try:
        await harness.start(
            images_overlay=OVERLAY,
            egress_run_dir=private_egress_dir,
            factory_api_key=SecretStr(key),
            factory_api_host=f"{host}:{api.port}",
            egress_upstream_ca=ca.ca_pem,
        )
        reply = await harness.client.create(agent_type="FACTORY")
        assert reply.ok and reply.worker_id, reply
        worker_id = reply.worker_id
        assert await harness.wait_status(worker_id, "RUNNING", "FAILED", timeout=300) == "RUNNING"
        # The fake droid runs one tool command: a call to Factory's API with its own key.
        call = (
            'python3 -c "import os, urllib.request as u; r = u.Request('
            f"'https://{host}:{api.port}/api/whoami', headers={{'Authorization': "
            "'Bearer ' + os.environ['FACTORY_API_KEY']}); print(u.urlopen(r).read().decode())\""
        )
        events = await run(harness, worker_id, f"RUN: {call}")
        assert lines(events, "done") == ["0"], events
        assert any('"ok' in text or text == "ok" for text in lines(events, "tool_result")), events
        # The API saw the operator's key; the container holds only its placeholder.
        assert api.seen == [f"Bearer {key}"]
        container = harness.container(worker_id)
        env = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])
        assert env["FACTORY_API_KEY"].startswith("wm-") and key not in env.values()
        assert found_inside(container, key) == []
    finally:
        await api.close()
