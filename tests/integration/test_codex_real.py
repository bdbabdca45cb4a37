"""The real Codex CLI in real CODEX images, driven through ``worker:commands``.

The image is the production one: the native binary from OpenAI's pinned
``openai-codex-cli-bin`` wheel, copied into the build context by the manager. The worker is
contained (``WM_EGRESS=on``): its ``OPENAI_BASE_URL`` is the LLM gateway and its
``OPENAI_API_KEY`` a per-worker token; the gateway (this test's own egress service) adds the
operator's key and forwards to :mod:`tests.support.fake_openai`, scripted by each prompt.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from tests.integration.test_claude_real import (
    assert_in_order,
    done_code,
    done_or_stopped,
    exec_in,
    of,
    result_of,
    run_input,
    wait_for_cost,
)
from tests.support.fake_openai import FakeOpenAI
from tests.support.flows import Harness
from tests.support.redis_server import bindable_gateway
from worker_manager.egress.pricing import OpenAIUsage

pytestmark = [pytest.mark.docker, pytest.mark.redis]

OPERATOR_KEY = "sk-proj-operator-key-for-codex-tests-5be2"
MODEL = "gpt-5-codex"


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """The scripted Responses API, on an address the host's egress service reaches."""
    server = FakeOpenAI(host=bindable_gateway() or "127.0.0.1").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def codex(private_egress_dir: Path, harness: Harness, fake_openai: FakeOpenAI) -> Harness:
    """Contained CODEX workers: the CLI reaches the fake through this test's own gateway."""
    await harness.start(
        egress_run_dir=private_egress_dir,
        openai_base_url=fake_openai.url,
        openai_api_key=SecretStr(OPERATOR_KEY),
        openai_model=MODEL,
        codex_max_retries=0,  # a failing API answers at once instead of after ~5 retries
        start_timeout_seconds=600,  # the first create downloads the wheel and builds the image
    )
    return harness


async def start_worker(harness: Harness, **fields: Any) -> str:
    reply = await harness.client.create(agent_type="CODEX", **fields)
    assert reply.ok, reply
    assert reply.worker_id is not None
    status = await harness.wait_status(reply.worker_id, "RUNNING", "FAILED", timeout=900)
    record = await harness.redis.hgetall(harness.keys.worker(reply.worker_id))
    assert status == "RUNNING", record
    return reply.worker_id


def metered_cost(fake: FakeOpenAI, since: int) -> float:
    """What the gateway must have charged for the answers the fake gave since ``since``."""
    return sum(
        OpenAIUsage(a.input_tokens, a.cached_tokens, a.output_tokens, model=a.model).cost_usd()
        for a in fake.answered[since:]
    )


def requests_with(fake: FakeOpenAI, text: str) -> list[str]:
    return [r.text() for r in fake.prompts_seen() if text in r.text()]


