"""What crosses into a worker container is written and read by one class: WrapperConfig."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker_base.config import WrapperConfig, redact_url
from worker_manager.contract.commands import CreateCommand, command_context
from worker_manager.settings import Settings

CONFIGS = [
    WrapperConfig(worker_id="w1", redis_url="redis://u:p@h:1/0", agent_command=("cat",)),
    WrapperConfig(
        worker_id="w2",
        redis_url="rediss://worker-w2:secret@[::1]:6380/3",
        key_prefix="t9",
        agent_type="CLAUDE",
        allowed_commands=(),  # restricted to nothing: not the same as unrestricted
        workdir=Path("/srv/work"),
        heartbeat_interval=0.25,
        heartbeat_ttl=4,
        output_maxlen=123,
        factory_auto="high",
        input_timeout=12.5,
        max_turns=3,
        max_cost_usd=0.75,
        log_level="DEBUG",
    ),
    WrapperConfig(
        worker_id="w3",
        redis_url="unix:///run/redis.sock",
        agent_type="FACTORY",
        allowed_commands=("git", "npm test"),
    ),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.worker_id)
def test_to_env_round_trips(config: WrapperConfig) -> None:
    env = config.to_env()
    assert all(isinstance(v, str) for v in env.values())
    assert WrapperConfig.from_env(env) == config


def test_the_managers_env_is_what_the_wrapper_reads(tmp_path: Path) -> None:
    """Build the env the way the provisioner does and read it the way the wrapper does."""
    from worker_manager.workers.resources.environment import worker_env, wrapper_config

    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, key_prefix="kp", heartbeat_interval_seconds=0.5, heartbeat_ttl_seconds=3
    )

    url = "redis://kp-w-1:pw@172.17.0.1:6379/0"
    command = CreateCommand.model_validate(
        {
            "command": "create",
            "request_id": "r1",
            "reply_to": "kp:replies",
            "agent_type": "CUSTOM",
            "agent_command": json.dumps(["sh", "-c", "cat"]),
            "allowed_commands": json.dumps(["echo"]),
            "max_cost_usd": "1.5",
            "env": json.dumps({"GREETING": "hello"}),
        },
        context=command_context(settings, settings.keys.replies),
    )
    env = worker_env(settings, "w-1", command, url)
    read = WrapperConfig.from_env(env)
    assert read == wrapper_config(settings, "w-1", command, url)
    assert read.agent_command == ("sh", "-c", "cat") and read.allowed_commands == ("echo",)
    assert read.input_timeout == settings.input_timeout_seconds and read.max_cost_usd == 1.5
    assert read.heartbeat_interval == 0.5 and read.heartbeat_ttl == 3
    assert read.input_key == settings.keys.input("w-1")  # one key schema
    assert "ANTHROPIC_API_KEY" not in env  # a CUSTOM worker gets no agent secrets
    # The create's env is data for the agent, not a variable of the (root) wrapper.
    assert "GREETING" not in env and read.agent_env == (("GREETING", "hello"),)
    assert str(read.agent_home) == "/home/worker"


def test_one_redaction_for_both_sides() -> None:
    from worker_manager.core.logs import redact_url as managers

    assert managers is redact_url
    assert redact_url("redis://u:pw@[::1]:6379/0") == "redis://u:***@[::1]:6379/0"
    assert redact_url("redis://u:pw@[broken") == "<unparseable URL>"
