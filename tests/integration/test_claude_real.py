"""The real Claude Code CLI in real CLAUDE images, driven through ``worker:commands``.

The image is the production one: the native binary from the pinned ``claude-agent-sdk`` wheel,
copied into the build context by the manager (no Node, no npm, no network in the build). The
model is :mod:`tests.support.fake_anthropic`, scripted by each prompt (``FAKE bash …``), reached
through ``WM_ANTHROPIC_BASE_URL`` as a gateway would be.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from tests.support.fake_anthropic import FakeAnthropic
from tests.support.flows import Harness
from worker_manager.egress.pricing import Usage
from worker_manager.settings import Settings

pytestmark = [pytest.mark.docker, pytest.mark.redis]

API_KEY = "sk-ant-test-not-a-real-key-7f3a"


@pytest.fixture
async def claude(
    private_egress_dir: Path, harness: Harness, fake_anthropic: FakeAnthropic
) -> Harness:
    """Contained CLAUDE workers: the CLI reaches the fake through this test's own gateway."""
    await harness.start(
        egress_run_dir=private_egress_dir,
        anthropic_base_url=fake_anthropic.url,
        anthropic_api_key=SecretStr(API_KEY),
        claude_max_retries=0,  # a failing API answers at once instead of after ~10 retries
        start_timeout_seconds=600,  # the first create downloads the wheel and builds the image
    )
    return harness


async def start_worker(harness: Harness, **fields: Any) -> str:
    reply = await harness.client.create(agent_type="CLAUDE", **fields)
    assert reply.ok, reply
    assert reply.worker_id is not None
    status = await harness.wait_status(reply.worker_id, "RUNNING", "FAILED", timeout=900)
    record = await harness.redis.hgetall(harness.keys.worker(reply.worker_id))
    assert status == "RUNNING", record
    return reply.worker_id


async def run_input(
    harness: Harness, worker_id: str, prompt: str, timeout: float = 90
) -> list[dict[str, str]]:
    input_id = await harness.client.send_input(worker_id, prompt)
    events = await harness.events_until_done(worker_id, input_id=input_id, timeout=timeout)
    return [e for e in events if e.get("input_id") == input_id]


def kinds(events: Iterable[dict[str, str]]) -> list[str]:
    return [e["type"] for e in events]


def of(events: Iterable[dict[str, str]], kind: str) -> list[str]:
    return [e["content"] for e in events if e["type"] == kind]


def result_of(events: list[dict[str, str]]) -> dict[str, Any]:
    results = [json.loads(c) for c in of(events, "result")]
    assert len(results) == 1, kinds(events)
    payload: dict[str, Any] = results[0]
    return payload


def assert_in_order(events: list[dict[str, str]], *wanted: str) -> None:
    remaining = iter(kinds(events))
    missing = [w for w in wanted if not any(k == w for k in remaining)]
    assert not missing, f"{wanted} not in order in {kinds(events)}"


def metered_cost(fake: FakeAnthropic, since: int) -> float:
    """What the gateway must have charged for the answers the fake gave since ``since``."""
    return sum(
        Usage(a.input_tokens, a.output_tokens, model=a.model).cost_usd()
        for a in fake.answered[since:]
    )


