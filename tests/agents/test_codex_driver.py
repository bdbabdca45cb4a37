"""CodexDriver: argv, threads, money and the mapping of ``codex exec --json`` lines, without
the CLI.

The real CLI is driven end to end in ``tests/integration/test_codex_real.py``; these cover the
rules in isolation and the shapes it cannot be made to print on demand. The lines are the ones
``codex exec --json`` 0.163 printed against the fake Responses API.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.agents.helpers import FakeConfig
from worker_base.agents.base import Event
from worker_base.agents.codex import LOST_THREAD, CodexDriver, provider_config
from worker_base.agents.openai_pricing import openai_cost_usd
from worker_base.allowlist import shim_dir

THREAD = "01a24d51-2e08-7612-929a-d0cf521caf3d"


def line(**fields: Any) -> str:
    return json.dumps(fields)


STARTED = line(type="thread.started", thread_id=THREAD)
WARNING = line(
    type="item.completed",
    item={"id": "item_0", "type": "error", "message": "Model metadata for `x` not found."},
)
COMMAND = {
    "id": "item_1",
    "type": "command_execution",
    "command": "/bin/bash -c 'echo hi'",
    "aggregated_output": "",
    "exit_code": None,
    "status": "in_progress",
}
COMMAND_DONE = {**COMMAND, "aggregated_output": "hi\n", "exit_code": 0, "status": "completed"}
MESSAGE = line(type="item.completed", item={"id": "item_2", "type": "agent_message", "text": "hi"})
USAGE = {
    "input_tokens": 24_000,
    "cached_input_tokens": 4_000,
    "output_tokens": 1_000,
    "reasoning_output_tokens": 0,
}
COMPLETED = line(type="turn.completed", usage=USAGE)


@pytest.fixture
def config(tmp_path: Path) -> FakeConfig:
    (tmp_path / "ws").mkdir()
    return FakeConfig(state_dir=tmp_path / "state", workdir=tmp_path / "ws")


def feed(driver: CodexDriver, *lines: str, exit_code: int = 0) -> list[Event]:
    events: list[Event] = []
    for text in lines:
        events += driver.on_stdout(text)
    return events + driver.on_exit(exit_code)


def kinds(events: list[Event]) -> list[str]:
    return [e.type for e in events]


def result(events: list[Event]) -> dict[str, Any]:
    found = [json.loads(e.content) for e in events if e.type == "result"]
    assert len(found) == 1, kinds(events)
    payload: dict[str, Any] = found[0]
    return payload


def test_a_turn_maps_onto_the_contract(config: FakeConfig) -> None:
    driver = CodexDriver(config, executable="/bin/true")
    driver.invocation("hello")
    events = feed(
        driver,
        STARTED,
        WARNING,
        line(type="turn.started"),
        line(type="item.started", item=COMMAND),
        line(type="item.completed", item=COMMAND_DONE),
        MESSAGE,
        COMPLETED,
    )
    assert kinds(events) == ["stderr", "tool_use", "tool_result", "assistant", "result"]
    use = json.loads(events[1].content)
    assert use == {"id": "item_1", "type": "command_execution", "command": COMMAND["command"]}
    done = json.loads(events[2].content)
    assert done["exit_code"] == 0 and done["output"] == "hi\n"
    payload = result(events)
    assert payload["is_error"] is False and payload["session_id"] == THREAD
    assert payload["num_turns"] == 2 and payload["result"] == "hi"
    cost = openai_cost_usd(None, 24_000, 4_000, 1_000)  # no model named: the highest price
    assert payload["cost_usd"] == pytest.approx(cost) and payload["total_cost_usd"] == (
        pytest.approx(cost)
    )


def test_the_thread_is_resumed_and_its_running_total_charged_once(config: FakeConfig) -> None:
    driver = CodexDriver(config, executable="/bin/true")
    driver.invocation("one")
    first = result(feed(driver, STARTED, MESSAGE, COMPLETED))
    # A new driver (a restarted wrapper) resumes the same thread.
    driver = CodexDriver(config, executable="/bin/true")
    argv = driver.invocation("two").argv
    assert argv[-3:] == ["resume", THREAD, "-"]
    doubled = {key: value * 2 for key, value in USAGE.items()}
    second = result(feed(driver, STARTED, MESSAGE, line(type="turn.completed", usage=doubled)))
    # Codex reports the thread's running total: this input is the difference.
    assert second["cost_usd"] == pytest.approx(first["cost_usd"])
    assert second["total_cost_usd"] == pytest.approx(2 * first["cost_usd"])


def test_a_lost_thread_runs_the_input_again_in_a_new_one(config: FakeConfig) -> None:
    driver = CodexDriver(config, executable="/bin/true")
    driver.invocation("one")
    feed(driver, STARTED, MESSAGE, COMPLETED)
    driver.invocation("two")
    driver.on_stderr(f"Error: thread/resume: thread/resume failed: {LOST_THREAD} {THREAD}")
    assert driver.on_exit(1) == []
    assert driver.take_retry() is not None
    assert "resume" not in driver.invocation("two").argv


def test_a_failed_turn_is_an_error_never_a_success(config: FakeConfig) -> None:
    driver = CodexDriver(config, executable="/bin/true")
    driver.invocation("x")
    message = "unexpected status 401 Unauthorized: bad key"
    events = feed(
        driver,
        STARTED,
        line(type="error", message="Reconnecting... 1/5 (unexpected status 401)"),
        line(type="error", message=message),
        line(type="turn.failed", error={"message": message}),
        exit_code=1,
    )
    assert kinds(events) == ["stderr", "error", "result"]
    assert "401" in events[1].content
    payload = result(events)
    assert payload["is_error"] is True and payload["exit_code"] == 1


def test_a_success_with_a_failing_exit_is_an_error(config: FakeConfig) -> None:
    driver = CodexDriver(config, executable="/bin/true")
    driver.invocation("x")
    events = feed(driver, STARTED, MESSAGE, COMPLETED, exit_code=2)
    assert result(events)["is_error"] is True and "error" in kinds(events)


def test_file_changes_and_failed_tools_carry_exit_codes(config: FakeConfig) -> None:
    driver = CodexDriver(config, executable="/bin/true")
    driver.invocation("x")
    change = {
        "id": "item_3",
        "type": "file_change",
        "changes": [{"path": "a.txt", "kind": "add"}],
        "status": "failed",
    }
    events = feed(driver, STARTED, line(type="item.completed", item=change), COMPLETED)
    assert kinds(events)[:2] == ["tool_use", "tool_result"]
    assert json.loads(events[0].content)["changes"] == change["changes"]
    assert json.loads(events[1].content)["exit_code"] == 1


def test_max_turns_stops_the_run_at_the_limit(config: FakeConfig) -> None:
    driver = CodexDriver(FakeConfig(**{**config.__dict__, "max_turns": 1}), "/bin/true")
    driver.invocation("x")
    events = driver.on_stdout(STARTED) + driver.on_stdout(line(type="item.started", item=COMMAND))
    assert driver.take_stop() is True and driver.take_stop() is False
    assert "max_turns" in next(e for e in events if e.type == "error").content
    payload = result(events + driver.on_exit(143))
    assert payload["is_error"] is True and payload["subtype"] == "error_max_turns"


def test_argv_runs_codex_inside_our_containment(
    config: FakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:3129")
    monkeypatch.setenv("OPENAI_MODEL", "gpt-5-codex")
    driver = CodexDriver(config, executable="/bin/true")
    invocation = driver.invocation("prompt")
    argv = invocation.argv
    assert argv[1:3] == ["exec", "--json"] and argv[-1] == "-"
    assert invocation.stdin == b"prompt"
    assert argv[argv.index("--sandbox") + 1] == "danger-full-access"
    settings = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-c"]
    assert 'approval_policy="never"' in settings and "allow_login_shell=false" in settings
    assert 'web_search="disabled"' in settings and "analytics.enabled=false" in settings
    disabled = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--disable"]
    assert {"apps", "plugins", "enable_request_compression"} <= set(disabled)
    assert f"model_providers.wm={provider_config('http://127.0.0.1:3129')}" in settings
    assert 'env_key="OPENAI_API_KEY"' in provider_config("x")
    assert argv[argv.index("-m") + 1] == "gpt-5-codex"
    assert invocation.env["CODEX_HOME"] == str(config.state_dir / "codex")
    # Unrestricted: no shims at all.
    assert not invocation.shims_by_agent
    assert not any(s.startswith("shell_environment_policy") for s in settings)


def _provider(argv: list[str]) -> dict[str, Any]:
    """The ``model_providers.wm`` table of an argv, read as Codex reads it (TOML)."""
    setting = next(a for a in argv if a.startswith("model_providers.wm="))
    table: dict[str, Any] = tomllib.loads(setting.replace("model_providers.wm=", "wm=", 1))["wm"]
    return table


@pytest.mark.parametrize(("value", "retries"), [("0", 0), (" 2 ", 2), (None, None), ("-1", None)])
def test_the_retry_setting_bounds_codexs_retries(
    config: FakeConfig, monkeypatch: pytest.MonkeyPatch, value: str | None, retries: int | None
) -> None:
    """Codex retries a failed request and a broken stream about five times (6-15 s) before a
    turn fails; ``CODEX_MAX_RETRIES`` (from ``WM_CODEX_MAX_RETRIES``) sets both bounds."""
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:3129")
    if value is None:
        monkeypatch.delenv("CODEX_MAX_RETRIES", raising=False)
    else:
        monkeypatch.setenv("CODEX_MAX_RETRIES", value)
    provider = _provider(CodexDriver(config, executable="/bin/true").invocation("x").argv)
    assert provider["base_url"] == "http://127.0.0.1:3129"
    assert provider["wire_api"] == "responses" and provider["env_key"] == "OPENAI_API_KEY"
    assert provider.get("request_max_retries") == retries
    assert provider.get("stream_max_retries") == retries


def test_allowed_commands_set_the_path_of_codex_commands(config: FakeConfig) -> None:
    restricted = FakeConfig(**{**config.__dict__, "allowed_commands": ["echo", "npm test"]})
    invocation = CodexDriver(restricted, executable="/bin/true").invocation("x")
    settings = [invocation.argv[i + 1] for i, a in enumerate(invocation.argv) if a == "-c"]
    assert f'shell_environment_policy.set={{PATH="{shim_dir(restricted)}"}}' in settings
    instructions = [s for s in settings if s.startswith("developer_instructions=")]
    assert instructions and "`npm test`" in instructions[0]
    # The shims are built, but the Codex process keeps its own PATH (its own git calls).
    assert invocation.shims_by_agent
