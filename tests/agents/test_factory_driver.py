"""FactoryDriver: argv, settings, session persistence and the mapping of stream-json lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.agents.helpers import FAKES, FakeConfig, run_driver
from worker_base.agents.base import Event
from worker_base.agents.factory import FactoryDriver

SESSION = "abc-123"
# The lines below are the example from Factory's droid exec documentation (stream-json).
INIT = json.dumps(
    {
        "type": "system",
        "subtype": "init",
        "cwd": "/path/to/dir",
        "session_id": SESSION,
        "tools": ["Read", "Execute"],
        "model": "claude-sonnet-4-5-20250929",
    }
)
USER = json.dumps(
    {
        "type": "message",
        "role": "user",
        "id": "msg-1",
        "text": "run ls command",
        "timestamp": 1762517060816,
        "session_id": SESSION,
    }
)
ASSISTANT = json.dumps(
    {
        "type": "message",
        "role": "assistant",
        "id": "msg-2",
        "text": "I'll run the ls command to list the contents...",
        "timestamp": 1762517062000,
        "session_id": SESSION,
    }
)
TOOL_CALL = json.dumps(
    {
        "type": "tool_call",
        "id": "call-1",
        "messageId": "msg-2",
        "toolId": "Execute",
        "toolName": "Execute",
        "parameters": {"command": "ls -la"},
        "timestamp": 1762517062500,
        "session_id": SESSION,
    }
)
TOOL_RESULT = json.dumps(
    {
        "type": "tool_result",
        "id": "call-1",
        "messageId": "msg-3",
        "toolId": "Execute",
        "isError": False,
        "value": "total 16\ndrwxr-xr-x@ 8 user staff...",
        "timestamp": 1762517063000,
        "session_id": SESSION,
    }
)
COMPLETION = json.dumps(
    {
        "type": "completion",
        "finalText": "The ls command has been executed successfully.",
        "numTurns": 1,
        "durationMs": 3000,
        "session_id": SESSION,
        "timestamp": 1762517064000,
    }
)


@pytest.fixture
def config(tmp_path: Path) -> FakeConfig:
    (tmp_path / "work").mkdir()
    return FakeConfig(state_dir=tmp_path / "state", workdir=tmp_path / "work")


def payload_of(events: list[Event]) -> dict[str, object]:
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
        "--output-format",
        "stream-json",
        "--auto",
        "low",
        "--cwd",
        str(config.workdir),
        "-f",
        str(config.wrapper_dir / "factory-prompt.md"),
    ]
    assert (config.wrapper_dir / "factory-prompt.md").read_text() == "hello -- --auto high"
    assert inv.stdin == b""
    assert inv.env == {"HOME": str(tmp_path / "home")}
    assert not (tmp_path / "home" / ".factory" / "settings.json").exists()  # unrestricted


def test_autonomy_level(tmp_path: Path) -> None:
    cfg = FakeConfig(tmp_path / "s", tmp_path, factory_auto="HIGH")
    argv = FactoryDriver(cfg, executable="droid", home=tmp_path).invocation("x").argv
    assert argv[argv.index("--auto") + 1] == "high"
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


def test_documented_stream(config: FakeConfig, tmp_path: Path) -> None:
    driver = FactoryDriver(config, executable="droid", home=tmp_path)
    driver.invocation("run ls command")
    assert driver.on_stdout(INIT) == []
    assert driver.on_stdout(USER) == []
    assert driver.on_stdout(ASSISTANT) == [
        Event("assistant", "I'll run the ls command to list the contents...")
    ]
    [tool_use] = driver.on_stdout(TOOL_CALL)
    assert tool_use.type == "tool_use"
    assert json.loads(tool_use.content)["parameters"] == {"command": "ls -la"}
    [tool_result] = driver.on_stdout(TOOL_RESULT)
    assert tool_result.type == "tool_result"
    assert json.loads(tool_result.content)["isError"] is False
    assert driver.on_stdout(COMPLETION) == []
    assert payload_of(driver.on_exit(0)) == {
        "is_error": False,
        "session_id": SESSION,
        "duration_ms": 3000,
        "num_turns": 1,
        "result": "The ls command has been executed successfully.",
    }
    argv = driver.invocation("next").argv
    assert argv[argv.index("--session-id") + 1] == SESSION


@pytest.mark.parametrize(
    "line",
    [
        "Warning: something plain",
        '{"type":"completion","finalText":"cut o',
        '{"type":"message","role":"system","text":"?"}',
        '{"type":"message","role":"assistant"}',
        '{"type":"heartbeat"}',
        "42",
    ],
)
def test_unreadable_lines_are_stdout(config: FakeConfig, tmp_path: Path, line: str) -> None:
    driver = FactoryDriver(config, executable="droid", home=tmp_path)
    assert driver.on_stdout(line) == [Event("stdout", line)]


def test_nonzero_exit_after_completion_is_an_error(config: FakeConfig, tmp_path: Path) -> None:
    driver = FactoryDriver(config, executable="droid", home=tmp_path)
    driver.invocation("x")
    driver.on_stdout(INIT)
    driver.on_stdout(COMPLETION)
    events = driver.on_exit(2)
    assert [e.type for e in events] == ["result", "error"]
    assert payload_of(events)["is_error"] is True
    assert payload_of(events)["exit_code"] == 2


def test_no_completion_is_an_error(config: FakeConfig, tmp_path: Path) -> None:
    driver = FactoryDriver(config, executable="droid", home=tmp_path)
    driver.invocation("x")
    events = driver.on_exit(0)
    assert payload_of(events)["is_error"] is True


def test_fake_droid_end_to_end(config: FakeConfig, tmp_path: Path) -> None:
    cfg = FakeConfig(config.state_dir, config.workdir, allowed_commands=["echo"])
    home = tmp_path / "home"
    driver = FactoryDriver(cfg, executable=str(FAKES / "droid"), home=home)
    code, events = run_driver(driver, cfg, "first")
    assert code == 0
    assert [e.type for e in events] == [
        "assistant",
        "tool_use",
        "tool_result",
        "assistant",
        "result",
    ]
    assert "turn 1" in events[0].content
    assert 'commandAllowlist: ["echo"]' in events[0].content
    assert "fake-tool-ok" in json.loads(events[2].content)["value"]
    first = payload_of(events)
    assert first["is_error"] is False

    code, events = run_driver(FactoryDriver(cfg, str(FAKES / "droid"), home), cfg, "RUN: cat /x")
    assert code == 0
    assert "turn 2" in events[0].content
    assert payload_of(events)["session_id"] == first["session_id"]
    result = json.loads(events[2].content)
    assert result["isError"] is True
    assert "refused: `cat /x`" in result["value"]

    code, events = run_driver(driver, cfg, "FAIL now")
    assert code == 1
    assert [e.type for e in events] == ["stderr", "error", "result"]
    assert payload_of(events)["is_error"] is True


def test_reported_cost_counts_against_the_workers_budget(tmp_path: Path) -> None:
    # Droid has no budget flag: the wrapper's ledger is what stops it, from the cost it reports.
    cfg = FakeConfig(tmp_path / "state", tmp_path, max_cost_usd=0.5)
    driver = FactoryDriver(cfg, executable="droid", home=tmp_path)
    assert driver.ledger is not None
    for _ in range(2):
        driver.invocation("go")
        completion = json.loads(COMPLETION)
        driver.on_stdout(json.dumps({**completion, "costUsd": 0.3}))
        payload = payload_of(driver.on_exit(0))
        assert payload["cost_usd"] == 0.3
    assert payload["total_cost_usd"] == 0.6
    assert driver.ledger.exhausted