async def wait_for_cost(harness: Harness, worker_id: str, expected: float) -> Any:
    """The status reply once the record's ``cost_usd`` is ``expected`` (within 30 s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        reply = await harness.client.request("status", worker_id=worker_id)
        cost = float((reply.details or {}).get("cost_usd", "0"))
        if cost == pytest.approx(expected, abs=1e-6):
            return reply
        if loop.time() > deadline:
            raise AssertionError(f"cost_usd never reached {expected}: {reply}")
        await asyncio.sleep(0.2)


def done_or_stopped(input_id: str) -> Callable[[dict[str, str]], bool]:
    """The end of one input, or the worker stopped before its end (its status event)."""

    def matches(event: dict[str, str]) -> bool:
        if event.get("type") == "done":
            return event.get("input_id") == input_id
        return event.get("type") == "status" and '"worker_status":"STOPPED"' in event["content"]

    return matches


def done_code(events: list[dict[str, str]]) -> int:
    assert events[-1]["type"] == "done", kinds(events)
    return int(events[-1]["content"])


def exec_in(harness: Harness, worker_id: str, command: str, user: str = "1000") -> str:
    # In the agent's working directory and home (the container's own are the wrapper's: root's).
    result = harness.container(worker_id).exec_run(
        ["sh", "-c", command],
        user=user,
        workdir="/workspace",
        environment={"HOME": "/home/worker"} if user != "0" else None,
    )
    output: bytes = result.output
    assert result.exit_code == 0, output
    return output.decode()


def requests_with(fake: FakeAnthropic, text: str) -> list[str]:
    return [r.text() for r in fake.prompts_seen() if text in r.text()]


async def test_tool_call_resume_lost_session_and_cost(
    claude: Harness, fake_anthropic: FakeAnthropic, settings: Settings
) -> None:
    answered_before = len(fake_anthropic.answered)
    worker_id = await start_worker(claude, instructions="Answer like a pirate, marker-9c1e.")
    version = exec_in(claude, worker_id, "claude --version")
    assert "Claude Code" in version
    # No Node.js and no npm in the image: the CLI is one native binary.
    assert exec_in(claude, worker_id, "command -v node npm || true").strip() == ""

    first = await run_input(claude, worker_id, "FAKE bash echo hello-from-$((6*7))")
    assert_in_order(first, "status", "assistant", "tool_use", "tool_result", "result", "done")
    assert done_code(first) == 0
    assert not of(first, "error"), first
    tool_use = json.loads(of(first, "tool_use")[0])
    assert tool_use["name"] == "Bash"
    assert tool_use["input"]["command"] == "echo hello-from-$((6*7))"
    tool_result = json.loads(of(first, "tool_result")[0])
    assert tool_result["content"] == "hello-from-42" and tool_result["is_error"] is False
    result = result_of(first)
    assert result["is_error"] is False and result["subtype"] == "success"
    assert result["cost_usd"] > 0 and result["total_cost_usd"] == result["cost_usd"]
    session = result["session_id"]
    # The instructions reached the model as CLAUDE.md; the key reached it as the API key.
    seen = requests_with(fake_anthropic, "hello-from-$((6*7))")
    assert seen and any("marker-9c1e" in text for text in seen)
    assert any(
        r.headers.get("x-api-key") == API_KEY
        for r in fake_anthropic.prompts_seen()
        if "hello-from" in r.text()
    )

    second = await run_input(claude, worker_id, "FAKE say second-answer")
    assert done_code(second) == 0 and not of(second, "error"), second
    assert of(second, "assistant") == ["second-answer"]
    again = result_of(second)
    assert again["session_id"] == session
    # Resumed: the model was sent the earlier turn, tool result included.
    resumed = requests_with(fake_anthropic, "second-answer")
    assert resumed and "hello-from-42" in resumed[-1]
    # This input's cost, not the session's running total; the worker's total adds up.
    assert again["total_cost_usd"] == pytest.approx(result["cost_usd"] + again["cost_usd"])

    # The transcript behind the session disappears: the input recovers in a new session.
    exec_in(claude, worker_id, "rm -rf /home/worker/.wm/claude/config/projects")
    third = await run_input(claude, worker_id, "FAKE say after-the-loss")
    assert done_code(third) == 0, third
    errors = of(third, "error")
    assert len(errors) == 1 and session in errors[0] and "new session" in errors[0], errors
    recovered = result_of(third)
    assert recovered["is_error"] is False and recovered["session_id"] != session
    fourth = await run_input(claude, worker_id, "FAKE say still-fine")
    assert done_code(fourth) == 0 and not of(fourth, "error")
    assert result_of(fourth)["session_id"] == recovered["session_id"]

    # The worker's spend in its record is the gateway's metering of what the API reported (the
    # agent's own figure is not believed), priced from every answer this worker was given.
    expected = metered_cost(fake_anthropic, answered_before)
    reply = await wait_for_cost(claude, worker_id, expected)
    assert reply.details is not None
    record = await claude.redis.hgetall(claude.keys.worker(worker_id))
    assert API_KEY not in json.dumps(record)


async def test_api_failures_stalls_turn_limits_and_cancel(
    claude: Harness, fake_anthropic: FakeAnthropic
) -> None:
    worker_id = await start_worker(claude, input_timeout_seconds=8, max_turns=1)

    for status in (401, 500):
        events = await run_input(claude, worker_id, f"FAKE status {status}")
        assert done_code(events) != 0, events
        assert result_of(events)["is_error"] is True
        assert any(str(status) in error for error in of(events, "error")), events

    # A stream that never ends: the input timeout stops the run, done 124.
    stalled = await run_input(claude, worker_id, "FAKE stall", timeout=60)
    assert done_code(stalled) == 124, stalled
    assert any("input_timeout_seconds" in e for e in of(stalled, "error")), stalled
    assert result_of(stalled)["is_error"] is True

    # max_turns=1: a second model turn is not taken.
    limited = await run_input(claude, worker_id, "FAKE bash echo one\nFAKE bash echo two")
    assert done_code(limited) != 0
    assert result_of(limited)["subtype"] == "error_max_turns"
    assert "echo two" not in json.dumps(of(limited, "tool_use"))

    # Cancel a stalled run.
    input_id = await claude.client.send_input(worker_id, "FAKE stall")
    await claude.events_until(
        worker_id,
        lambda e: (
            e.get("type") == "status"
            and e.get("content") == "busy"
            and e.get("input_id") == input_id
        ),
    )
    await claude.client.send_input(worker_id, "", kind="cancel")
    events = await claude.events_until_done(worker_id, input_id=input_id, timeout=30)
    mine = [e for e in events if e.get("input_id") == input_id]
    assert done_code(mine) not in (0, 124), mine
    assert any("Cancelled" in e for e in of(mine, "error")), mine

    # And the worker still answers.
    fine = await run_input(claude, worker_id, "FAKE say recovered")
    assert done_code(fine) == 0 and of(fine, "assistant") == ["recovered"]


FORBIDDEN = {
    "git status": "git",
    "rm -rf victim": "rm",
    "grep -r keep victim": "grep",
    "find victim -delete": "find",
    "curl -s {api}/side-effect-curl": "curl",
    "/usr/bin/rm -rf victim": "/usr/bin/rm",
}


async def test_allowed_commands_hold_in_both_layers(
    claude: Harness, fake_anthropic: FakeAnthropic
) -> None:
    worker_id = await start_worker(claude, allowed_commands=["echo"])
    exec_in(claude, worker_id, "mkdir -p victim && echo keep > victim/f")
    # Every run of git is logged (git's own trace2, from the agent's global config): the CLI's
    # own helpers may call it, the agent's `git status` must not reach it.
    exec_in(claude, worker_id, "git config --global trace2.normalTarget /tmp/git-calls")

    allowed = await run_input(claude, worker_id, "FAKE bash echo allowed-ran")
    assert done_code(allowed) == 0, allowed
    assert not of(allowed, "error"), of(allowed, "error")  # no spurious refusals
    assert json.loads(of(allowed, "tool_result")[0])["content"] == "allowed-ran"

    for template, name in FORBIDDEN.items():
        command = template.format(api=fake_anthropic.url)
        events = await run_input(claude, worker_id, f"FAKE bash {command}")
        errors = of(events, "error")
        assert any("refused" in e and command.split()[0] in e for e in errors), (command, events)
        results = " ".join(of(events, "tool_result"))
        assert "victim/f:keep" not in results, (name, results)
    # Nothing forbidden ran: the files are there, no git status, no request from curl.
    assert exec_in(claude, worker_id, "cat victim/f").strip() == "keep"
    calls = exec_in(claude, worker_id, "grep -h ' start ' /tmp/git-calls 2>/dev/null || true")
    assert not [line for line in calls.splitlines() if "git status" in line], calls
    assert not [r for r in fake_anthropic.requests if "side-effect-curl" in r.path]


async def test_budget_stops_the_worker(claude: Harness, fake_anthropic: FakeAnthropic) -> None:
    answered_before = len(fake_anthropic.answered)
    worker_id = await start_worker(claude, max_cost_usd=0.5)
    first = await run_input(claude, worker_id, "FAKE tokens 20000\nFAKE say pricey")
    assert done_code(first) == 0
    spent = metered_cost(fake_anthropic, answered_before)
    assert 0 < spent < 0.5, "the fake's price per run must fit the test's budget once"
    # The gateway lets calls through while the budget is not spent and meters each: once past
    # it, the worker is stopped, whatever the agent says it spent.
    for _ in range(20):
        input_id = await claude.client.send_input(worker_id, "FAKE tokens 20000\nFAKE say more")
        await claude.events_until(
            worker_id, done_or_stopped(input_id), timeout=90, what="done or STOPPED"
        )
        record = await claude.redis.hgetall(claude.keys.worker(worker_id))
        if record["status"] != "RUNNING":
            break
    status = await claude.wait_status(worker_id, "STOPPED", "FAILED", timeout=30)
    record = await claude.redis.hgetall(claude.keys.worker(worker_id))
    assert status == "STOPPED" and record["reason"] == "budget_exceeded", record
    evidence = await claude.redis.hgetall(claude.keys.evidence(worker_id))
    assert evidence["reason"] == "budget_exceeded", evidence
    assert evidence["ended_by"].startswith("watcher (budget"), evidence
    spent = metered_cost(fake_anthropic, answered_before)
    assert spent >= 0.5
    assert float(record["cost_usd"]) == pytest.approx(spent, abs=1e-6)


async def test_a_session_survives_a_suspend(claude: Harness, fake_anthropic: FakeAnthropic) -> None:
    """The transcript is on the worker's home volume and the session id among the wrapper's
    files there: a worker woken by an input resumes the same conversation."""
    worker_id = await start_worker(claude)
    first = await run_input(claude, worker_id, "FAKE say before-the-sleep")
    session = result_of(first)["session_id"]
    reply = await claude.client.request("suspend", worker_id=worker_id)
    assert reply.ok and reply.status == "SUSPENDED", reply
    await claude.wait_container_gone(worker_id)

    woken = await run_input(claude, worker_id, "FAKE say after-the-sleep", timeout=180)
    assert done_code(woken) == 0 and not of(woken, "error"), woken
    assert result_of(woken)["session_id"] == session
    resumed = requests_with(fake_anthropic, "after-the-sleep")
    assert resumed and "before-the-sleep" in resumed[-1]


async def test_a_fork_continues_the_conversation_on_a_thread_of_its_own(
    claude: Harness, fake_anthropic: FakeAnthropic
) -> None:
    """SPEC §10: the copy's first input reaches the API with the source's earlier turn; the
    copy's session is forked (a new id: ``--fork-session``), so the source's next turn does not
    carry the copy's, nor the copy's the source's."""
    source = await start_worker(claude)
    first = await run_input(claude, source, "FAKE say source-before-fork")
    session = result_of(first)["session_id"]
    reply = await claude.client.request("fork", worker_id=source, count="1")
    assert reply.ok, reply
    (copy,) = json.loads(reply.to_fields()["worker_ids"])
    assert await claude.wait_status(copy, "RUNNING", "FAILED", timeout=300) == "RUNNING"

    forked = await run_input(claude, copy, "FAKE say copy-after-fork", timeout=180)
    assert done_code(forked) == 0 and not of(forked, "error"), forked
    copy_session = result_of(forked)["session_id"]
    assert copy_session != session
    (seen,) = requests_with(fake_anthropic, "copy-after-fork")[-1:]
    assert "source-before-fork" in seen

    later = await run_input(claude, source, "FAKE say source-after-fork")
    assert result_of(later)["session_id"] == session
    (seen,) = requests_with(fake_anthropic, "source-after-fork")[-1:]
    assert "source-before-fork" in seen and "copy-after-fork" not in seen
    again = await run_input(claude, copy, "FAKE say copy-again")
    assert result_of(again)["session_id"] == copy_session
    (seen,) = requests_with(fake_anthropic, "copy-again")[-1:]
    assert "copy-after-fork" in seen and "source-after-fork" not in seen


