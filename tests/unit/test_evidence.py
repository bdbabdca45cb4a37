"""The rules of evidence (``workers/state/evidence.py``): a container log bounded and scrubbed
whatever it holds. Who ended a worker is its reason's own source (``test_reasons.py``)."""

from __future__ import annotations

import json

import pytest
from pydantic import SecretStr

from worker_base.config import hide_url_credentials
from worker_manager.settings import Settings
from worker_manager.workers.state.evidence import (
    LINE_CHARS,
    LOG_LINES,
    SCRUB_CHARS,
    log_tail,
    operator_secrets,
    scrub,
)


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


SECRET = "sk-ant-secret-0123456789abcdef"


def test_a_secret_the_cut_runs_through_leaves_nothing_of_itself() -> None:
    for before in range(LINE_CHARS - len(SECRET) + 1, LINE_CHARS):
        line = "x" * before + SECRET + " and more"
        tail = log_tail(line.encode(), [SECRET])
        assert SECRET[:8] not in tail, before
        assert tail.startswith("x" * before + "***"[: LINE_CHARS - before]), before
        assert len(tail) <= LINE_CHARS + 1


def test_a_url_password_the_cut_runs_through_leaves_nothing_of_itself() -> None:
    url = "https://bot:hunter2-hunter2-hunter2@git.example/org/repo.git"
    for before in range(LINE_CHARS - 30, LINE_CHARS - 10):
        tail = log_tail(("y" * before + " " + url).encode(), [])
        assert "hunter2" not in tail, before


def test_the_end_of_the_scrubbed_window_shows_nothing_it_cut_through() -> None:
    """Past :data:`SCRUB_CHARS` a line is not searched; what the window's end cut is dropped."""
    for offset in range(-20, 5):
        pad = "z" * (SCRUB_CHARS + offset)
        tail = log_tail((pad + SECRET + "tail" * 5000).encode(), [SECRET])
        assert SECRET[:8] not in tail and len(tail) <= LINE_CHARS + 1
    lines = ("w " * 300 + "https://u:" + "p" * 9000 + "@host/ x").encode()
    assert "ppp" not in log_tail(lines, [])


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        ("https://u:p@ss/w@rd@host/path", "https://***@host/path"),
        ("https://u:a/b@host", "https://***@host"),
        ("git clone https://u:a/b:c@host/x.git done", "git clone https://***@host/x.git done"),
        ("redis://wm-w1:hunter2hunter2@10.0.0.1:6379/0", "redis://***@10.0.0.1:6379/0"),
        ("postgres://user:pa:ss@db:5432/x", "postgres://***@db:5432/x"),
        ("https://ghp_token@github.com/o/r", "https://***@github.com/o/r"),
        ("https://me@corp:pw@host/", "https://***@host/"),
        ("(see https://u:p/x@host).", "(see https://***@host)."),
        ("a https://u:p@h/?next=https://x:y@z b", "a https://***@h/?next=https://***@z b"),
        ("unix://wm-x:pw@/run/wm/redis.sock?db=0", "unix://***@/run/wm/redis.sock?db=0"),
    ],
)
def test_url_passwords_holding_slashes_ats_and_colons_are_hidden(text: str, hidden: str) -> None:
    assert hide_url_credentials(text) == hidden


@pytest.mark.parametrize(
    "text",
    [
        "https://host/users/@me",
        "http://127.0.0.1:4873/@scope/pkg",
        "https://example.com/search?q=a@b.com",
        "http://[::1]:8080/x@y",
        "mail a@b.com or git@github.com:org/repo.git",
        "see http://x: foo@bar",
        "https://h/p@@",
    ],
)
def test_text_without_url_credentials_is_left_alone(text: str) -> None:
    assert hide_url_credentials(text) == text


def test_hiding_url_credentials_stays_linear() -> None:
    import time

    for text in ("a" * 2_000_000, "https://u:" + "@" * 1_000_000, "@:/" * 700_000):
        started = time.perf_counter()
        hide_url_credentials(text)
        assert time.perf_counter() - started < 2.0
