"""The rules of evidence (``workers/state/evidence.py``): who ended a worker, and a container log
bounded and scrubbed whatever it holds."""

from __future__ import annotations

import json

import pytest
from pydantic import SecretStr

from worker_manager.settings import Settings
from worker_manager.workers.state.evidence import (
    LINE_CHARS,
    LOG_LINES,
    ended_by_default,
    log_tail,
    operator_secrets,
    scrub,
)


@pytest.mark.parametrize(
    ("reason", "loop"),
    [
        ("deleted", "delete"),
        ("idle", "evictor (idle timeout)"),
        ("ttl", "evictor (lifetime)"),
        ("budget_exceeded", "watcher (budget: the metered or reported cost)"),
        ("heartbeat_lost", "watcher (heartbeats)"),
        ("heartbeat_invalid", "watcher (heartbeats)"),
        ("output_overflow", "output guard"),
        ("disk_exceeded", "disk guard"),
        ("container_lost", "reconciler"),
        ("host_lost", "lost-hosts judge"),
        ("oom", "docker events (OOM kill)"),
        ("exited", "docker events (exit)"),
        ("exited with code 3", "docker events (exit)"),
        ("build_failed: no space", "create (build)"),
        ("start failed: APIError", "create (start)"),
        ("workspace_failed: clone", "create (workspace)"),
        ("something new", "manager"),
    ],
)
def test_every_reason_names_the_loop_that_gives_it(reason: str, loop: str) -> None:
    assert ended_by_default(reason) == loop


def test_known_secrets_and_url_credentials_are_replaced() -> None:
    text = "token sk-ant-0123456789 and redis://wm-w1:hunter2hunter2@10.0.0.1:6379/0 short=abc"
    out = scrub(text, ["sk-ant-0123456789", "abc"])  # "abc" is too short to search for
    assert "sk-ant-0123456789" not in out and "hunter2" not in out
    assert "redis://***@10.0.0.1:6379/0" in out and "short=abc" in out


def test_a_log_is_bounded_at_the_scale_a_flood_writes() -> None:
    flood = b"\n".join(b"line %d " % i + b"x" * 2000 for i in range(10_000)) + b"\nbad \xff\xfe"
    tail = log_tail(flood, [])
    lines = tail.splitlines()
    assert len(lines) == LOG_LINES
    assert all(len(line) <= LINE_CHARS + 1 for line in lines)
    assert lines[0].startswith(f"line {10_000 - LOG_LINES + 1} ")
    assert lines[-1] == "bad \ufffd\ufffd"  # invalid bytes replaced, not a crash


def test_the_operators_secrets_are_all_known() -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        worker_secret=SecretStr("w" * 32),
        anthropic_api_key=SecretStr("sk-ant-key-123456"),
        git_credentials=SecretStr(
            json.dumps({"git.example": {"username": "u", "password": "p" * 12}})
        ),
    )
    found = operator_secrets(settings)
    assert {"w" * 32, "sk-ant-key-123456", "p" * 12} <= set(found)
