"""Agents in real containers: the FACTORY driver and the allowlist shims of CUSTOM workers.

No real ``droid`` can be fetched on these machines, so the FACTORY image is built through the
manager's images overlay (``tests/fakes/images``), whose snippet installs the stream-jsonrpc fake of
``tests/fakes/droid``: everything else (the image build, the wrapper, the driver's argv, the
session kept under ``/home/worker/.wm``, the shims) is the production path. CLAUDE runs the real
CLI: ``test_claude_real.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.flows import Harness

pytestmark = [pytest.mark.docker, pytest.mark.redis]

OVERLAY = (Path(__file__).resolve().parents[1] / "fakes" / "images").resolve()


async def start_worker(harness: Harness, **fields: Any) -> str:
    reply = await harness.client.create(**fields)
    assert reply.ok, reply
    worker_id = reply.worker_id
    assert worker_id is not None
    status = await harness.wait_status(worker_id, "RUNNING", "FAILED", timeout=300)
    record = await harness.redis.hgetall(harness.keys.worker(worker_id))
    assert status == "RUNNING", record
    return worker_id


async def run_input(harness: Harness, worker_id: str, prompt: str) -> list[dict[str, str]]:
    """The events answering one input, in stream order, ``done`` last."""
    input_id = await harness.client.send_input(worker_id, prompt)
    events = await harness.events_until_done(worker_id, input_id=input_id, timeout=90)
    return [e for e in events if e.get("input_id") == input_id]


def types_of(events: list[dict[str, str]]) -> list[str]:
    return [e["type"] for e in events]


def assert_in_order(events: list[dict[str, str]], *wanted: str) -> None:
    """``wanted`` appear as a subsequence of the event types."""
    kinds = iter(types_of(events))
    missing = [w for w in wanted if not any(k == w for k in kinds)]
    assert not missing, f"{wanted} not in order in {types_of(events)}"


def result_of(events: list[dict[str, str]]) -> dict[str, Any]:
    results = [json.loads(e["content"]) for e in events if e["type"] == "result"]
    assert len(results) == 1, events
    payload: dict[str, Any] = results[0]
    return payload


async def delete(harness: Harness, worker_id: str) -> None:
    reply = await harness.client.request("delete", worker_id=worker_id)
    assert reply.ok, reply
    await harness.wait_container_gone(worker_id)


async def test_factory_streams_every_step_and_resumes_its_session(harness: Harness) -> None:
    await harness.start(images_overlay=OVERLAY)
    worker_id = await start_worker(harness, agent_type="FACTORY", instructions="Follow AGENTS.md.")
    first = await run_input(harness, worker_id, "Say hello.")
    assert_in_order(first, "status", "assistant", "tool_use", "tool_result", "result", "done")
    assert first[-1]["content"] == "0"
    tool_use = json.loads(next(e["content"] for e in first if e["type"] == "tool_use"))
    assert tool_use["input"] == {"command": "echo fake-tool-ok"}
    result = result_of(first)
    assert result["is_error"] is False
    session = result["session_id"]
    assert any("at autonomy low" in e["content"] for e in first if e["type"] == "assistant")
    container = harness.container(worker_id)
    code, text = container.exec_run(["cat", "/workspace/AGENTS.md"])
    assert code == 0 and text.decode() == "Follow AGENTS.md."

    second = await run_input(harness, worker_id, "And again.")
    again = result_of(second)
    assert again["session_id"] == session
    await delete(harness, worker_id)


async def test_custom_allowed_commands_are_enforced_in_the_container(harness: Harness) -> None:
    await harness.start()
    worker_id = await start_worker(
        harness,
        agent_type="CUSTOM",
        agent_command=["sh", "-c", 'echo "$WM_PROMPT" | sh'],
        allowed_commands=["ls /workspace", "cat"],
    )
    allowed = await run_input(harness, worker_id, "ls /workspace")
    assert allowed[-1]["content"] == "0", allowed
    assert not [e for e in allowed if e["type"] == "error"], allowed

    forbidden = await run_input(harness, worker_id, "rm -rf /workspace/x")
    assert forbidden[-1]["content"] != "0", forbidden
    errors = [e["content"] for e in forbidden if e["type"] == "error"]
    assert any("refused: `rm -rf /workspace/x`" in e for e in errors), forbidden
    assert any("not an allowed command" in e["content"] for e in forbidden if e["type"] == "stderr")

    # An allowed name with other arguments is still refused (prefix rule), and reported.
    prefix = await run_input(harness, worker_id, "ls /etc")
    assert any("refused: `ls /etc`" in e["content"] for e in prefix if e["type"] == "error")
    await delete(harness, worker_id)
