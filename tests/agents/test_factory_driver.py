"""FactoryDriver over droid's stream-jsonrpc protocol.

The first half drives the driver alone (its requests, its mapping of notifications, its
answers to droid's requests, the budget); the second runs the REAL wrapper (``python -m
worker_base`` against redis-server, its own ACL user) with ``WM_AGENT_TYPE=FACTORY`` and the
fake droid (``tests/fakes/droid``, which speaks exactly the SDK's schemas) as ``droid``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.agents.helpers import FAKES, FakeConfig
from tests.wrapper.conftest import OutputTail, Worker, is_event
from worker_base.agents import droid_rpc
from worker_base.agents.base import Event
from worker_base.agents.factory import FactoryDriver
from worker_base.agents.factory_pricing import factory_cost_usd, factory_price_of

SESSION = "3f1c-session"


class Stdin:
    """The runner's stdin channel, recorded."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []
        self.closed = False

    def send(self, line: str) -> None:
        assert not self.closed
        self.lines.append(json.loads(line))

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def config(tmp_path: Path) -> FakeConfig:
    (tmp_path / "work").mkdir()
    return FakeConfig(state_dir=tmp_path / "state", workdir=tmp_path / "work")


def notification(payload: dict[str, Any]) -> str:
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "factoryApiVersion": "1.0.0",
            "factoryProtocolVersion": droid_rpc.PROTOCOL_VERSION,
            "type": "notification",
            "method": "droid.session_notification",
            "params": {"sessionId": SESSION, "notification": payload},
        }
    )


def answer(request_id: str, result: dict[str, Any] | None = None, **error: Any) -> str:
    fields: dict[str, Any] = {"error": error} if error else {"result": result or {}}
    return json.dumps({"jsonrpc": "2.0", "type": "response", "id": request_id, **fields})


def droid_request(method: str, params: dict[str, Any], request_id: str = "d-1") -> str:
    message = {"jsonrpc": "2.0", "type": "request", "id": request_id, "method": method}
    return json.dumps({**message, "params": params})


def session_result(session_id: str = SESSION, model: str = "claude-sonnet-4-5") -> dict[str, Any]:
    settings = {"modelId": model, "reasoningEffort": "none", "autonomyLevel": "low"}
    return {"sessionId": session_id, "session": {"messages": []}, "settings": settings}


def usage(inputs: int, outputs: int) -> dict[str, int]:
    return {
        "inputTokens": inputs,
        "outputTokens": outputs,
        "cacheCreationTokens": 0,
        "cacheReadTokens": 0,
        "thinkingTokens": 0,
    }


def completed(reason: str = "completed", tokens: dict[str, int] | None = None) -> str:
    return notification(
        {
            "type": "agent_turn_completed",
            "reason": reason,
            "tokenUsage": tokens or usage(1000, 100),
            "durationMs": 1200,
        }
    )


def start(driver: FactoryDriver, prompt: str) -> Stdin:
    invocation = driver.invocation(prompt)
    assert invocation.converse
    stdin = Stdin()
    driver.converse(stdin)
    return stdin


def open_session(driver: FactoryDriver, prompt: str = "hello") -> Stdin:
    """A first input up to its add_user_message."""
    stdin = start(driver, prompt)
    assert driver.on_stdout(answer(stdin.lines[0]["id"], session_result())) == []
    assert stdin.lines[-1]["method"] == "droid.add_user_message"
    assert driver.on_stdout(answer(stdin.lines[-1]["id"])) == []
    return stdin


def payload_of(events: list[Event]) -> dict[str, Any]:
    results = [e for e in events if e.type == "result"]
    assert len(results) == 1, events
    value = json.loads(results[0].content)
    assert isinstance(value, dict)
    return value


def test_invocation(config: FakeConfig, tmp_path: Path) -> None:
    driver = FactoryDriver(config, executable=str(FAKES / "droid"), home=tmp_path / "home")
    inv = driver.invocation("hello -- --auto high")
    assert inv.argv[1] == str(FAKES / "droid")
    assert inv.argv[2:] == [
        "exec",
        "--input-format",
        "stream-jsonrpc",
        "--output-format",
        "stream-jsonrpc",
    ]
    assert inv.stdin is None and inv.converse
    assert inv.env == {"HOME": str(tmp_path / "home")}
    assert not (tmp_path / "home" / ".factory" / "settings.json").exists()  # unrestricted


