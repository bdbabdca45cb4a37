"""What a worker container's environment holds: the one place that writes it.

The wrapper's part is a :class:`worker_base.config.WrapperConfig`, which owns how it is written
(``to_env``) and read back inside the container (``from_env``); the agent's part is its
endpoint settings and, only for the agent type that uses them, the API keys from the manager's
own configuration (never from a command). A pooled container gets the agent's part only: the
wrapper's comes with its assignment.

The create's ``env`` is not a variable of the container: the wrapper runs as root, and a
variable of its environment is read by its loader and interpreter (``LD_PRELOAD``,
``PYTHON*``…). It travels as data inside the wrapper's configuration (``WM_AGENT_ENV``) and the
wrapper adds it to each agent run's environment only, below the deployment's names.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from worker_base.config import AGENT_HOME, DEFAULT_STATE_DIR, WrapperConfig, parse_user
from worker_base.identity import CONTAINER_WRAPPER_DIR
from worker_manager.contract.commands import CreateCommand
from worker_manager.contract.kinds import AgentType, Shape
from worker_manager.settings import Settings
from worker_manager.workers.resources.containment import (
    contained,
    contained_env,
    pooled_relays_env,
    relays,
)


def wrapper_config(
    settings: Settings,
    worker_id: str,
    command: CreateCommand,
    redis_url: str,
    workspace_base: str = "",
) -> WrapperConfig:
    """The wrapper's configuration for one create; ``redis_url`` carries the worker's own ACL
    credentials, ``workspace_base`` the commit its repository was checked out at."""
    allowed = command.allowed_commands
    return WrapperConfig(
        worker_id=worker_id,
        redis_url=redis_url,
        key_prefix=settings.keys.prefix,
        agent_type=command.agent_type.value,
        agent_command=tuple(command.agent_command or ()),
        allowed_commands=None if allowed is None else tuple(allowed),
        heartbeat_interval=settings.heartbeat_interval_seconds,
        heartbeat_ttl=settings.heartbeat_ttl_seconds,
        output_maxlen=settings.output_maxlen,
        factory_auto=settings.factory_auto,
        input_timeout=command.input_timeout_seconds or settings.input_timeout_seconds,
        max_turns=command.max_turns,
        max_cost_usd=command.max_cost_usd,
        relays=relays(settings),
        wrapper_dir_override=Path(CONTAINER_WRAPPER_DIR),
        agent_user=parse_user(settings.container_user),
        agent_home=Path(AGENT_HOME),
        agent_env=tuple(sorted(command.env.items())),
        workspace_base=workspace_base,
        workspace_max_bytes=settings.workspace_max_file_bytes,
        team=command.team or "",
    )


def worker_env(
    settings: Settings,
    worker_id: str,
    command: CreateCommand,
    redis_url: str,
    workspace_base: str = "",
) -> dict[str, str]:
    """The container's whole environment: the wrapper's configuration (the create's ``env``
    inside it, as data for the agent: ``WrapperConfig.agent_env``) and the agent's settings."""
    env = wrapper_config(settings, worker_id, command, redis_url, workspace_base).to_env()
    env.update(agent_env(settings, command.agent_type, worker_id))
    return env


def pool_env(settings: Settings, shape: Shape, worker_id: str) -> dict[str, str]:
    """A pooled container's environment: no worker yet, only what its agent type needs (the
    rest comes with the assignment). Its id is the one the create that takes it adopts."""
    env = {
        "WM_POOLED": "1",
        "WM_STATE_DIR": DEFAULT_STATE_DIR,
        # Where its hand-over lands (the wrapper's private directory: root's, 0700).
        "WM_WRAPPER_DIR": CONTAINER_WRAPPER_DIR,
    }
    env.update(pooled_relays_env(settings))
    env.update(agent_env(settings, shape.agent_type, worker_id))
    return env


def agent_env(settings: Settings, agent_type: AgentType, worker_id: str) -> dict[str, str]:
    """What the agent itself needs: its endpoint settings and its API keys; contained
    (``WM_EGRESS=on``), the relays and the gateway instead, and no operator key at all."""
    env: dict[str, str] = {}
    if contained(settings):
        if agent_type is AgentType.CLAUDE:
            env.update(_claude_settings(settings))
        elif agent_type is AgentType.CODEX:
            env.update(_codex_settings(settings))
        env.update(contained_env(settings, agent_type, worker_id))
        return env
    wanted: dict[str, SecretStr | None] = {}
    if agent_type is AgentType.CLAUDE:
        base_url = settings.workers_anthropic_base_url
        if base_url:
            env["ANTHROPIC_BASE_URL"] = base_url
        env.update(_claude_settings(settings))
        wanted = {
            "ANTHROPIC_API_KEY": settings.anthropic_api_key,
            "CLAUDE_CODE_OAUTH_TOKEN": settings.claude_code_oauth_token,
        }
    elif agent_type is AgentType.CODEX:
        env["OPENAI_BASE_URL"] = settings.workers_openai_base_url
        env.update(_codex_settings(settings))
        wanted = {"OPENAI_API_KEY": settings.openai_api_key}
    elif agent_type is AgentType.FACTORY:
        wanted = {"FACTORY_API_KEY": settings.factory_api_key}
    env.update({name: secret.get_secret_value() for name, secret in wanted.items() if secret})
    return env


def _claude_settings(settings: Settings) -> dict[str, str]:
    env: dict[str, str] = {}
    if settings.anthropic_model:
        env["ANTHROPIC_MODEL"] = settings.anthropic_model
    if settings.claude_max_retries is not None:
        env["CLAUDE_CODE_MAX_RETRIES"] = str(settings.claude_max_retries)
    return env


def _codex_settings(settings: Settings) -> dict[str, str]:
    env: dict[str, str] = {}
    if settings.openai_model:
        env["OPENAI_MODEL"] = settings.openai_model
    if settings.codex_max_retries is not None:
        env["CODEX_MAX_RETRIES"] = str(settings.codex_max_retries)  # read by the Codex driver
    return env
