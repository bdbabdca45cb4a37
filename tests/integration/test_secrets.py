"""No operator secret inside a container (SPEC §7): a contained CLAUDE worker holds a gateway
token of its own, and the operator's key reaches the Messages API from the LLM gateway alone;
no key is in Redis, in the manager's or the egress service's logs, or in a container's."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest
import structlog
from pydantic import SecretStr

from tests.support.fake_anthropic import FakeAnthropic
from tests.support.flows import Harness
from tests.support.inside import found_inside
from tests.support.redis_dump import every_value

pytestmark = [pytest.mark.docker, pytest.mark.redis]


def env_of(container: Any) -> dict[str, str]:
    pairs = (item.partition("=") for item in container.attrs["Config"]["Env"])
    return {name: value for name, _, value in pairs}


async def test_no_operator_key_inside_a_contained_claude_worker(
    private_egress_dir: Path, harness: Harness, fake_anthropic: FakeAnthropic
) -> None:
    api_key = f"sk-ant-test-{secrets.token_hex(16)}"
    oauth = f"oauth-test-{secrets.token_hex(16)}"
    factory_key = f"fk-test-{secrets.token_hex(16)}"
    values = (api_key, oauth, factory_key)
    seen_before = len(fake_anthropic.requests)  # the fake serves the whole session
    with structlog.testing.capture_logs() as logs:
        await harness.start(
            anthropic_base_url=fake_anthropic.url,
            start_timeout_seconds=600,
            anthropic_api_key=SecretStr(api_key),
            claude_code_oauth_token=SecretStr(oauth),
            factory_api_key=SecretStr(factory_key),
            egress_run_dir=private_egress_dir,
        )
        claude = await harness.client.create(agent_type="CLAUDE")
        custom = await harness.client.create(agent_type="CUSTOM", agent_command=["cat"])
        assert claude.ok and custom.ok, (claude, custom)
        assert claude.worker_id and custom.worker_id
        for worker_id in (claude.worker_id, custom.worker_id):
            assert await harness.wait_status(worker_id, "RUNNING", "FAILED") == "RUNNING"

        # The CLAUDE worker's key is a token of its own, for the gateway on its loopback relay.
        claude_container = harness.container(claude.worker_id)
        claude_env = env_of(claude_container)
        token = claude_env["ANTHROPIC_API_KEY"]
        assert token.startswith("wm-") and token not in values
        assert claude_env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:3129"
        assert not {"CLAUDE_CODE_OAUTH_TOKEN", "FACTORY_API_KEY"} & set(claude_env)
        custom_env = env_of(harness.container(custom.worker_id))
        assert not {"ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "FACTORY_API_KEY"} & set(
            custom_env
        )

        # The real CLI answers through the gateway; the agent sees its token, not the wrapper's
        # Redis URL.
        input_id = await harness.client.send_input(
            claude.worker_id,
            'FAKE bash echo "key=${ANTHROPIC_API_KEY:0:3}"; '
            '[ -z "$WM_REDIS_URL" ] && echo no-redis-url',
        )
        events = await harness.events_until_done(claude.worker_id, input_id=input_id)
        tool_result = next(
            json.loads(e["content"])
            for e in events
            if e["type"] == "tool_result" and e["input_id"] == input_id
        )
        assert tool_result["content"] == "key=wm-\nno-redis-url"
        assert events[-1]["type"] == "done" and events[-1]["content"] == "0"
        # The API saw the operator's key, added by the gateway (a contained container has no
        # route to the API at all), and never the worker's token.
        mine = fake_anthropic.requests[seen_before:]
        assert mine
        assert all(r.headers.get("x-api-key") == api_key for r in mine)
        assert not [r for r in mine if token in json.dumps(r.headers)]

        # docker exec as root finds no key of the operator's anywhere in either container.
        for container in (claude_container, harness.container(custom.worker_id)):
            for value in values:
                assert found_inside(container, value) == [], container.name

        container_logs = claude_container.logs().decode("utf-8", "replace")
        for worker_id in (claude.worker_id, custom.worker_id):
            assert (await harness.client.request("delete", worker_id=worker_id)).ok

    stored = await every_value(harness.redis)
    acl_list = await harness.redis.execute_command("ACL", "LIST")
    assert any(harness.keys.output(claude.worker_id) in text for text in stored)  # we looked
    assert logs, "the manager logged nothing: the capture did not work"
    rendered_logs = json.dumps(logs, default=str)
    service_log = (private_egress_dir / "service.log").read_text(errors="replace")
    assert "egress service ready" in service_log
    for value in values:
        assert not [text for text in stored if value in text]
        assert value not in json.dumps(acl_list, default=str)
        assert value not in rendered_logs
        assert value not in container_logs
        assert value not in service_log
    # The worker's token died with it: the gateway no longer serves that worker.
    assert not (private_egress_dir / "workers" / claude.worker_id).exists()


async def test_uncontained_workers_get_their_keys_as_before(
    harness: Harness, fake_anthropic: FakeAnthropic
) -> None:
    """WM_EGRESS=off (documented as unsafe) keeps the old behaviour: the key crosses."""
    api_key = f"sk-ant-test-{secrets.token_hex(16)}"
    await harness.start(
        egress="off",
        anthropic_base_url=fake_anthropic.url,
        start_timeout_seconds=600,
        anthropic_api_key=SecretStr(api_key),
    )
    claude = await harness.client.create(agent_type="CLAUDE")
    assert claude.ok and claude.worker_id, claude
    assert await harness.wait_status(claude.worker_id, "RUNNING", "FAILED") == "RUNNING"
    container = harness.container(claude.worker_id)
    assert container.attrs["HostConfig"]["NetworkMode"] != "none"
    assert env_of(container)["ANTHROPIC_API_KEY"] == api_key
    assert (await harness.client.request("delete", worker_id=claude.worker_id)).ok