def test_first_input_initializes_then_sends_the_prompt(config: FakeConfig, tmp_path: Path) -> None:
    cfg = FakeConfig(config.state_dir, config.workdir, factory_auto="HIGH")
    driver = FactoryDriver(cfg, executable="droid", home=tmp_path)
    stdin = start(driver, "do it\nRUN: x")
    [init] = stdin.lines
    assert init["method"] == "droid.initialize_session"
    assert init["params"] == {
        "machineId": "worker-manager",
        "cwd": str(config.workdir),
        "autonomyLevel": "high",
    }
    assert init["type"] == "request" and init["jsonrpc"] == "2.0"
    driver.on_stdout(answer(init["id"], session_result()))
    assert stdin.lines[1]["method"] == "droid.add_user_message"
    assert stdin.lines[1]["params"] == {"text": "do it\nRUN: x"}
    assert not stdin.closed
    assert driver.session_id == SESSION
    with pytest.raises(ValueError, match="factory_auto"):
        FactoryDriver(FakeConfig(tmp_path / "s", tmp_path, factory_auto="max"), home=tmp_path)


def test_settings_merge_existing_keys(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".factory").mkdir(parents=True)
    (home / ".factory" / "settings.json").write_text('{"model": "opus", "commandAllowlist": ["x"]}')
    cfg = FakeConfig(tmp_path / "s", tmp_path, allowed_commands=["git", "npm test"])
    FactoryDriver(cfg, executable="droid", home=home).invocation("x")
    settings = json.loads((home / ".factory" / "settings.json").read_text())
    assert settings == {"model": "opus", "commandAllowlist": ["git", "npm test"]}


def test_a_turn_becomes_events_and_a_result(config: FakeConfig, tmp_path: Path) -> None:
    driver = FactoryDriver(config, executable="droid", home=tmp_path)
    stdin = open_session(driver)
    tool_use = {"type": "tool_use", "id": "call-1", "name": "Execute", "input": {"command": "ls"}}
    user = {"id": "m1", "role": "user", "content": [{"type": "text", "text": "hello"}]}
    assistant = {
        "id": "m2",
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "hm"},
            {"type": "text", "text": "I'll look"},
            tool_use,
        ],
    }
    assert driver.on_stdout(notification({"type": "create_message", "message": user})) == []
    events = driver.on_stdout(notification({"type": "create_message", "message": assistant}))
    assert [e.type for e in events] == ["assistant", "tool_use"]
    assert json.loads(events[1].content) == tool_use
    # The same tool use announced again (tool_call) is reported once.
    assert driver.on_stdout(notification({"type": "tool_call", "toolUse": tool_use})) == []
    result = {"type": "tool_result", "messageId": "m2", "toolUseId": "call-1", "content": "a b"}
    [tool_result] = driver.on_stdout(notification({**result, "isError": False}))
    assert tool_result.type == "tool_result"
    assert json.loads(tool_result.content)["content"] == "a b"
    quiet = {"type": "assistant_text_delta", "messageId": "m3", "blockIndex": 0, "textDelta": "D"}
    assert driver.on_stdout(notification(quiet)) == []
    final = {"id": "m3", "role": "assistant", "content": [{"type": "text", "text": "Done."}]}
    driver.on_stdout(notification({"type": "create_message", "message": final}))
    assert not stdin.closed
    assert driver.on_stdout(completed()) == []
    assert stdin.closed  # the turn is over: droid exits at the end of its input
    payload = payload_of(driver.on_exit(0))
    cost = factory_cost_usd("claude-sonnet-4-5", usage(1000, 100))
    assert payload == {
        "is_error": False,
        "subtype": "completed",
        "session_id": SESSION,
        "duration_ms": 1200,
        "result": "Done.",
        "model": "claude-sonnet-4-5",
        "usage": usage(1000, 100),
        "cost_usd": round(cost, 6),
        "total_cost_usd": round(cost, 6),
    }


def test_a_turn_that_did_not_complete_is_an_error(config: FakeConfig, tmp_path: Path) -> None:
    driver = FactoryDriver(config, executable="droid", home=tmp_path)
    open_session(driver)
    events = driver.on_stdout(completed("model_authentication_failed"))
    assert [e.type for e in events] == ["error"]
    assert "model_authentication_failed" in events[0].content
    payload = payload_of(driver.on_exit(0))
    assert payload["is_error"] is True and payload["subtype"] == "model_authentication_failed"
    # Without agent_turn_completed: an error result, whatever the exit code.
    open_session(driver)
    events = driver.on_exit(0)
    assert payload_of(events)["is_error"] is True
    assert "without a result" in events[0].content


