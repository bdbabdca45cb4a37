"""The egress service follows the managers it serves (issue 24 §1): a manager started with a new
upstream and a rotated key on a host whose service was started by another manager gets them,
for the workers registered before as for the new ones; while a manager with other settings
still uses the service, a newcomer refuses to start, naming the settings that differ.

Real managers (started through ``Manager.run``), the real service they spawn on a run directory
of the test's own, two scripted Messages APIs that record the key they were sent, and workers
registered through the manager's containment and reached on their ``gateway.sock`` as their
wrapper's relay reaches it. ``private_egress_dir`` comes before ``harness``: torn down after the
managers stop, so no manager starts the service again in a directory being removed.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr

from tests.support.fake_anthropic import FakeAnthropic
from tests.support.flows import Harness
from worker_manager.contract.commands import CreateCommand, parse_command
from worker_manager.egress.control import EgressClient
from worker_manager.egress.fingerprint import EgressSettingsConflict
from worker_manager.egress.grants import GATEWAY_SOCKET, RunDir
from worker_manager.service.manager import Manager
from worker_manager.settings import Settings

pytestmark = [pytest.mark.docker, pytest.mark.redis]


@pytest.fixture
def apis() -> Iterator[tuple[FakeAnthropic, FakeAnthropic]]:
    """The upstream before the change and the one after (both on the host's loopback: the
    service, not a container, connects to them)."""
    with FakeAnthropic() as old, FakeAnthropic() as new:
        yield old, new


def claude_create(settings: Settings) -> CreateCommand:
    command = parse_command(
        {"command": "create", "agent_type": "CLAUDE"},
        "1-0",
        settings,
        replies=settings.keys.replies,
    )
    assert isinstance(command, CreateCommand)
    return command


async def register(manager: Manager) -> tuple[Path, str]:
    """A CLAUDE worker granted by this manager: its gateway socket and its token."""
    worker_id = f"w-{secrets.token_hex(4)}"
    sockets = await manager.containment.admit(worker_id, claude_create(manager.settings))
    assert sockets is not None
    return Path(sockets) / GATEWAY_SOCKET, manager.containment.gateway_token(worker_id)


async def ask(socket: Path, token: str, marker: str) -> int:
    """One Messages call as the worker's CLI makes it, through its gateway socket."""
    body = {
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": f"FAKE say hi\n({marker})"}],
    }
    headers = {"anthropic-version": "2023-06-01", "x-api-key": token}
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket))) as session,
        session.post("http://worker/v1/messages", json=body, headers=headers) as response,
    ):
        await response.read()
        return response.status


def keys_seen(api: FakeAnthropic, marker: str) -> list[str]:
    """The operator key each request carrying ``marker`` reached this API with."""
    return [r.headers.get("x-api-key", "") for r in list(api.requests) if marker in r.text()]


async def health(settings: Settings) -> dict[str, object]:
    client = EgressClient(settings)
    try:
        found = await client._call("GET", "/healthz")
    finally:
        await client.close()
    assert isinstance(found, dict)
    return found


