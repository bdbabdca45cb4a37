"""The real Claude Code CLI through the LLM gateway, on the host, against the scripted API.

In a worker the CLI reaches the gateway through a relay to ``gateway.sock``; here the gateway's
app is served on a loopback TCP port instead (the same handler, resolved by that address), so
the CLI binary from the pinned wheel can run directly on the host. What is proven is what only
the real CLI can show: that it works with a worker token as its ``ANTHROPIC_API_KEY``, and that
a spent budget reaches the person reading its output as the gateway's own words, and that what
it calls is on the gateway's allow-list (it meets no refusal).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import secrets
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from pydantic import SecretStr
from redis.asyncio import Redis

from tests.support.availability import unavailable
from tests.support.fake_anthropic import FakeAnthropic
from worker_base.agents.claude import QUIET_ENV
from worker_manager.core.keys import Keys
from worker_manager.egress.gateway import GatewayWorker, LlmGateway
from worker_manager.egress.routes import ANTHROPIC_ROUTES, PathVerdict, judge
from worker_manager.images import agent_binaries
from worker_manager.images.agent_binaries import AgentBinary, AgentBinaryError
from worker_manager.settings import Settings

pytestmark = [pytest.mark.redis]

OPERATOR_KEY = "sk-ant-operator-key-for-the-cli-test-93d1"
BUDGET_USD = 0.5


@pytest.fixture(scope="module")
def host_claude() -> AgentBinary:
    """The pinned wheel's CLI for this host's architecture (downloaded once per machine)."""
    try:
        return agent_binaries.claude_binary(Settings(_env_file=None), platform.machine())  # type: ignore[call-arg]
    except AgentBinaryError as exc:
        unavailable(f"the Claude Code binary cannot be had: {exc}")


@dataclass
class TcpGateway:
    url: str
    worker: GatewayWorker
    home: Path

    def usage_key(self) -> str:
        return Keys(self.worker.key_prefix).usage(self.worker.worker_id)


@pytest.fixture
async def tcp_gateway(
    settings: Settings, redis: Redis, fake_anthropic: FakeAnthropic
) -> AsyncIterator[TcpGateway]:
    worker = GatewayWorker(
        worker_id=f"w-{secrets.token_hex(4)}",
        key_prefix=settings.key_prefix,
        token=f"wm-gw-{secrets.token_urlsafe(24)}",
        max_cost_usd=BUDGET_USD,
    )
    served: dict[str, GatewayWorker] = {}
    gateway = LlmGateway(
        redis=redis,
        upstream_url=fake_anthropic.url,
        api_key=SecretStr(OPERATOR_KEY),
        oauth_token=None,
        resolve=served.get,
    )
    runner = web.AppRunner(gateway.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    port = int(server.sockets[0].getsockname()[1])
    served[f"127.0.0.1:{port}"] = worker
    with tempfile.TemporaryDirectory(prefix="wm-gw-cli-") as home:
        try:
            yield TcpGateway(f"http://127.0.0.1:{port}", worker, Path(home))
        finally:
            await runner.cleanup()
            await gateway.close()


def cli_env(binary: AgentBinary, gateway: TcpGateway) -> dict[str, str]:
    """What a CLAUDE worker's CLI would have, with the gateway as its API: no operator key."""
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ANTHROPIC_", "CLAUDE_", "WM_")) and k != "HOME"
    }
    return {
        **inherited,
        **QUIET_ENV,
        "HOME": str(gateway.home),
        "CLAUDE_CONFIG_DIR": str(gateway.home / "config"),
        "ANTHROPIC_BASE_URL": gateway.url,
        "ANTHROPIC_API_KEY": gateway.worker.token,
        "CLAUDE_CODE_MAX_RETRIES": "0",
        "PATH": f"{binary.path.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def run_cli(binary: AgentBinary, gateway: TcpGateway, prompt: str) -> tuple[int, list[Any]]:
    done = subprocess.run(
        [str(binary.path), "-p", "--output-format", "stream-json", "--verbose"],
        input=prompt.encode(),
        capture_output=True,
        env=cli_env(binary, gateway),
        cwd=gateway.home,
        timeout=180,
        check=False,
    )
    events = [
        json.loads(line) for line in done.stdout.decode().splitlines() if line.startswith("{")
    ]
    return done.returncode, events


def result_of(events: list[Any]) -> dict[str, Any]:
    [result] = [e for e in events if e.get("type") == "result"]
    assert isinstance(result, dict)
    return result


async def test_the_real_cli_works_through_the_gateway_until_its_budget_is_spent(
    host_claude: AgentBinary,
    tcp_gateway: TcpGateway,
    fake_anthropic: FakeAnthropic,
    redis: Redis,
) -> None:
    marker = secrets.token_hex(6)
    calls = len(fake_anthropic.calls)
    refused = [
        REGISTRY.get_sample_value("wm_gateway_requests_total", {"outcome": outcome}) or 0.0
        for outcome in ("not_allowed", "bad_path", "refused_body", "too_many")
    ]
    # 190 000 Sonnet input tokens: $0.57, more than the $0.50 budget after one call.
    code, events = await asyncio.to_thread(
        run_cli, host_claude, tcp_gateway, f"FAKE tokens 190000\nFAKE say gateway-ok-{marker}"
    )
    result = result_of(events)
    assert code == 0 and result["is_error"] is False, events
    assert result["result"] == f"gateway-ok-{marker}"
    seen = [r for r in list(fake_anthropic.requests) if marker in r.text()]
    assert seen and all(r.headers.get("x-api-key") == OPERATOR_KEY for r in seen)
    assert not [r for r in seen for v in r.headers.values() if tcp_gateway.worker.token in v]
    # The gateway's allow-lists (paths, bodies, betas) are what the CLI sends: no refusal.
    assert fake_anthropic.calls[calls:]
    assert all(
        judge(ANTHROPIC_ROUTES, method, target) is PathVerdict.ALLOWED
        for method, target in fake_anthropic.calls[calls:]
    ), fake_anthropic.calls[calls:]
    assert refused == [
        REGISTRY.get_sample_value("wm_gateway_requests_total", {"outcome": outcome}) or 0.0
        for outcome in ("not_allowed", "bad_path", "refused_body", "too_many")
    ]
    usage = await redis.hgetall(tcp_gateway.usage_key())
    assert int(usage["requests"]) >= 1
    assert float(usage["cost_usd"]) >= BUDGET_USD

    code, events = await asyncio.to_thread(
        run_cli, host_claude, tcp_gateway, f"FAKE say after-the-budget-{marker}"
    )
    result = result_of(events)
    assert code != 0 and result["is_error"] is True, events
    assert result.get("api_error_status") == 400
    assert "worker-manager: this worker's budget of $0.50 is spent" in result["result"]
    assert "it takes no more API calls" in result["result"]
    assert not [
        r for r in list(fake_anthropic.requests) if f"after-the-budget-{marker}" in r.text()
    ]