def test_a_later_input_loads_the_session(config: FakeConfig, tmp_path: Path) -> None:
    driver = FactoryDriver(config, executable="droid", home=tmp_path)
    open_session(driver)
    driver.on_stdout(completed())
    driver.on_exit(0)
    # A new driver (a restarted wrapper) continues from the id among the private files.
    again = FactoryDriver(config, executable="droid", home=tmp_path)
    stdin = start(again, "more")
    assert stdin.lines[0]["method"] == "droid.load_session"
    assert stdin.lines[0]["params"] == {"sessionId": SESSION}


def test_an_unknown_session_starts_a_new_one(config: FakeConfig, tmp_path: Path) -> None:
    driver = FactoryDriver(config, executable="droid", home=tmp_path)
    open_session(driver)
    driver.on_stdout(completed())
    driver.on_exit(0)
    stdin = start(driver, "more")
    load = stdin.lines[0]
    events = driver.on_stdout(answer(load["id"], code=-32004, message="Session not found"))
    assert [e.type for e in events] == ["error"]
    assert f"no longer has session {SESSION}" in events[0].content
    assert stdin.lines[1]["method"] == "droid.initialize_session"
    driver.on_stdout(answer(stdin.lines[1]["id"], session_result("new-session")))
    assert stdin.lines[2]["params"] == {"text": "more"}
    driver.on_stdout(completed())
    assert payload_of(driver.on_exit(0))["session_id"] == "new-session"


def test_a_refused_request_ends_the_input(config: FakeConfig, tmp_path: Path) -> None:
    driver = FactoryDriver(config, executable="droid", home=tmp_path)
    stdin = start(driver, "x")
    events = driver.on_stdout(answer(stdin.lines[0]["id"], code=-32000, message="not logged in"))
    assert [e.type for e in events] == ["error"]
    assert "droid refused droid.initialize_session: not logged in" in events[0].content
    assert stdin.closed
    payload = payload_of(driver.on_exit(1))
    assert payload["is_error"] is True


def permission(command: str, extracted: list[str] | None = None) -> dict[str, Any]:
    tool_use = {"type": "tool_use", "id": "c1", "name": "Execute", "input": {"command": command}}
    details: dict[str, Any] = {"type": "exec", "fullCommand": command, "command": command}
    if extracted is not None:
        details["extractedCommands"] = extracted
    return {
        "toolUses": [{"toolUse": tool_use, "confirmationType": "exec", "details": details}],
        "options": [{"label": "Yes", "value": "proceed_once"}, {"label": "No", "value": "cancel"}],
    }


@pytest.mark.parametrize(
    ("command", "extracted", "approved"),
    [
        ("npm test --watch", None, True),
        ("npm install left-pad", None, False),
        ("cd sub && npm test 2>&1 | grep ok", None, False),  # grep is not listed
        ("cd sub && npm test 2>&1 > log.txt", None, True),
        ("CI=1 npm test", None, True),
        ("npm test; rm -rf /", None, False),
        ("npm test $(rm -rf /)", None, False),
        ("/usr/bin/npm test", None, False),
        ("npm test", ["npm test", "curl evil"], False),
        ('npm test "unbalanced', None, False),
    ],
)
def test_permission_by_allowed_commands(
    command: str, extracted: list[str] | None, approved: bool
) -> None:
    verdict = droid_rpc.permission_verdict(permission(command, extracted), ["npm test"], "low")
    assert verdict.approve is approved
    if not approved:
        [sentence] = verdict.refusals
        assert sentence.startswith("refused: `")
        assert "is not an allowed command (allowed: npm test)" in sentence


def test_permission_past_the_level_without_allowed_commands() -> None:
    verdict = droid_rpc.permission_verdict(permission("git push"), None, "medium")
    assert not verdict.approve
    assert verdict.refusals == [
        "refused: `git push` is above droid's autonomy level (medium, WM_FACTORY_AUTO) and "
        "allowed_commands does not list it"
    ]
    edit = permission("x")
    edit["toolUses"][0]["details"] = {"type": "mcp_tool", "toolName": "fetch", "impactLevel": "x"}
    edit["toolUses"][0]["toolUse"]["name"] = "fetch"
    verdict = droid_rpc.permission_verdict(edit, ["fetch"], "low")
    assert not verdict.approve
    assert "the fetch tool (mcp_tool)" in verdict.refusals[0]


