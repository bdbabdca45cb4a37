"""A settings conflict found after start-up (the service was restarted under a running manager,
with other settings): the manager keeps its lease, refuses its creates' grants while it lasts,
and serves again once the settings agree. The service's ``/healthz`` is played by a stub."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from worker_manager.egress.control import EgressClient, EgressRefused
from worker_manager.egress.fingerprint import EgressSettingsConflict
from worker_manager.egress.grants import Grant
from worker_manager.egress.leases import live_leases
from worker_manager.egress.version import service_version
from worker_manager.settings import Settings


def load(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


class StubbedClient(EgressClient):
    """The manager's client, with the service's answers played by the test."""

    health: dict[str, object]
    calls: list[str]

    async def _health(self) -> dict[str, object] | None:
        return self.health

    async def _call(self, method: str, path: str, body: str | None = None) -> object:
        self.calls.append(f"{method} {path}")
        return {}


def client_of(tmp_path: Path) -> StubbedClient:
    settings = load(
        egress_run_dir=str(tmp_path),
        egress_spawn=False,  # a supervised service: never restarted, refused on a conflict
        anthropic_api_key=SecretStr("sk-ant-ours-0123456789"),
        manager_id="m1",
    )
    client = StubbedClient(settings)
    client.calls = []
    return client


def health_with(digests: dict[str, str]) -> dict[str, object]:
    return {"settings": digests, "version": service_version(), "pid": 4242}


async def test_a_conflict_after_start_up_keeps_the_lease_and_refuses_grants(
    tmp_path: Path,
) -> None:
    client = client_of(tmp_path)
    ours = client.digests()
    client.health = health_with(ours)
    await client.ensure_running()
    assert client.conflict is None
    grant = Grant(worker_id="w1", key_prefix="wm")
    await client.grant(grant)
    assert client.calls == ["PUT /workers/w1"]

    # A supervisor restarted the service with another key under this manager.
    client.health = health_with({**ours, "WM_ANTHROPIC_API_KEY": "another digest"})
    for _ in range(3):  # each periodic check
        with pytest.raises(EgressSettingsConflict, match="WM_ANTHROPIC_API_KEY"):
            await client.ensure_running()
        # The lease is kept: this manager's workers are still served there.
        assert list(live_leases(tmp_path / "managers")), "the lease was given up"
    with pytest.raises(EgressRefused, match="WM_ANTHROPIC_API_KEY"):
        await client.grant(Grant(worker_id="w2", key_prefix="wm"))
    assert client.calls == ["PUT /workers/w1"], "nothing granted with other settings"

    # The settings agree again: grants go through.
    client.health = health_with(ours)
    await client.ensure_running()
    assert client.conflict is None
    await client.grant(Grant(worker_id="w2", key_prefix="wm"))
    assert client.calls[-1] == "PUT /workers/w2"
    await client.close()
    assert not list(live_leases(tmp_path / "managers"))


async def test_a_conflict_at_start_up_gives_the_lease_up(tmp_path: Path) -> None:
    client = client_of(tmp_path)
    client.health = health_with({**client.digests(), "WM_ANTHROPIC_API_KEY": "another digest"})
    with pytest.raises(EgressSettingsConflict, match="WM_ANTHROPIC_API_KEY"):
        await client.ensure_running()
    assert not list(live_leases(tmp_path / "managers"))
    await client.close()
