"""The wrapper's parts on their own: output batching, line splitting, configuration."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.wrapper.conftest import REPO
from worker_base.agents.base import Event, Invocation
from worker_base.assignment import ASSIGNMENT, POOLED, READY, AssignmentError, wait_for_assignment
from worker_base.config import ConfigError, WrapperConfig, redact_url
from worker_base.runner import LineSplitter, agent_environment, exit_status
from worker_base.streams import OutputWriter
from worker_manager.settings import Settings

BASE_ENV = {"WM_WORKER_ID": "w1", "WM_REDIS_URL": "redis://u:secret@localhost:1/0"}


@pytest.mark.redis
async def test_writer_sends_queued_events_in_few_pipelines_in_order(
    redis: Redis, settings: Settings
) -> None:
    key = f"{settings.key_prefix}:w:output"
    writer = OutputWriter(redis, key, maxlen=100_000, batch_size=500)
    # Queued before the writer runs: it must take them in batches of 500, not one by one.
    await writer.put_many((Event("stdout", str(i)) for i in range(1200)), "1-0")
    writer.start()
    assert await writer.flush(10)
    assert writer.batches == 3
    assert writer.sent == 1200
    entries = await redis.xrange(key)
    assert [fields["content"] for _, fields in entries] == [str(i) for i in range(1200)]
    assert entries[0][1]["input_id"] == "1-0"
    await writer.close(1)


@pytest.mark.redis
async def test_writer_holds_producers_back_when_full(redis: Redis, settings: Settings) -> None:
    key = f"{settings.key_prefix}:w:output"
    writer = OutputWriter(redis, key, maxlen=100_000, batch_size=10, max_pending=20)
    blocked = asyncio.ensure_future(writer.put_many([Event("stdout", "x")] * 30, ""))
    await asyncio.sleep(0)  # let it run up to its wait
    assert not blocked.done()  # 30 queued >= 20: the producer waits
    writer.start()
    async with asyncio.timeout(5):
        await blocked
    assert await writer.flush(5)
    assert await redis.xlen(key) == 30
    await writer.close(1)


@pytest.mark.redis
async def test_writer_caps_the_stream(redis: Redis, settings: Settings) -> None:
    key = f"{settings.key_prefix}:w:output"
    writer = OutputWriter(redis, key, maxlen=100)
    writer.start()
    for start in range(0, 2000, 200):
        await writer.put_many((Event("stdout", str(i)) for i in range(start, start + 200)), "")
    assert await writer.flush(10)
    assert 100 <= await redis.xlen(key) < 2000  # MAXLEN ~ trims whole nodes
    await writer.close(1)


def test_line_splitter_handles_crlf_partial_and_final_lines() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"a\r\nb") == ["a"]
    assert splitter.feed(b"c\n\n") == ["bc", ""]
    assert splitter.feed(b"tail") == []
    assert splitter.finish() == ["tail"]
    assert splitter.finish() == []


def test_line_splitter_cuts_long_lines_on_character_boundaries() -> None:
    splitter = LineSplitter(max_line=10)
    text = "é" * 25  # 50 bytes, 2 per character
    lines = splitter.feed(text.encode()[:33]) + splitter.feed(text.encode()[33:] + b"\nok\n")
    assert all(len(line.encode()) <= 10 for line in lines)
    assert "".join(lines[:-1]) == text
    assert lines[-1] == "ok"
    assert "\ufffd" not in "".join(lines)


def test_line_splitter_bounds_an_endless_line() -> None:
    splitter = LineSplitter(max_line=1000)
    out: list[str] = []
    for _ in range(50):
        out += splitter.feed(b"x" * 999)
    out += splitter.finish()
    assert "".join(out) == "x" * 49_950
    assert max(len(line) for line in out) <= 1000


def test_exit_status_of_a_signal_is_128_plus_n() -> None:
    assert exit_status(-9) == 137
    assert exit_status(3) == 3


def test_agent_environment_drops_the_redis_url_and_adds_the_input() -> None:
    config = WrapperConfig.from_env({**BASE_ENV, "WM_AGENT_COMMAND": '["cat"]'})
    env = agent_environment(
        config,
        Invocation(["cat"], env={"EXTRA": "1"}),
        "5-0",
        base={**BASE_ENV, "PATH": "/bin"},
    )
    assert "WM_REDIS_URL" not in env
    assert env["WM_INPUT_ID"] == "5-0"
    assert env["EXTRA"] == "1"
    assert env["WM_WORKER_ID"] == "w1"


def test_the_creates_env_reaches_the_agent_only_below_the_deployments_names() -> None:
    """``WM_AGENT_ENV`` is data for the wrapper and variables for the agent; the container's
    own names win over it, and the agent's ``HOME`` is its own, not the wrapper's."""
    config = WrapperConfig.from_env(
        {
            **BASE_ENV,
            "WM_AGENT_COMMAND": '["cat"]',
            "WM_AGENT_HOME": "/home/worker",
            "WM_AGENT_ENV": json.dumps({"GREETING": "hi", "HTTPS_PROXY": "http://evil:1"}),
        }
    )
    assert config.agent_env == (("GREETING", "hi"), ("HTTPS_PROXY", "http://evil:1"))
    container = {**config.to_env(), "HOME": "/root", "HTTPS_PROXY": "http://127.0.0.1:3128"}
    env = agent_environment(config, Invocation(["cat"]), "5-0", base=container)
    assert env["GREETING"] == "hi"
    assert env["HTTPS_PROXY"] == "http://127.0.0.1:3128"  # the deployment's
    assert env["HOME"] == "/home/worker"
    assert "WM_AGENT_ENV" not in env and "WM_REDIS_URL" not in env
    assert WrapperConfig.from_env(config.to_env()) == config


@pytest.mark.parametrize("raw", ["[1]", '{"A": 1}', "{"])
def test_a_malformed_agent_env_names_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match="WM_AGENT_ENV"):
        WrapperConfig.from_env({**BASE_ENV, "WM_AGENT_COMMAND": '["cat"]', "WM_AGENT_ENV": raw})


def test_config_reads_the_manager_variables() -> None:
    config = WrapperConfig.from_env(
        {
            **BASE_ENV,
            "WM_KEY_PREFIX": "p",
            "WM_AGENT_TYPE": "claude",
            "WM_ALLOWED_COMMANDS": '["git", "npm test"]',
            "WM_HEARTBEAT_INTERVAL": "1.5",
            "WM_HEARTBEAT_TTL": "6",
            "WM_OUTPUT_MAXLEN": "500",
            "WM_FACTORY_AUTO": "HIGH",
        }
    )
    assert config.agent_type == "CLAUDE"
    assert config.allowed_commands == ("git", "npm test")
    assert (config.heartbeat_interval, config.heartbeat_ttl, config.output_maxlen) == (1.5, 6, 500)
    assert config.input_key == "p:w1:input"
    assert config.factory_auto == "high"
    assert "secret" not in config.safe_redis_url
    assert "secret" not in repr(redact_url(config.redis_url))


@pytest.mark.parametrize(
    ("changes", "variable"),
    [
        ({"WM_WORKER_ID": ""}, "WM_WORKER_ID"),
        ({"WM_REDIS_URL": ""}, "WM_REDIS_URL"),
        ({"WM_AGENT_COMMAND": ""}, "WM_AGENT_COMMAND"),
        ({"WM_AGENT_COMMAND": '"cat"'}, "WM_AGENT_COMMAND"),
        ({"WM_AGENT_TYPE": "GPT"}, "WM_AGENT_TYPE"),
        ({"WM_HEARTBEAT_TTL": "1", "WM_HEARTBEAT_INTERVAL": "2"}, "WM_HEARTBEAT_TTL"),
        ({"WM_OUTPUT_MAXLEN": "lots"}, "WM_OUTPUT_MAXLEN"),
    ],
)
def test_config_errors_name_the_variable(changes: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        WrapperConfig.from_env({**BASE_ENV, "WM_AGENT_COMMAND": '["cat"]', **changes})


def test_main_exits_2_without_printing_the_password() -> None:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}
    env |= {"WM_REDIS_URL": "http://u:hunter2@somewhere/0", "WM_WORKER_ID": "w1"}
    done = subprocess.run(
        [sys.executable, "-m", "worker_base"], env=env, capture_output=True, timeout=30, check=False
    )
    assert done.returncode == 2
    assert b"WM_REDIS_URL" in done.stderr
    assert b"hunter2" not in done.stderr + done.stdout
    env.pop("WM_WORKER_ID")
    done = subprocess.run(
        [sys.executable, "-m", "worker_base"], env=env, capture_output=True, timeout=30, check=False
    )
    assert done.returncode == 2
    assert b"WM_WORKER_ID" in done.stderr


def test_a_pooled_wrapper_takes_its_assignment_and_leaves_the_marker(tmp_path: Path) -> None:
    """The Engine sets a file's owner and mode after creating it: the marker must outlive the
    hand-over, or the manager's extraction fails (``lchown …: no such file``). The assignment,
    which holds the Redis password, must not."""
    environ = {POOLED: "1", "WM_WRAPPER_DIR": str(tmp_path)}
    private = tmp_path / "private"  # the wrapper's own (root's, 0700, in a container)
    private.mkdir()
    (private / ASSIGNMENT).write_text(json.dumps({"WM_WORKER_ID": "w1"}), encoding="utf-8")
    (private / READY).touch()
    assert wait_for_assignment(environ, stopped=lambda: False)
    assert environ["WM_WORKER_ID"] == "w1" and POOLED not in environ
    assert not (private / ASSIGNMENT).exists()
    os.chmod(private / READY, 0o600)  # what the extraction does next


def test_a_pooled_wrapper_stops_unassigned_and_rejects_a_bad_assignment(tmp_path: Path) -> None:
    environ = {POOLED: "1", "WM_STATE_DIR": str(tmp_path)}
    assert not wait_for_assignment(environ, stopped=lambda: True)
    private = tmp_path / "wrapper" / "private"  # without WM_WRAPPER_DIR: under the state dir
    assert private.is_dir() and private.stat().st_mode & 0o777 == 0o700
    (private / ASSIGNMENT).write_text('{"WM_WORKER_ID": 1}', encoding="utf-8")
    (private / READY).touch()
    with pytest.raises(AssignmentError, match="JSON object of strings"):
        wait_for_assignment(environ)
    assert not (private / ASSIGNMENT).exists()