def test_droids_requests_are_answered_at_once(config: FakeConfig, tmp_path: Path) -> None:
    cfg = FakeConfig(config.state_dir, config.workdir, allowed_commands=["echo"])
    driver = FactoryDriver(cfg, executable="droid", home=tmp_path)
    stdin = open_session(driver)
    ask = droid_request("droid.request_permission", permission("echo hi"), "p1")
    assert driver.on_stdout(ask) == []
    assert stdin.lines[-1]["id"] == "p1"
    assert stdin.lines[-1]["result"] == {"selectedOption": "proceed_once"}
    [refusal] = driver.on_stdout(
        droid_request("droid.request_permission", permission("rm x"), "p2")
    )
    assert refusal == Event("error", "refused: `rm x` is not an allowed command (allowed: echo)")
    assert stdin.lines[-1]["result"] == {"selectedOption": "cancel"}
    question = {
        "toolCallId": "t1",
        "questions": [{"index": 1, "topic": "T", "question": "Which db?", "options": ["a"]}],
    }
    [said] = driver.on_stdout(droid_request("droid.ask_user", question, "q1"))
    assert said.type == "error" and said.content.endswith("cancelled: Which db?")
    assert stdin.lines[-1]["result"] == {"cancelled": True, "answers": []}
    odd = droid_request("droid.something_new", {}, "n1")
    assert driver.on_stdout(odd) == [Event("stdout", odd)]
    assert stdin.lines[-1]["error"]["code"] == -32601
    assert not stdin.closed


@pytest.mark.parametrize(
    "line",
    [
        "Warning: something plain",
        '{"jsonrpc":"2.0","type":"notification","method":"droid.session_notif',
        '{"type":"completion","finalText":"stream-json is not this protocol"}',
        '{"jsonrpc":"2.0","type":"response","id":"nobody","result":{}}',
        '{"jsonrpc":"2.0","type":"notification","method":"droid.session_notification"}',
        '{"jsonrpc":"2.0","type":"notification","method":"x","params":{"notification":{}}}',
        '{"jsonrpc":"2.0","type":"request","method":"no id"}',
        "42",
        "[]",
    ],
)
def test_unreadable_lines_are_stdout(config: FakeConfig, tmp_path: Path, line: str) -> None:
    driver = FactoryDriver(config, executable="droid", home=tmp_path)
    open_session(driver)
    assert driver.on_stdout(line) == [Event("stdout", line)]


def test_pricing() -> None:
    assert factory_price_of("claude-opus-4-1-20250805").output == 75.0
    assert factory_price_of("gpt-5-codex").input == 1.25
    unknown = factory_price_of("custom:some-model")
    assert unknown == factory_price_of(None) and unknown.output == 120.0  # the dearest row
    tokens = {**usage(1_000_000, 1_000_000), "thinkingTokens": 1_000_000, "cacheReadTokens": 10}
    # Sonnet: 3 per million in, 15 out (thinking counted as output too), 0.3 a cache read.
    assert factory_cost_usd("claude-sonnet-4-5", tokens) == pytest.approx(3 + 30 + 0.000003)
    assert factory_cost_usd("x", {"inputTokens": -5, "outputTokens": True}) == 0


def test_tokens_count_against_the_workers_budget(tmp_path: Path) -> None:
    # 1000 in and 100 out on Sonnet: 0.0045 USD a turn.
    cfg = FakeConfig(tmp_path / "state", tmp_path, max_cost_usd=0.008)
    driver = FactoryDriver(cfg, executable="droid", home=tmp_path)
    assert driver.ledger is not None
    for _ in range(2):
        open_session(driver)
        driver.on_stdout(completed())
        payload = payload_of(driver.on_exit(0))
        assert payload["cost_usd"] == 0.0045
    assert payload["total_cost_usd"] == 0.009
    assert driver.ledger.exhausted


# --- the real wrapper against the fake droid --------------------------------------------------

pytestmark_redis = pytest.mark.redis


def factory_env(worker: Worker, **extra: str) -> dict[str, str]:
    bin_dir = worker.tmp / "droid-bin"
    bin_dir.mkdir(exist_ok=True)
    link = bin_dir / "droid"
    if not link.exists():
        link.symlink_to(FAKES / "droid")
    home = worker.tmp / "home"
    home.mkdir(exist_ok=True)
    return {
        "WM_AGENT_TYPE": "FACTORY",
        "WM_AGENT_HOME": str(home),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        **extra,
    }


