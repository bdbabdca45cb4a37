"""A refusal is reported once, and before the ``done`` of its input, however fast the agent
exits: ``pending_refusals`` (called by the wrapper after each run) and the polling follower
``refusals`` share one position in the refusal log."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.agents.helpers import FakeConfig
from worker_base.allowlist import agent_env
from worker_base.refusals import pending_refusals, refusals


def run(env: dict[str, str], script: str, cwd: Path) -> int:
    bash = shutil.which("bash")
    assert bash is not None
    return subprocess.run([bash, "-c", script], env=env, cwd=cwd, timeout=30).returncode


@pytest.fixture
def config(tmp_path: Path) -> FakeConfig:
    (tmp_path / "work").mkdir()
    return FakeConfig(tmp_path / "state", tmp_path / "work", allowed_commands=["echo"])


async def test_flush_takes_what_the_follower_has_not_seen(config: FakeConfig) -> None:
    env = agent_env(config, dict(os.environ))
    stream = refusals(config)
    assert run(env, "ls one", config.workdir) == 126
    assert await asyncio.wait_for(anext(stream), 10) == (
        "refused: `ls one` is not an allowed command (allowed: echo)"
    )
    assert pending_refusals(config) == []  # already delivered by the follower

    assert run(env, "ls two; ls three", config.workdir) == 126
    # Right after the agent exits, before the follower's next poll: both, in order.
    assert pending_refusals(config) == [
        "refused: `ls two` is not an allowed command (allowed: echo)",
        "refused: `ls three` is not an allowed command (allowed: echo)",
    ]
    assert pending_refusals(config) == []
    follower = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.3)  # several polls: the flushed ones are not repeated
    assert not follower.done()
    assert run(env, "ls four", config.workdir) == 126
    assert "`ls four`" in await asyncio.wait_for(follower, 10)
    await stream.aclose()


def test_unrestricted_has_nothing_pending(tmp_path: Path) -> None:
    assert pending_refusals(FakeConfig(tmp_path / "state", tmp_path)) == []
