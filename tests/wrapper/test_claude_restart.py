"""The real Claude Code CLI under a real wrapper process that restarts between two inputs.

In a container a wrapper restart is a container restart, which the manager treats as the
worker's end; here the wrapper runs on the host (as the manager would start it, with its own
ACL user), so it can be stopped and started again over the same state directory. As root the
CLI refuses ``bypassPermissions``, so the worker is restricted (``dontAsk``), as most are.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.support.fake_anthropic import FakeAnthropic
from tests.wrapper.conftest import OutputTail, Worker, is_event
from worker_manager.images.agent_binaries import AgentBinary

pytestmark = [pytest.mark.redis, pytest.mark.docker]


def claude_env(binary: AgentBinary, fake: FakeAnthropic) -> dict[str, str]:
    return {
        "WM_AGENT_TYPE": "CLAUDE",
        "WM_ALLOWED_COMMANDS": '["echo"]',
        "PATH": f"{binary.path.parent}{os.pathsep}{os.environ['PATH']}",
        "ANTHROPIC_BASE_URL": fake.url,
        "ANTHROPIC_API_KEY": "sk-ant-test-wrapper-restart",
        "CLAUDE_CODE_MAX_RETRIES": "0",
    }


async def answer(worker: Worker, tail: OutputTail, prompt: str) -> list[dict[str, str]]:
    input_id = await worker.push(prompt)
    events = await tail.until(is_event("done", input_id=input_id), timeout=90)
    return [e for e in events if e["input_id"] == input_id]


def result_of(events: list[dict[str, str]]) -> dict[str, object]:
    [content] = [e["content"] for e in events if e["type"] == "result"]
    payload: dict[str, object] = json.loads(content)
    return payload


async def test_a_restarted_wrapper_resumes_the_session_and_keeps_the_spend(
    worker: Worker, claude_binary: AgentBinary, fake_anthropic: FakeAnthropic
) -> None:
    env = claude_env(claude_binary, fake_anthropic)
    tail = worker.tail()
    first_wrapper = await worker.start(["unused"], **env)
    await tail.until(is_event("status", "ready"), timeout=30)
    first = await answer(worker, tail, "FAKE bash echo before-restart-31")
    assert first[-1]["content"] == "0", first
    assert not [e for e in first if e["type"] == "error"], first
    before = result_of(first)
    assert await first_wrapper.stop() == 0

    await worker.start(["unused"], **env)
    await tail.until(is_event("status", "ready"), timeout=30)
    second = await answer(worker, tail, "FAKE say after-restart")
    assert second[-1]["content"] == "0", second
    after = result_of(second)
    assert after["session_id"] == before["session_id"]
    sent = [r.text() for r in fake_anthropic.prompts_seen() if "after-restart" in r.text()]
    assert sent and "before-restart-31" in sent[-1]  # the earlier turn went to the model again
    assert after["total_cost_usd"] == pytest.approx(
        float(before["cost_usd"]) + float(after["cost_usd"])  # type: ignore[arg-type]
    )