async def started(worker: Worker, **extra: str) -> OutputTail:
    tail = worker.tail()
    await worker.start(["unused"], **factory_env(worker, **extra))
    await tail.until(is_event("status", "ready"), timeout=20)
    return tail


async def run_input(worker: Worker, tail: OutputTail, prompt: str) -> list[dict[str, str]]:
    input_id = await worker.push(prompt)
    events = await tail.until(is_event("status", "idle", input_id), timeout=30)
    return [e for e in events if e["input_id"] == input_id]


def kinds(events: list[dict[str, str]]) -> list[str]:
    return [e["type"] for e in events]


def result_of(events: list[dict[str, str]]) -> dict[str, Any]:
    [content] = [e["content"] for e in events if e["type"] == "result"]
    payload: dict[str, Any] = json.loads(content)
    return payload


def done_of(events: list[dict[str, str]]) -> str:
    [code] = [e["content"] for e in events if e["type"] == "done"]
    return code


def errors_of(events: list[dict[str, str]]) -> list[str]:
    return [e["content"] for e in events if e["type"] == "error"]


@pytestmark_redis
async def test_wrapper_continues_the_session_across_inputs_and_restarts(worker: Worker) -> None:
    tail = await started(worker, WM_FACTORY_AUTO="medium")
    first = await run_input(worker, tail, "first")
    assert kinds(first) == [
        "status",
        "assistant",
        "tool_use",
        "tool_result",
        "assistant",
        "result",
        "done",
        "status",
    ], first
    assert "turn 1 of session" in first[1]["content"] and "autonomy medium" in first[1]["content"]
    assert "fake-tool-ok" in json.loads(first[3]["content"])["content"]
    result = result_of(first)
    assert result["is_error"] is False and result["subtype"] == "completed"
    session = result["session_id"]
    assert result["usage"]["inputTokens"] == 100
    assert result["cost_usd"] > 0
    second = await run_input(worker, tail, "second")
    assert f"turn 2 of session {session} at autonomy medium" in second[1]["content"]
    assert result_of(second)["session_id"] == session
    assert done_of(second) == "0"

    # A new wrapper over the same state (a resumed worker) loads the same session.
    assert await worker.processes[0].stop() == 0
    await worker.start(["unused"], **factory_env(worker, WM_FACTORY_AUTO="medium"))
    await tail.until(is_event("status", "ready"), timeout=20)
    third = await run_input(worker, tail, "third")
    assert f"turn 3 of session {session}" in third[1]["content"]
    assert result_of(third)["total_cost_usd"] == pytest.approx(3 * result["cost_usd"])


@pytestmark_redis
async def test_wrapper_answers_permission_by_allowed_commands(worker: Worker) -> None:
    tail = await started(worker, WM_ALLOWED_COMMANDS='["echo"]')
    approved = await run_input(worker, tail, "PERMIT: echo approved-run")
    assert done_of(approved) == "0"
    assert errors_of(approved) == []
    [tool_result] = [e for e in approved if e["type"] == "tool_result"]
    assert "approved-run" in json.loads(tool_result["content"])["content"]
    assert result_of(approved)["is_error"] is False

    refused = await run_input(worker, tail, "PERMIT: touch refused-file")
    assert errors_of(refused)[0] == (
        "refused: `touch refused-file` is not an allowed command (allowed: echo)"
    )
    [tool_result] = [e for e in refused if e["type"] == "tool_result"]
    assert json.loads(tool_result["content"])["isError"] is True
    result = result_of(refused)
    assert result["is_error"] is True and result["subtype"] == "permission_rejected"
    assert not (worker.workdir / "refused-file").exists()
    # The shims still refuse underneath what droid runs without asking.
    shimmed = await run_input(worker, tail, "RUN: cat /etc/hostname")
    assert any("refused: `cat /etc/hostname`" in e for e in errors_of(shimmed))


@pytestmark_redis
async def test_wrapper_refuses_past_the_autonomy_level_when_unrestricted(worker: Worker) -> None:
    tail = await started(worker)
    events = await run_input(worker, tail, "PERMIT: touch past-level")
    assert "is above droid's autonomy level (low, WM_FACTORY_AUTO)" in errors_of(events)[0]
    assert not (worker.workdir / "past-level").exists()
    assert done_of(events) == "0"  # droid exited normally; the result says the turn failed
    assert result_of(events)["is_error"] is True