def read_key_file(path: Path, monkeypatch: pytest.MonkeyPatch) -> SecretStr:
    """The key as a manager reads it from its secret file (``ANTHROPIC_API_KEY_FILE``)."""
    monkeypatch.setenv("ANTHROPIC_API_KEY_FILE", str(path))
    for name in ("ANTHROPIC_API_KEY", "WM_ANTHROPIC_API_KEY", "WM_ANTHROPIC_API_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    key = Settings(_env_file=None).anthropic_api_key  # type: ignore[call-arg]
    assert key is not None
    return key


async def test_a_rotated_key_and_a_new_upstream_reach_workers_old_and_new(
    private_egress_dir: Path,
    harness: Harness,
    apis: tuple[FakeAnthropic, FakeAnthropic],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old_api, new_api = apis
    old_key, new_key = (f"sk-ant-{name}-{secrets.token_hex(12)}" for name in ("old", "new"))
    key_file = tmp_path / "anthropic-api-key"
    key_file.write_text(old_key + "\n")
    first = await harness.start(
        egress_run_dir=private_egress_dir,
        anthropic_base_url=old_api.url,
        anthropic_api_key=read_key_file(key_file, monkeypatch),
    )
    before = await health(first.settings)
    earlier_socket, earlier_token = await register(first)
    assert await ask(earlier_socket, earlier_token, "one") == 200
    assert keys_seen(old_api, "one") == [old_key]
    await harness.stop(first)

    # The rotation: the secret file holds the new key, and the API moved. The service the first
    # manager started still runs (it outlives its manager) with the old ones.
    key_file.write_text(new_key + "\n")
    second = await harness.start(
        egress_run_dir=private_egress_dir,
        anthropic_base_url=new_api.url,
        anthropic_api_key=read_key_file(key_file, monkeypatch),
    )

    # The worker granted before the rotation is served again, with the new key at the new API.
    assert await ask(earlier_socket, earlier_token, "two") == 200
    assert keys_seen(new_api, "two") == [new_key], keys_seen(old_api, "two")
    after = await health(second.settings)
    assert after["pid"] != before["pid"]  # by a service restarted with the new settings
    # And so is one granted after it.
    later_socket, later_token = await register(second)
    assert await ask(later_socket, later_token, "three") == 200
    assert keys_seen(new_api, "three") == [new_key]
    assert keys_seen(old_api, "two") == keys_seen(old_api, "three") == []

    # Neither key in clear anywhere the service or the managers keep things on the host.
    for path in private_egress_dir.rglob("*"):
        if path.is_file():
            text = path.read_bytes()
            assert old_key.encode() not in text and new_key.encode() not in text, path
    shown = json.dumps(after)
    assert old_key not in shown and new_key not in shown


async def test_a_manager_with_other_settings_refuses_while_the_first_still_uses_the_service(
    private_egress_dir: Path, harness: Harness, apis: tuple[FakeAnthropic, FakeAnthropic]
) -> None:
    old_api, new_api = apis
    old_key, new_key = (f"sk-ant-{name}-{secrets.token_hex(12)}" for name in ("old", "new"))
    first = await harness.start(
        egress_run_dir=private_egress_dir,
        anthropic_base_url=old_api.url,
        anthropic_api_key=SecretStr(old_key),
    )
    before = await health(first.settings)
    socket, token = await register(first)

    other = harness.settings.model_copy(
        update={
            "egress_run_dir": private_egress_dir,
            "anthropic_base_url": new_api.url,
            "anthropic_api_key": SecretStr(new_key),
            "manager_id": f"{harness.settings.manager_id}-b",
        }
    )
    second = Manager(other, docker=harness.docker)
    running = asyncio.create_task(second.run(grace=1))
    ready = asyncio.create_task(second.ready.wait())
    try:
        await asyncio.wait({running, ready}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        started = second.ready.is_set()
    finally:
        ready.cancel()
        second.stop.set()
        await asyncio.wait({running}, timeout=30)
        await second.close()
    assert not started, "a manager with other settings started on the first one's service"
    with pytest.raises(EgressSettingsConflict) as refused:
        running.result()
    message = str(refused.value)
    assert "WM_ANTHROPIC_API_KEY" in message and "WM_ANTHROPIC_BASE_URL" in message
    assert old_key not in message and new_key not in message

    # The first manager's service was left alone: same process, same key, same API.
    assert (await health(first.settings))["pid"] == before["pid"]
    assert await ask(socket, token, "kept") == 200
    assert keys_seen(old_api, "kept") == [old_key]
    assert keys_seen(new_api, "kept") == []

    # A manager with the same settings shares the service as it is.
    third = await harness.start(
        egress_run_dir=private_egress_dir,
        anthropic_base_url=old_api.url,
        anthropic_api_key=SecretStr(old_key),
        manager_id=f"{harness.settings.manager_id}-c",
    )
    assert (await health(third.settings))["pid"] == before["pid"]
    leases = sorted(p.name for p in (RunDir(private_egress_dir).root / "managers").iterdir())
    assert len(leases) == 2, leases  # the first and the third; the refused one left none
