"""Which API keys a worker's container gets: those of its agent type, and only when set."""

from __future__ import annotations

import json
from typing import Any, Literal, cast

import pytest
from pydantic import SecretStr

from worker_manager.contract.commands import CreateCommand, command_context
from worker_manager.settings import Settings
from worker_manager.workers.resources.acl import WorkerAcl
from worker_manager.workers.resources.containment import factory_token, gateway_token
from worker_manager.workers.resources.environment import worker_env

KEYS = {"ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "FACTORY_API_KEY"}
FIELDS = ("anthropic_api_key", "claude_code_oauth_token", "factory_api_key")


def settings(egress: Literal["on", "off"] = "off", **secrets: str) -> Settings:
    """Keys not given are passed as None, so a developer's own keys in the env do not leak in.
    Uncontained by default (the open bridge, where keys cross); ``egress="on"`` contained."""
    given: dict[str, Any] = {
        name: SecretStr(secrets[name]) if name in secrets else None for name in FIELDS
    }
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        redis_url="redis://manager:pw@127.0.0.1:6390/0",
        worker_redis_url="redis://172.17.0.1:6390/0",
        worker_secret=SecretStr("x" * 32),
        egress=egress,
        **given,
    )


def env_for(s: Settings, agent_type: str) -> dict[str, str]:
    worker_id = "3f2b8c1e-0d7a-4c55-9a51-2f0e6b1c9d42"
    acl = WorkerAcl(cast(Any, None), s)
    command = CreateCommand.model_validate(
        {
            "command": "create",
            "request_id": "r1",
            "reply_to": s.keys.replies,
            "agent_type": agent_type,
            "agent_command": ["cat"] if agent_type == "CUSTOM" else None,
        },
        context=command_context(s, s.keys.replies),
    )
    return worker_env(s, worker_id, command, acl.worker_url(worker_id))


@pytest.mark.parametrize(
    ("agent_type", "expected"),
    [
        ("CLAUDE", {"ANTHROPIC_API_KEY": "a", "CLAUDE_CODE_OAUTH_TOKEN": "o"}),
        ("FACTORY", {"FACTORY_API_KEY": "f"}),
        ("CUSTOM", {}),
    ],
)
def test_keys_per_agent_type(agent_type: str, expected: dict[str, str]) -> None:
    s = settings(anthropic_api_key="a", claude_code_oauth_token="o", factory_api_key="f")
    env = env_for(s, agent_type)
    assert {k: v for k, v in env.items() if k in KEYS} == expected


def test_unset_keys_are_left_out() -> None:
    env = env_for(settings(anthropic_api_key="a"), "CLAUDE")
    assert {k for k in env if k in KEYS} == {"ANTHROPIC_API_KEY"}


def test_worker_url_carries_its_own_user_not_the_managers() -> None:
    s = settings()
    url = env_for(s, "CUSTOM")["WM_REDIS_URL"]
    assert url.startswith(f"redis://{s.keys.acl_user('3f2b8c1e-0d7a-4c55-9a51-2f0e6b1c9d42')}:")
    assert "manager:pw" not in url and "@172.17.0.1:6390/0" in url


def test_acl_off_gives_the_shared_worker_url() -> None:
    s = settings().model_copy(update={"worker_acl": False})
    assert env_for(s, "CUSTOM")["WM_REDIS_URL"] == "redis://172.17.0.1:6390/0"


def test_a_contained_claude_worker_holds_a_gateway_token_not_the_operators_key() -> None:
    s = settings("on", anthropic_api_key="a", claude_code_oauth_token="o")
    env = env_for(s, "CLAUDE")
    assert "CLAUDE_CODE_OAUTH_TOKEN" not in env
    assert env["ANTHROPIC_API_KEY"].startswith("wm-") and env["ANTHROPIC_API_KEY"] != "a"
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:3129"
    assert not any(value in {"a", "o"} for value in env.values())
    # The token is the worker's own: another worker's differs.
    other = settings("on", anthropic_api_key="a")
    assert env_for(other, "CLAUDE")["ANTHROPIC_API_KEY"] == env["ANTHROPIC_API_KEY"]
    assert gateway_token(s, "another-worker") != env["ANTHROPIC_API_KEY"]


def test_a_contained_worker_reaches_redis_and_the_world_through_its_sockets() -> None:
    s = settings("on")
    env = env_for(s, "CUSTOM")
    user = s.keys.acl_user("3f2b8c1e-0d7a-4c55-9a51-2f0e6b1c9d42")
    assert env["WM_REDIS_URL"].startswith(f"unix://{user}:")
    assert env["WM_REDIS_URL"].endswith("@/run/wm/redis.sock?db=0")
    assert env["HTTP_PROXY"] == env["https_proxy"] == "http://127.0.0.1:3128"
    assert json.loads(env["WM_RELAYS"]) == {
        "3128": "/run/wm/proxy.sock",
        "3129": "/run/wm/gateway.sock",
    }
    assert "manager:pw" not in env["WM_REDIS_URL"]


def test_a_contained_factory_worker_holds_a_placeholder_not_the_operators_key() -> None:
    s = settings("on", factory_api_key="f")
    env = env_for(s, "FACTORY")
    assert env["FACTORY_API_KEY"] == factory_token(s, "3f2b8c1e-0d7a-4c55-9a51-2f0e6b1c9d42")
    assert env["FACTORY_API_KEY"] != "f" and "f" not in env.values()
    assert factory_token(s, "another-worker") != env["FACTORY_API_KEY"]
    # The key is the egress service's, which may run apart: the placeholder is there anyway.
    assert env_for(settings("on"), "FACTORY")["FACTORY_API_KEY"] == env["FACTORY_API_KEY"]


def test_a_contained_worker_trusts_the_public_roots_and_the_egress_ca() -> None:
    env = env_for(settings("on"), "CUSTOM")
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO"):
        assert env[name] == "/run/wm/ca-bundle.pem"
    assert env["NODE_EXTRA_CA_CERTS"] == "/run/wm/ca.pem"
