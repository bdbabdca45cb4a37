"""ClaudeDriver: argv, sessions, money and the mapping of stream-json lines, without the CLI.

The real CLI is driven end to end in ``tests/integration/test_claude_real.py``; these cover the
shapes it cannot be made to print on demand (truncated lines, odd combinations) and the rules in
isolation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.agents.helpers import FakeConfig
from worker_base.agents.base import Event
from worker_base.agents.claude import FILE_TOOLS, LOST_SESSION, ClaudeDriver, allowed_tools

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


def result_line(
    subtype: str = "success",
    is_error: bool = False,
    total: float = 0.0421,
    session: str = SESSION,
    **extra: object,
) -> str:
    return json.dumps(
        {
            "type": "result",
            "subtype": subtype,
            "is_error": is_error,
            "duration_ms": 2500,
            "num_turns": 3,
            "result": "All done.",
            "session_id": session,
            "total_cost_usd": total,
            **extra,
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
    driver = ClaudeDriver(config, executable="claude-not-installed")
    inv = driver.invocation("hello")
    assert inv.argv[:5] == [
        "claude-not-installed",
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
    ]
    assert "--resume" not in inv.argv
    assert "--max-turns" not in inv.argv and "--max-budget-usd" not in inv.argv
    assert inv.argv[-2:] == ["--permission-mode", "bypassPermissions"]
    assert "--allowedTools" not in inv.argv
    assert inv.stdin == b"hello"
    assert inv.env["CLAUDE_CONFIG_DIR"] == str(config.state_dir / "claude" / "config")
    assert inv.env["DISABLE_AUTOUPDATER"] == "1"
    assert inv.shell_prefix_env == "CLAUDE_CODE_SHELL_PREFIX"
    assert (config.state_dir / "claude" / "config").is_dir()


def test_turn_limit_and_remaining_budget_are_passed(tmp_path: Path) -> None:
    cfg = FakeConfig(tmp_path / "s", tmp_path, max_turns=7, max_cost_usd=1.0)
    driver = ClaudeDriver(cfg, executable="claude")
    argv = driver.invocation("x").argv
    assert argv[argv.index("--max-turns") + 1] == "7"
    assert argv[argv.index("--max-budget-usd") + 1] == "1"
    driver.on_stdout(result_line())  # the session cost 0.0421 so far
    driver.on_exit(0)
    argv = driver.invocation("y").argv
    assert argv[argv.index("--max-budget-usd") + 1] == "0.9579"


def test_invocation_restricted_rules_and_prompt(tmp_path: Path) -> None:
    cfg = FakeConfig(tmp_path / "s", tmp_path, allowed_commands=["git", "npm test", " "])
    inv = ClaudeDriver(cfg, executable="claude-not-installed").invocation("x")
    assert inv.argv[0] == "claude-not-installed"
    i = inv.argv.index("--allowedTools")
    assert inv.argv[i + 1 : i + 3] == ["Bash(git:*)", "Bash(npm test:*)"]
    assert inv.argv[i + 3 : i + 7] == list(FILE_TOOLS)
    assert inv.argv[i + 7] == "--append-system-prompt"
    sentence = inv.argv[i + 8]
    assert "`git`" in sentence
    assert "`npm test`" in sentence
    assert "any other command" in sentence
    # dontAsk: the CLI itself refuses what no rule allows (acceptEdits would let rm through).
    assert inv.argv[inv.argv.index("--permission-mode") + 1] == "dontAsk"


def test_empty_allowlist_forbids_all_commands(tmp_path: Path) -> None:
    cfg = FakeConfig(tmp_path / "s", tmp_path, allowed_commands=[])
    argv = ClaudeDriver(cfg, executable="claude").invocation("x").argv
    tools = argv[argv.index("--allowedTools") + 1 : argv.index("--append-system-prompt")]
    assert tools == list(FILE_TOOLS)
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
        "total_cost_usd": 0.0421,
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
    assert (config.wrapper_dir / "private" / "claude-session").read_text() == SESSION
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


def test_lost_session_asks_for_one_more_attempt(config: FakeConfig) -> None:
    driver = ClaudeDriver(config, executable="claude")
    driver.invocation("one")
    driver.on_stdout(INIT)
    driver.on_stdout(result_line())
    driver.on_exit(0)
    argv = driver.invocation("two")
    assert SESSION in argv.argv
    # What the real CLI prints when the transcript is gone (2.1.327).
    driver.on_stderr(f"{LOST_SESSION}: {SESSION}")
    gone = result_line("error_during_execution", True, total=0, num_turns=0)
    assert driver.on_stdout(gone) == []
    assert driver.on_exit(1) == []  # neither that result nor its errors answer the input
    retry = driver.take_retry()
    assert retry is not None and SESSION in retry and "new session" in retry
    assert driver.take_retry() is None
    assert "--resume" not in driver.invocation("two, again").argv


def test_api_errors_denials_and_errors_become_error_events(config: FakeConfig) -> None:
    driver = ClaudeDriver(
        FakeConfig(config.state_dir, config.workdir, allowed_commands=["echo"]), "claude"
    )
    driver.invocation("go")
    api_error = {
        "type": "assistant",
        "message": {"content": [{"type": "text", "text": "API Error: 500 boom"}]},
        "is_api_error_message": True,
        "api_error_status": 500,
    }
    [event] = driver.on_stdout(json.dumps(api_error))
    assert event.type == "error" and "API Error: 500 boom" in event.content
    denial = {"tool_name": "Bash", "tool_input": {"command": "rm -rf /"}}
    line = result_line(
        "error_max_turns", True, permission_denials=[denial], errors=["Reached max turns"]
    )
    assert driver.on_stdout(line) == []
    events = driver.on_exit(1)
    errors = [e.content for e in events if e.type == "error"]
    assert (
        errors[0] == "refused by Claude Code: `rm -rf /` is not an allowed command (allowed: echo)"
    )
    assert errors[1] == "Claude Code: Reached max turns"
    assert payload_of(events)["is_error"] is True


def test_cost_is_per_input_and_the_total_survives_a_restart(config: FakeConfig) -> None:
    driver = ClaudeDriver(config, executable="claude")
    for prompt, session_total in (("a", 0.25), ("b", 0.75)):
        driver.invocation(prompt)
        driver.on_stdout(result_line(total=session_total))
        payload = payload_of(driver.on_exit(0))
    assert payload["cost_usd"] == 0.5 and payload["total_cost_usd"] == 0.75
    again = ClaudeDriver(config, executable="claude")  # a restarted wrapper, same state
    again.invocation("c")
    # A new session (say, after a lost transcript) starts its own running total from zero.
    again.on_stdout(result_line(total=0.1, session="another-session"))
    payload = payload_of(again.on_exit(0))
    assert payload["cost_usd"] == 0.1 and payload["total_cost_usd"] == pytest.approx(0.85)
