"""``WM_CODEX_MAX_RETRIES`` reaches CODEX workers (contained or not) as ``CODEX_MAX_RETRIES``,
which the Codex driver turns into its provider's retry bounds; other agents never get it."""

from __future__ import annotations

from typing import Any, Literal

import pytest
from pydantic import SecretStr

from worker_manager.contract.kinds import AgentType
from worker_manager.settings import Settings
from worker_manager.workers.resources.environment import agent_env

WORKER = "3f2b8c1e-0d7a-4c55-9a51-2f0e6b1c9d42"


def settings(egress: Literal["on", "off"], **fields: Any) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        redis_url="redis://manager:pw@127.0.0.1:6390/0",
        worker_redis_url="redis://172.17.0.1:6390/0",
        worker_secret=SecretStr("x" * 32),
        egress=egress,
        **fields,
    )


@pytest.mark.parametrize("egress", ["on", "off"])
def test_the_setting_reaches_codex_workers_only(egress: Literal["on", "off"]) -> None:
    s = settings(egress, codex_max_retries=0)
    assert agent_env(s, AgentType.CODEX, WORKER)["CODEX_MAX_RETRIES"] == "0"
    assert "CODEX_MAX_RETRIES" not in agent_env(s, AgentType.CLAUDE, WORKER)
    assert "CODEX_MAX_RETRIES" not in agent_env(settings(egress), AgentType.CODEX, WORKER)


def test_a_negative_count_is_refused() -> None:
    with pytest.raises(ValueError, match="codex_max_retries"):
        settings("on", codex_max_retries=-1)
