"""API keys go from the manager's configuration into the container's environment of the agent
type that needs them, and nowhere else: not Redis, not the manager's logs, not the wrapper's."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest
import structlog
from pydantic import SecretStr

from tests.support.fake_anthropic import FakeAnthropic
from tests.support.flows import Harness
from tests.support.redis_dump import every_value

pytestmark = [pytest.mark.docker, pytest.mark.redis]


def env_of(container: Any) -> dict[str, str]:
    pairs = (item.partition("=") for item in container.attrs["Config"]["Env"])
    return {name: value for name, _, value in pairs}


async def test_api_keys_reach_the_agent_and_nothing_else(
    harness: Harness, fake_anthropic: FakeAnthropic
) -> None:
    api_key = f"sk-ant-test-{secrets.token_hex(16)}"
    oauth = f"oauth-test-{secrets.token_hex(16)}"
    factory_key = f"fk-test-{secrets.token_hex(16)}"
    values = (api_key, oauth, factory_key)
    with structlog.testing.capture_logs() as logs:
        await harness.start(
            anthropic_base_url=fake_anthropic.url,
            start_timeout_seconds=600,
            anthropic_api_key=SecretStr(api_key),
            claude_code_oauth_token=SecretStr(oauth),
            factory_api_key=SecretStr(factory_key),
        )
        claude = await harness.client.create(agent_type="CLAUDE")
        custom = await harness.client.create(agent_type="CUSTOM", agent_command=["cat"])
        assert claude.ok and custom.ok, (claude, custom)
        assert claude.worker_id and custom.worker_id
        for worker_id in (claude.worker_id, custom.worker_id):
            assert await harness.wait_status(worker_id, "RUNNING", "FAILED") == "RUNNING"

        # Per agent type: Claude gets its two, CUSTOM none (and nobody gets Factory's here).
        claude_env = env_of(harness.container(claude.worker_id))
        assert claude_env["ANTHROPIC_API_KEY"] == api_key
        assert claude_env["CLAUDE_CODE_OAUTH_TOKEN"] == oauth
        assert "FACTORY_API_KEY" not in claude_env
        custom_env = env_of(harness.container(custom.worker_id))
        assert not {"ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "FACTORY_API_KEY"} & set(
            custom_env
        )

        # The agent process sees the key (its tool call says whether, never what) but not the
        # wrapper's Redis credentials.
        input_id = await harness.client.send_input(
            claude.worker_id,
            'FAKE bash [ -n "$ANTHROPIC_API_KEY" ] && echo key-is-set; '
            '[ -z "$WM_REDIS_URL" ] && echo no-redis-url',
        )
        events = await harness.events_until_done(claude.worker_id, input_id=input_id)
        tool_result = next(
            json.loads(e["content"])
            for e in events
            if e["type"] == "tool_result" and e["input_id"] == input_id
        )
        assert tool_result["content"] == "key-is-set\nno-redis-url"
        # The real CLI sent the key to the API it was pointed at, and only there.
        assert any(r.headers.get("x-api-key") == api_key for r in fake_anthropic.requests)

        container_logs = harness.container(claude.worker_id).logs().decode("utf-8", "replace")
        for worker_id in (claude.worker_id, custom.worker_id):
            assert (await harness.client.request("delete", worker_id=worker_id)).ok

    stored = await every_value(harness.redis)
    acl_list = await harness.redis.execute_command("ACL", "LIST")
    assert any(harness.keys.output(claude.worker_id) in text for text in stored)  # we looked
    assert logs, "the manager logged nothing: the capture did not work"
    rendered_logs = json.dumps(logs, default=str)
    for value in values:
        assert not [text for text in stored if value in text]
        assert value not in json.dumps(acl_list, default=str)
        assert value not in rendered_logs
        assert value not in container_logs