async def test_two_workers_from_a_snapshot_both_continue_its_thread(
    claude: Harness, fake_anthropic: FakeAnthropic
) -> None:
    """SPEC §10: a snapshot outlives its worker; each create from it starts with its thread
    (the first request carries the snapshot's turn), on a session of its own."""
    source = await start_worker(claude)
    first = await run_input(claude, source, "FAKE say kept-in-the-snapshot")
    session = result_of(first)["session_id"]
    taken = await claude.client.request("snapshot", worker_id=source, name="briefed")
    assert taken.ok, taken
    assert (await claude.client.request("delete", worker_id=source)).ok
    sessions = set()
    for i in range(2):
        reply = await claude.client.create(agent_type="CLAUDE", from_snapshot="briefed")
        assert reply.ok and reply.worker_id, reply
        worker = reply.worker_id
        assert await claude.wait_status(worker, "RUNNING", "FAILED", timeout=300) == "RUNNING"
        events = await run_input(claude, worker, f"FAKE say from-the-snapshot-{i}", timeout=180)
        assert done_code(events) == 0 and not of(events, "error"), events
        sessions.add(result_of(events)["session_id"])
        (seen,) = requests_with(fake_anthropic, f"from-the-snapshot-{i}")[-1:]
        assert "kept-in-the-snapshot" in seen
        if i == 1:
            assert "from-the-snapshot-0" not in seen  # the first one's turn is its own
        assert (await claude.client.request("delete", worker_id=worker)).ok
    assert len(sessions) == 2 and session not in sessions
    assert (await claude.client.request("delete_snapshot", name="briefed")).ok
