"""A configuration object with the fields the agent modules read, and a way to run a driver."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from worker_base.agents.base import AgentDriver, Event
from worker_base.allowlist import agent_env

FAKES = Path(__file__).resolve().parent.parent / "fakes"


@dataclass(frozen=True)
class FakeConfig:
    state_dir: Path
    workdir: Path
    allowed_commands: list[str] | None = None
    factory_auto: str = "low"
    max_turns: int | None = None
    max_cost_usd: float | None = None
    #: None: the agent runs as the wrapper's own user (as in these host-side tests).
    agent_user: tuple[int, int] | None = None

    @property
    def wrapper_dir(self) -> Path:
        return self.state_dir / "wrapper"

    def agent_home_dir(self) -> Path:
        """The agent's home: in these host-side tests, a folder beside the state."""
        return self.state_dir / "home"


def run_driver(driver: AgentDriver, config: FakeConfig, prompt: str) -> tuple[int, list[Event]]:
    """Run one input the way the wrapper does: agent_env, the invocation's env, lines, exit."""
    invocation = driver.invocation(prompt)
    env = agent_env(config, dict(os.environ))
    env.update(invocation.env)
    done = subprocess.run(
        invocation.argv,
        input=invocation.stdin if invocation.stdin is not None else b"",
        env=env,
        cwd=config.workdir,
        capture_output=True,
        timeout=60,
        check=False,
    )
    events: list[Event] = []
    for line in done.stdout.decode().splitlines():
        events += driver.on_stdout(line)
    for line in done.stderr.decode().splitlines():
        events += driver.on_stderr(line)
    events += driver.on_exit(done.returncode)
    return done.returncode, events