async def test_a_turn_a_thread_a_suspend_and_the_key(
    codex: Harness, fake_openai: FakeOpenAI
) -> None:
    answered_before = len(fake_openai.answered)
    worker_id = await start_worker(codex, instructions="Answer tersely, marker-4d2a.")
    assert "codex-cli" in exec_in(codex, worker_id, "codex --version")

    first = await run_input(codex, worker_id, "FAKE shell echo hello-from-$((6*7))")
    assert_in_order(first, "status", "tool_use", "tool_result", "assistant", "result", "done")
    assert done_code(first) == 0, first
    assert not of(first, "error"), first
    tool_use = json.loads(of(first, "tool_use")[0])
    assert tool_use["type"] == "command_execution"
    assert "echo hello-from-$((6*7))" in tool_use["command"]
    tool_result = json.loads(of(first, "tool_result")[0])
    assert tool_result["exit_code"] == 0 and tool_result["output"] == "hello-from-42\n"
    result = result_of(first)
    assert result["is_error"] is False and result["num_turns"] == 2
    assert result["cost_usd"] > 0 and result["total_cost_usd"] == result["cost_usd"]
    assert result["duration_ms"] >= 0
    thread = result["session_id"]
    # The instructions reached the model as AGENTS.md.
    assert any("marker-4d2a" in text for text in requests_with(fake_openai, "hello-from"))

    second = await run_input(codex, worker_id, "FAKE say second-answer")
    assert done_code(second) == 0 and not of(second, "error"), second
    assert of(second, "assistant") == ["second-answer"]
    again = result_of(second)
    assert again["session_id"] == thread
    # Resumed: the model was sent the earlier turn, the command's output included.
    resumed = requests_with(fake_openai, "second-answer")
    assert resumed and "hello-from-42" in resumed[-1]
    assert again["total_cost_usd"] == pytest.approx(result["cost_usd"] + again["cost_usd"])

    # The operator's key is in no environment and no file of the container ...
    environs = exec_in(codex, worker_id, "cat /proc/[0-9]*/environ | tr '\\0' '\\n'", user="0")
    assert "OPENAI_API_KEY=wm-" in environs and OPERATOR_KEY not in environs
    found = exec_in(
        codex,
        worker_id,
        f"grep -rls {OPERATOR_KEY} /home /workspace /tmp /etc /run /root /var || true",
        user="0",
    )
    assert found.strip() == "", found
    # ... yet every request the API got carried it, and nothing else.
    assert fake_openai.requests
    assert {r.headers.get("Authorization") for r in fake_openai.requests} == {
        f"Bearer {OPERATOR_KEY}"
    }
    # Codex called only what the gateway forwards.
    assert {call for call in fake_openai.calls} <= {
        ("POST", "/v1/responses"),
        ("GET", "/v1/models"),
    }

    # A suspend and a wake: the same thread.
    reply = await codex.client.request("suspend", worker_id=worker_id)
    assert reply.ok and reply.status == "SUSPENDED", reply
    await codex.wait_container_gone(worker_id)
    woken = await run_input(codex, worker_id, "FAKE say after-the-sleep", timeout=180)
    assert done_code(woken) == 0 and not of(woken, "error"), woken
    assert result_of(woken)["session_id"] == thread
    after = requests_with(fake_openai, "after-the-sleep")
    assert after and "second-answer" in after[-1]

    # Codex reached for nothing by itself (its connectors, plugins and update checks are off):
    # the proxy refused nothing on this worker's behalf.
    output = await codex.redis.xrange(codex.keys.output(worker_id))
    denied = [f["content"] for _, f in output if f.get("content", "").startswith("egress denied")]
    assert not denied, denied

    # The record's spend is the gateway's metering of what the API reported.
    await wait_for_cost(codex, worker_id, metered_cost(fake_openai, answered_before))


async def test_api_failures_turn_limits_timeouts_and_cancel(
    codex: Harness, fake_openai: FakeOpenAI
) -> None:
    worker_id = await start_worker(codex, input_timeout_seconds=60, max_turns=1)

    for status in (401, 500):
        calls = len(fake_openai.calls)
        events = await run_input(codex, worker_id, f"FAKE status {status}", timeout=120)
        # WM_CODEX_MAX_RETRIES=0: asked once, not retried (Codex's default is ~5, 6-15 s).
        asked = [call for call in fake_openai.calls[calls:] if call == ("POST", "/v1/responses")]
        assert len(asked) == 1, fake_openai.calls[calls:]
        assert done_code(events) != 0, events
        assert result_of(events)["is_error"] is True
        errors = of(events, "error")
        assert errors and not of(events, "assistant"), events
        if status == 401:  # Codex words a 5xx as "high demand", without its status
            assert any("401" in error for error in errors), errors

    # max_turns=1: the answer to the first tool call is not asked for.
    limited = await run_input(codex, worker_id, "FAKE shell echo one\nFAKE shell echo two")
    assert done_code(limited) != 0, limited
    assert result_of(limited)["subtype"] == "error_max_turns"
    assert "echo two" not in json.dumps(of(limited, "tool_use"))

    # Cancel a stalled run.
    input_id = await codex.client.send_input(worker_id, "FAKE stall")
    await codex.events_until(
        worker_id,
        lambda e: (
            e.get("type") == "status"
            and e.get("content") == "busy"
            and e.get("input_id") == input_id
        ),
    )
    await codex.client.send_input(worker_id, "", kind="cancel")
    events = await codex.events_until_done(worker_id, input_id=input_id, timeout=30)
    mine = [e for e in events if e.get("input_id") == input_id]
    assert done_code(mine) not in (0, 124), mine
    assert any("Cancelled" in e for e in of(mine, "error")), mine
    assert result_of(mine)["is_error"] is True

    fine = await run_input(codex, worker_id, "FAKE say recovered")
    assert done_code(fine) == 0 and of(fine, "assistant") == ["recovered"], fine


