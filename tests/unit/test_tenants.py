"""Tenants as data (SPEC §11): names, ``WM_TENANTS``, the keys of a tenant's namespace, the
quotas' sentences. Their behaviour against Redis and the Engine: integration/test_tenants.py."""

from __future__ import annotations

import pytest

from worker_manager.contract.tenants import (
    TenantQuota,
    over_budget,
    parse_tenants,
    tenant_name,
    workers_refused,
)
from worker_manager.core.keys import Keys
from worker_manager.settings import Settings


@pytest.mark.parametrize("name", ["acme", "a", "team-7", "x_y", "0abc", "a" * 40])
def test_valid_tenant_names(name: str) -> None:
    assert tenant_name(name) == name


@pytest.mark.parametrize("name", ["", "Acme", "-a", "a:b", "a b", "a*", "a" * 41, "é"])
def test_invalid_tenant_names_are_refused_naming_the_rule(name: str) -> None:
    with pytest.raises(ValueError, match="1-40 of a-z"):
        tenant_name(name)


def test_wm_tenants_is_a_list_or_an_object_of_quotas() -> None:
    assert parse_tenants('["acme", "beta"]') == {"acme": TenantQuota(), "beta": TenantQuota()}
    parsed = parse_tenants('{"acme": {"max_workers": 20, "max_cost_usd_per_day": 50}}')
    assert parsed == {"acme": TenantQuota(max_workers=20, max_cost_usd_per_day=50)}
    assert parse_tenants("") == {}
    with pytest.raises(ValueError, match="max_wokers"):
        parse_tenants('{"acme": {"max_wokers": 2}}')  # a misspelt quota is not ignored
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        parse_tenants('{"acme": {"max_workers": 0}}')
    with pytest.raises(ValueError, match="a JSON list of names"):
        parse_tenants("42")


def test_settings_read_wm_tenants_and_give_each_tenant_its_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WM_TENANTS", '{"acme": {"max_workers": 3}}')
    settings = Settings(key_prefix="wm")
    assert settings.tenants["acme"].max_workers == 3
    assert settings.keys == Keys("wm")
    acme = settings.for_tenant("acme")
    assert acme.tenant == "acme" and settings.tenant is None
    assert acme.keys.commands == "wm:t:acme:commands"
    assert acme.for_tenant(None).keys == settings.keys


def test_a_tenants_keys_are_its_own_and_the_fleets_stay_the_fleets() -> None:
    fleet = Keys("worker")
    acme = fleet.for_tenant("acme")
    for key in (
        acme.commands,
        acme.replies,
        acme.dead,
        acme.index,
        acme.lifecycle,
        acme.worker("w"),
        acme.input("w"),
        acme.output("w"),
        acme.heartbeat("w"),
        acme.spec("w"),
        acme.snapshots,
        acme.grants,
        acme.live("m"),
        acme.team_board("t"),
        acme.spend("2026-12-07"),
    ):
        assert key.startswith("worker:t:acme:"), key
    for key in (
        acme.images,
        acme.image("h"),
        acme.managers,
        acme.manager("m"),
        acme.manager_wait("m"),
        acme.audit,
        acme.access,
        acme.tenants,
        acme.build_lock("h"),
        acme.build_failure("h"),
        acme.gc_lock,
        acme.gc_last_run,
    ):
        assert key == key.replace("worker:t:acme", "worker") and key.startswith("worker:"), key
        assert key in {
            fleet.images,
            fleet.image("h"),
            fleet.managers,
            fleet.manager("m"),
            fleet.manager_wait("m"),
            fleet.audit,
            fleet.access,
            fleet.tenants,
            fleet.build_lock("h"),
            fleet.build_failure("h"),
            fleet.gc_lock,
            fleet.gc_last_run,
        }
    assert acme.access_user("ann") == fleet.access_user("ann") == "worker-access-ann"
    # Docker names cannot hold ':'; the label keeps the namespace itself.
    assert acme.docker_name("w") == "worker-t-acme-w"
    assert fleet.docker_name("w") == "worker-w"


def test_the_quotas_sentences_name_the_quota() -> None:
    quota = TenantQuota(max_workers=2, max_cost_usd_per_day=5)
    assert "max_workers" in workers_refused("acme", quota) and "2" in workers_refused("acme", quota)
    assert over_budget("acme", quota, 4.99) is None
    refused = over_budget("acme", quota, 5.0)
    assert refused is not None and "max_cost_usd_per_day" in refused and "$5.00" in refused
    assert over_budget("acme", TenantQuota(), 1e9) is None


def test_a_namespace_keeps_to_its_fair_share_only_while_another_is_busy() -> None:
    from worker_manager.commands.fairness import BUSY_SECONDS, limit

    now = 100.0
    assert limit("a", 64, 8, {}, now) == 64  # alone
    assert limit("a", 64, 8, {"a": now}, now) == 64  # busy itself: still alone
    assert limit("a", 64, 8, {"a": now, "b": now - 0.5}, now) == 8  # b busy: a's share
    assert limit("a", 64, 8, {"b": now - BUSY_SECONDS - 0.1}, now) == 64  # b went quiet
    assert limit("a", 4, 8, {"b": now}, now) == 4  # never more than WM_COMMAND_CONCURRENCY
