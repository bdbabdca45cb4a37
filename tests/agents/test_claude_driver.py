"""ClaudeDriver: argv, session persistence and the mapping of recorded stream-json lines."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.agents.helpers import FAKES, FakeConfig, run_driver
from worker_base.agents.base import Event
from worker_base.agents.claude import ClaudeDriver, allowed_tools

SESSION = "0b6c1a52-5d0e-4a43-a3c5-1b5d7d1b2f10"
INIT = json.dumps(
    {
        "type": "system",
        "subtype": "init",
        "cwd": "/workspace",
        "session_id": SESSION,
        "tools": ["Bash", "Read"],
        "model": "claude-sonnet-4-5",
    }
)
ASSISTANT = json.dumps(
    {
        "type": "assistant",
        "message": {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "private"},
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}},
                {"type": "text", "text": "Second block."},
            ],
        },
        "session_id": SESSION,
    }
)
TOOL_RESULT = json.dumps(
    {
        "type": "user",
        "message": {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": "a\nb",
                    "is_error": False,
                }
            ],
        },
        "session_id": SESSION,
    }
)


def result_line(subtype: str = "success", is_error: bool = False) -> str:
    return json.dumps(
        {
            "type": "result",
            "subtype": subtype,
            "is_error": is_error,
            "duration_ms": 2500,
            "num_turns": 3,
            "result": "All done.",
            "session_id": SESSION,
            "total_cost_usd": 0.0421,
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


def test_invocation_unrestricted(config: FakeConfig) -> None:
    driver = ClaudeDriver(config, executable=str(FAKES / "claude"))
    inv = driver.invocation("hello")
    assert inv.argv[0] == sys.executable or Path(inv.argv[0]).name.startswith("python3")
    assert inv.argv[1] == str(FAKES / "claude")
    assert inv.argv[2:6] == ["-p", "--output-format", "stream-json", "--verbose"]
    assert "--resume" not in inv.argv
    assert inv.argv[-2:] == ["--permission-mode", "bypassPermissions"]
    assert "--allowedTools" not in inv.argv
    assert inv.stdin == b"hello"
    assert inv.env == {"CLAUDE_CONFIG_DIR": str(config.state_dir / "claude" / "config")}
    assert (config.state_dir / "claude" / "config").is_dir()


def test_invocation_restricted_rules_and_prompt(tmp_path: Path) -> None:
    cfg = FakeConfig(tmp_path / "s", tmp_path, allowed_commands=["git", "npm test", " "])
    inv = ClaudeDriver(cfg, executable="claude-not-installed").invocation("x")
    assert inv.argv[0] == "claude-not-installed"
    i = inv.argv.index("--allowedTools")
    assert inv.argv[i + 1 : i + 3] == ["Bash(git:*)", "Bash(npm test:*)"]
    assert inv.argv[i + 3] == "--append-system-prompt"
    sentence = inv.argv[i + 4]
    assert "`git`" in sentence
    assert "`npm test`" in sentence
    assert "any other command" in sentence
    assert inv.argv[inv.argv.index("--permission-mode") + 1] == "acceptEdits"


def test_empty_allowlist_forbids_all_commands(tmp_path: Path) -> None:
    cfg = FakeConfig(tmp_path / "s", tmp_path, allowed_commands=[])
    argv = ClaudeDriver(cfg, executable="claude").invocation("x").argv
    assert "--allowedTools" not in argv
    assert "may not run any shell command" in argv[argv.index("--append-system-prompt") + 1]
    assert allowed_tools(["pytest -q"]) == ["Bash(pytest -q:*)"]


def test_well_formed_stream(config: FakeConfig) -> None:
    driver = ClaudeDriver(config, executable="claude")
    driver.invocation("go")
    assert driver.on_stdout(INIT) == []
    assert driver.on_stdout(ASSISTANT) == [
        Event("assistant", "Let me look."),
        Event(
            "tool_use",
            json.dumps(
                {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}},
                separators=(",", ":"),
            ),
        ),
        Event("assistant", "Second block."),
    ]
    [tool_result] = driver.on_stdout(TOOL_RESULT)
    assert tool_result.type == "tool_result"
    assert json.loads(tool_result.content)["tool_use_id"] == "toolu_1"
    assert driver.on_stdout(result_line()) == []  # held until the process has exited
    events = driver.on_exit(0)
    assert [e.type for e in events] == ["result"]
    assert payload_of(events) == {
        "is_error": False,
        "subtype": "success",
        "session_id": SESSION,
        "cost_usd": 0.0421,
        "duration_ms": 2500,
        "num_turns": 3,
        "result": "All done.",
    }


@pytest.mark.parametrize(
    "line",
    [
        "plain text from the CLI",
        '{"type":"assistant","message":{"content":[{"type":"text","te',  # truncated
        "[1, 2, 3]",
        '{"no_type": true}',
        '{"type":"stream_event","event":{}}',
        '{"type":"assistant","message":"not an object"}',
        "",
    ],
)
def test_unreadable_lines_are_stdout(config: FakeConfig, line: str) -> None:
    driver = ClaudeDriver(config, executable="claude")
    assert driver.on_stdout(line) == [Event("stdout", line)]


def test_user_text_is_not_repeated(config: FakeConfig) -> None:
    driver = ClaudeDriver(config, executable="claude")
    line = json.dumps({"type": "user", "message": {"role": "user", "content": "the prompt"}})
    assert driver.on_stdout(line) == []


@pytest.mark.parametrize(
    ("subtype", "is_error", "exit_code", "expect_error", "expect_error_event"),
    [
        ("success", False, 0, False, False),
        ("success", False, 1, True, True),
        ("success", True, 0, True, False),
        ("error_max_turns", False, 0, True, False),
        ("error_during_execution", True, 1, True, False),
    ],
)
def test_error_combinations(
    config: FakeConfig,
    subtype: str,
    is_error: bool,
    exit_code: int,
    expect_error: bool,
    expect_error_event: bool,
) -> None:
    driver = ClaudeDriver(config, executable="claude")
    driver.invocation("go")
    driver.on_stdout(INIT)
    driver.on_stdout(result_line(subtype, is_error))
    events = driver.on_exit(exit_code)
    assert payload_of(events)["is_error"] is expect_error
    assert any(e.type == "error" for e in events) is expect_error_event
    if exit_code:
        assert payload_of(events)["exit_code"] == exit_code


def test_missing_result_is_an_error(config: FakeConfig) -> None:
    driver = ClaudeDriver(config, executable="claude")
    driver.invocation("go")
    driver.on_stdout(INIT)
    events = driver.on_exit(0)
    assert [e.type for e in events] == ["error", "result"]
    payload = payload_of(events)
    assert payload["is_error"] is True
    assert payload["session_id"] == SESSION
    assert "without a result" in str(payload["reason"])


def test_session_survives_a_restart(config: FakeConfig) -> None:
    first = ClaudeDriver(config, executable="claude")
    assert "--resume" not in first.invocation("one").argv
    first.on_stdout(INIT)
    first.on_stdout(result_line())
    first.on_exit(0)
    assert (config.state_dir / "claude" / "session_id").read_text() == SESSION
    again = ClaudeDriver(config, executable="claude")  # a new wrapper process
    argv = again.invocation("two").argv
    assert argv[argv.index("--resume") + 1] == SESSION


def test_result_session_id_is_kept_without_init(config: FakeConfig) -> None:
    driver = ClaudeDriver(config, executable="claude")
    driver.invocation("one")
    driver.on_stdout(result_line())
    driver.on_exit(0)
    argv = driver.invocation("two").argv
    assert argv[argv.index("--resume") + 1] == SESSION


def test_failed_resume_forgets_the_session(config: FakeConfig) -> None:
    driver = ClaudeDriver(config, executable="claude")
    driver.invocation("one")
    driver.on_stdout(INIT)
    driver.on_stdout(result_line())
    driver.on_exit(0)
    driver.invocation("two")  # resumes, but the CLI fails before any init line
    events = driver.on_exit(1)
    assert payload_of(events)["is_error"] is True
    assert "will not be resumed again" in next(e.content for e in events if e.type == "error")
    assert "--resume" not in driver.invocation("three").argv


def test_fake_claude_end_to_end_with_allowlist(config: FakeConfig, tmp_path: Path) -> None:
    cfg = FakeConfig(config.state_dir, config.workdir, allowed_commands=["echo", "git status"])
    driver = ClaudeDriver(cfg, executable=str(FAKES / "claude"))
    code, events = run_driver(driver, cfg, "first")
    assert code == 0
    types = [e.type for e in events]
    assert types == ["assistant", "tool_use", "tool_result", "assistant", "result"]
    assert "turn 1" in events[0].content
    assert "Bash(echo:*), Bash(git status:*)" in events[0].content
    assert json.loads(events[2].content)["content"] == "fake-tool-ok"
    first = payload_of(events)
    assert first["is_error"] is False
    assert first["cost_usd"] == 0.0012
    assert first["num_turns"] == 1

    code, events = run_driver(driver, cfg, "second\nRUN: ls")
    assert code == 0
    assert "turn 2" in events[0].content
    assert payload_of(events)["session_id"] == first["session_id"]
    refused = json.loads(events[2].content)
    assert refused["is_error"] is True
    assert "refused: `ls` is not an allowed command" in refused["content"]

    code, events = run_driver(driver, cfg, "please FAIL")
    assert code == 1
    assert payload_of(events)["is_error"] is True