@pytestmark_redis
async def test_wrapper_answers_ask_user_with_a_cancel(worker: Worker) -> None:
    tail = await started(worker)
    events = await run_input(worker, tail, "ASK: Which database should I use?")
    [said] = errors_of(events)
    assert said.endswith("it was told the question was cancelled: Which database should I use?")
    assistant = [e["content"] for e in events if e["type"] == "assistant"]
    assert "The question was cancelled" in assistant[0]
    assert result_of(events)["is_error"] is False
    assert done_of(events) == "0"


@pytestmark_redis
async def test_wrapper_recovers_an_unknown_session(worker: Worker) -> None:
    tail = await started(worker)
    first = await run_input(worker, tail, "first")
    lost = result_of(first)["session_id"]
    (worker.tmp / "home" / ".factory" / "fake-sessions" / lost).unlink()  # droid forgot it
    second = await run_input(worker, tail, "second")
    [said] = errors_of(second)
    assert f"Droid no longer has session {lost}" in said and "new session" in said
    assert "turn 1 of session" in next(e for e in second if e["type"] == "assistant")["content"]
    fresh = result_of(second)["session_id"]
    assert fresh != lost and result_of(second)["is_error"] is False
    assert done_of(second) == "0"
    third = await run_input(worker, tail, "third")
    assert f"turn 2 of session {fresh}" in third[1]["content"]


@pytestmark_redis
async def test_wrapper_stops_a_turn_past_its_timeout(worker: Worker) -> None:
    tail = await started(worker, WM_INPUT_TIMEOUT_SECONDS="1")
    began = time.monotonic()
    events = await run_input(worker, tail, "RUN: sleep 30")
    assert time.monotonic() - began < 10
    assert done_of(events) == "124"
    errors = errors_of(events)
    assert any("input_timeout_seconds (1 s)" in e for e in errors)
    assert any("droid exited with code 124 without a result" in e for e in errors)
    assert result_of(events)["is_error"] is True
    # The next input runs as usual, in the same session.
    after = await run_input(worker, tail, "again")
    assert done_of(after) == "0" and "turn 2 of session" in after[1]["content"]


@pytestmark_redis
async def test_wrapper_cancels_a_turn(worker: Worker) -> None:
    tail = await started(worker)
    input_id = await worker.push("RUN: sleep 30")
    await tail.until(is_event("tool_use", input_id=input_id), timeout=20)
    began = time.monotonic()
    cancel = await worker.push(type_="cancel")
    events = await tail.until(is_event("status", "idle", input_id), timeout=10)
    assert time.monotonic() - began < 5
    assert ("done", str(128 + signal.SIGTERM)) in [(e["type"], e["content"]) for e in events]
    assert any(cancel in e for e in errors_of(events))
    assert result_of(events)["is_error"] is True


@pytestmark_redis
async def test_wrapper_survives_malformed_lines(worker: Worker) -> None:
    tail = await started(worker)
    events = await run_input(worker, tail, "GARBAGE")
    stdout = [e["content"] for e in events if e["type"] == "stdout"]
    assert "plain text, not JSON" in stdout
    assert "[1, 2, 3]" in stdout
    pieces = [line for line in stdout if set(line) == {"x"}]
    assert sum(map(len, pieces)) == 200_000 and max(map(len, pieces)) <= 64 * 1024
    assert any("no_such_notification" in line for line in stdout)
    assert any("droid.no_such_method" in line for line in stdout)  # answered, and shown
    assert result_of(events)["is_error"] is False  # the turn went on to its end
    assert done_of(events) == "0"
    assert "the client accepted an unknown request" not in [
        e["content"] for e in events if e["type"] == "stderr"
    ]


@pytestmark_redis
async def test_wrapper_stops_taking_input_past_the_budget(worker: Worker) -> None:
    # The fake's model is unknown to the table: the dearest row (15 in, 120 out per million),
    # 100 in and 20 out = 0.0039 a turn.
    tail = await started(worker, WM_MAX_COST_USD="0.005")
    first = await run_input(worker, tail, "one")
    assert result_of(first)["cost_usd"] == 0.0039
    second = await run_input(worker, tail, "two")
    assert result_of(second)["total_cost_usd"] == 0.0078
    assert any("budget" in e for e in errors_of(second))
    third = await run_input(worker, tail, "three")
    assert "result" not in kinds(third)
    assert done_of(third) == "1"