async def test_a_stalled_input_times_out(codex: Harness, fake_openai: FakeOpenAI) -> None:
    worker_id = await start_worker(codex, input_timeout_seconds=8)
    stalled = await run_input(codex, worker_id, "FAKE stall", timeout=60)
    assert done_code(stalled) == 124, stalled
    assert any("input_timeout_seconds" in e for e in of(stalled, "error")), stalled
    assert result_of(stalled)["is_error"] is True


async def test_allowed_commands_are_refused_by_name(
    codex: Harness, fake_openai: FakeOpenAI
) -> None:
    worker_id = await start_worker(codex, allowed_commands=["echo"])
    exec_in(codex, worker_id, "cd /workspace && mkdir -p victim && echo keep > victim/f")

    allowed = await run_input(codex, worker_id, "FAKE shell echo allowed-ran")
    assert done_code(allowed) == 0, allowed
    # No spurious refusals: Codex's own git calls are not the agent's commands.
    assert not of(allowed, "error"), of(allowed, "error")
    assert json.loads(of(allowed, "tool_result")[0])["output"] == "allowed-ran\n"
    # Codex's layer: the model was told which commands it may run.
    assert "may run only these commands" in requests_with(fake_openai, "allowed-ran")[-1]

    # The shims refuse what is not allowed, by name, with the shell's "cannot run" (126).
    for command in ("git status", "grep -r keep victim", "touch victim/new"):
        events = await run_input(codex, worker_id, f"FAKE shell {command}")
        errors = of(events, "error")
        name = command.split()[0]
        assert any("refused" in e and name in e for e in errors), (command, events)
        result = json.loads(of(events, "tool_result")[0])
        assert result["exit_code"] == 126, result
    # Codex's own guard refuses `rm -rf` before any shell: named on the output as well.
    events = await run_input(codex, worker_id, "FAKE shell rm -rf victim")
    assert any(e.startswith("refused by Codex") and "rm -rf" in e for e in of(events, "error"))
    assert exec_in(codex, worker_id, "cat /workspace/victim/f").strip() == "keep"
    assert exec_in(codex, worker_id, "ls /workspace/victim").split() == ["f"]


async def test_a_budget_stops_the_worker(codex: Harness, fake_openai: FakeOpenAI) -> None:
    answered_before = len(fake_openai.answered)
    worker_id = await start_worker(codex, max_cost_usd=0.5)
    first = await run_input(codex, worker_id, "FAKE tokens 150000\nFAKE say pricey")
    assert done_code(first) == 0, first
    spent = metered_cost(fake_openai, answered_before)
    assert 0 < spent < 0.5, "the fake's price per run must fit the test's budget once"
    for _ in range(10):
        input_id = await codex.client.send_input(worker_id, "FAKE tokens 150000\nFAKE say more")
        await codex.events_until(
            worker_id, done_or_stopped(input_id), timeout=120, what="done or STOPPED"
        )
        record = await codex.redis.hgetall(codex.keys.worker(worker_id))
        if record["status"] != "RUNNING":
            break
    status = await codex.wait_status(worker_id, "STOPPED", "FAILED", timeout=30)
    record = await codex.redis.hgetall(codex.keys.worker(worker_id))
    assert status == "STOPPED" and record["reason"] == "budget_exceeded", record
    spent = metered_cost(fake_openai, answered_before)
    assert spent >= 0.5
    assert float(record["cost_usd"]) == pytest.approx(spent, abs=1e-6)
