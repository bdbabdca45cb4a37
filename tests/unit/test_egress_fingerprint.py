"""Which settings the egress service runs with, compared without a service: the keyed digests,
the decision (keep, restart, refuse), the managers' leases and what a spawned service is given.

The service, spawned or found, must serve a manager with that manager's settings; the
integration test (tests/integration/test_egress_follows.py) shows it end to end."""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from worker_manager.egress import service as service_module
from worker_manager.egress.control import accepted_variables, reported_settings, service_environment
from worker_manager.egress.fingerprint import (
    KEY_FILE,
    NOT_COMPARED,
    SERVICE_SETTINGS,
    Verdict,
    decide,
    differences,
    digest_key,
    settings_digests,
)
from worker_manager.egress.leases import Lease, live_leases
from worker_manager.settings import Settings

OLD_KEY = "sk-ant-old-0123456789abcdef"
NEW_KEY = "sk-ant-new-fedcba9876543210"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No operator setting of the machine running the tests leaks into these."""
    for name, _variable in SERVICE_SETTINGS + NOT_COMPARED:
        for variable in accepted_variables(name):
            monkeypatch.delenv(variable, raising=False)
            monkeypatch.delenv(f"{variable}_FILE", raising=False)
    monkeypatch.delenv("WM_SECRETS_DIR", raising=False)


def load(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


KEY = bytes(range(32))


# --- the digests -------------------------------------------------------------------------------
def test_every_setting_the_service_acts_on_has_a_digest_and_no_value_shows() -> None:
    settings = load(
        anthropic_api_key=SecretStr(OLD_KEY),
        redis_url="redis://:hunter2@redis.example:6379/0",
        git_credentials=SecretStr('{"git.example": "ghp_token"}'),
    )
    digests = settings_digests(settings, KEY)
    assert sorted(digests) == sorted(variable for _f, variable in SERVICE_SETTINGS)
    shown = repr(digests)
    for value in (OLD_KEY, "hunter2", "ghp_token", "redis.example"):
        assert value not in shown
    # Keyed: another run directory's key gives other digests for the same settings.
    other = settings_digests(settings, bytes(32))
    assert all(other[name] != digests[name] for name in digests)


def test_a_rotated_key_differs_in_that_setting_alone() -> None:
    old = settings_digests(load(anthropic_api_key=SecretStr(OLD_KEY)), KEY)
    new = settings_digests(load(anthropic_api_key=SecretStr(NEW_KEY)), KEY)
    assert differences(old, new) == ["WM_ANTHROPIC_API_KEY"]
    assert differences(new, new) == []


def test_a_key_rotated_in_its_secret_file_differs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "anthropic"
    secret.write_text(OLD_KEY + "\n")
    monkeypatch.setenv("ANTHROPIC_API_KEY_FILE", str(secret))
    before = settings_digests(load(), KEY)
    secret.write_text(NEW_KEY + "\n")
    after = settings_digests(load(), KEY)
    assert differences(before, after) == ["WM_ANTHROPIC_API_KEY"]


def test_a_ca_file_changed_in_place_differs(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("one\n")
    before = settings_digests(load(egress_upstream_ca=ca), KEY)
    ca.write_text("two\n")
    after = settings_digests(load(egress_upstream_ca=ca), KEY)
    assert differences(before, after) == ["WM_EGRESS_UPSTREAM_CA"]


def test_a_service_that_reports_no_settings_differs_in_all() -> None:
    ours = settings_digests(load(), KEY)
    assert differences(None, ours) == sorted(ours)
    assert reported_settings({"ok": True}) is None
    assert reported_settings({"settings": dict(ours)}) == ours


def test_the_digest_key_is_made_once_root_only(tmp_path: Path) -> None:
    first = digest_key(tmp_path)
    assert len(first) == 32 and digest_key(tmp_path) == first
    mode = stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode)
    assert mode == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE]  # no scratch file left


# --- the decision ------------------------------------------------------------------------------
OURS = {"WM_REDIS_URL": "r1", "WM_ANTHROPIC_API_KEY": "k2", "WM_ANTHROPIC_BASE_URL": "u2"}
THEIRS = {"WM_REDIS_URL": "r1", "WM_ANTHROPIC_API_KEY": "k1", "WM_ANTHROPIC_BASE_URL": "u1"}


def test_same_settings_keep_the_service() -> None:
    decision = decide(dict(OURS), OURS, {"m2.ab": dict(OURS)}, may_restart=True)
    assert decision.verdict is Verdict.KEEP


def test_other_settings_and_nobody_else_restart_it() -> None:
    decision = decide(THEIRS, OURS, {}, may_restart=True)
    assert decision.verdict is Verdict.RESTART
    assert decision.differing == ("WM_ANTHROPIC_API_KEY", "WM_ANTHROPIC_BASE_URL")


def test_other_managers_with_our_settings_do_not_block_a_restart() -> None:
    """Several managers rotated together: the first restarts the service, the rest keep it."""
    decision = decide(THEIRS, OURS, {"m2.ab": dict(OURS)}, may_restart=True)
    assert decision.verdict is Verdict.RESTART


def test_a_live_manager_with_the_services_settings_refuses_the_newcomer() -> None:
    decision = decide(THEIRS, OURS, {"m1.cd": dict(THEIRS)}, may_restart=True)
    assert decision.verdict is Verdict.REFUSE
    assert decision.blockers == ("m1.cd",)
    message = decision.explain(Path("/run/eg"))
    assert "WM_ANTHROPIC_API_KEY, WM_ANTHROPIC_BASE_URL" in message and "m1.cd" in message
    for digest in (*THEIRS.values(), *OURS.values()):
        assert f"{digest}," not in message and f"{digest})" not in message


def test_an_unreadable_lease_counts_as_other_settings() -> None:
    decision = decide(THEIRS, OURS, {"m1.cd": None}, may_restart=True)
    assert decision.verdict is Verdict.REFUSE


def test_a_service_this_manager_may_not_start_is_refused_not_restarted() -> None:
    decision = decide(THEIRS, OURS, {}, may_restart=False)
    assert decision.verdict is Verdict.REFUSE
    assert "WM_EGRESS_SPAWN is off" in decision.explain(Path("/run/eg"))


def test_a_manager_beside_a_supervised_service_compares_only_what_it_sets() -> None:
    """docker-compose gives the keys to the egress service alone (WM_EGRESS_SPAWN=false): the
    manager holding none is served; one whose own Redis or key differs is refused."""
    service = settings_digests(
        load(redis_url="redis://:pw@redis:6379/0", anthropic_api_key=SecretStr(OLD_KEY)), KEY
    )
    keyless = settings_digests(load(redis_url="redis://:pw@redis:6379/0"), KEY, only_set=True)
    assert sorted(keyless) == ["WM_REDIS_URL"]
    assert decide(service, keyless, {}, may_restart=False).verdict is Verdict.KEEP
    elsewhere = settings_digests(load(redis_url="redis://:pw@other:6379/0"), KEY, only_set=True)
    refused = decide(service, elsewhere, {}, may_restart=False)
    assert (refused.verdict, refused.differing) == (Verdict.REFUSE, ("WM_REDIS_URL",))
    stale = settings_digests(
        load(redis_url="redis://:pw@redis:6379/0", anthropic_api_key=SecretStr(NEW_KEY)),
        KEY,
        only_set=True,
    )
    assert decide(service, stale, {}, may_restart=False).differing == ("WM_ANTHROPIC_API_KEY",)


def test_a_manager_that_holds_fewer_settings_blocks_only_a_change_of_those() -> None:
    partial = {"WM_REDIS_URL": "r1"}
    assert decide(THEIRS, OURS, {"m1.cd": partial}, may_restart=True).verdict is Verdict.RESTART
    moved = {**OURS, "WM_REDIS_URL": "r2"}
    assert decide(THEIRS, moved, {"m1.cd": partial}, may_restart=True).blockers == ("m1.cd",)


# --- the leases --------------------------------------------------------------------------------
def test_a_lease_is_seen_while_held_and_gone_when_released(tmp_path: Path) -> None:
    first, second = Lease(tmp_path, "m1"), Lease(tmp_path, "m2")
    first.take(THEIRS)
    second.take(OURS)
    assert second.others() == {first.name: THEIRS}
    assert first.others() == {second.name: OURS}
    first.release()
    assert second.others() == {}
    assert not first.path.exists()


def test_a_lease_nobody_holds_is_stale_and_removed(tmp_path: Path) -> None:
    lease = Lease(tmp_path, "m1")
    lease.take(THEIRS)
    stale = lease.path.with_name("dead.00000000.lease")
    stale.write_text('{"settings": {}}')  # written, never locked: its manager is gone
    assert live_leases(lease.path.parent, besides=lease.name) == {}
    assert not stale.exists()
    lease.release()


def test_a_lease_taken_again_with_new_settings_shows_them(tmp_path: Path) -> None:
    lease, other = Lease(tmp_path, "m1"), Lease(tmp_path, "m2")
    lease.take(THEIRS)
    lease.take(OURS)
    assert other.others() == {lease.name: OURS}
    lease.release()


# --- what a spawned service is given -----------------------------------------------------------
def test_a_spawned_service_gets_exactly_the_managers_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Set directly, the manager's value; unset, none at all: never one the service would read
    from another name, a ``_FILE`` or ``WM_SECRETS_DIR`` that the manager did not compare."""
    stale = tmp_path / "stale-key"
    stale.write_text(OLD_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY_FILE", str(stale))
    monkeypatch.setenv("CLAUDE_CODE_OAUTH_TOKEN", "oauth-of-the-environment")
    monkeypatch.setenv("WM_SECRETS_DIR", str(tmp_path))
    settings = load(anthropic_api_key=SecretStr(NEW_KEY), claude_code_oauth_token=None)
    env = service_environment(settings)
    assert env["WM_ANTHROPIC_API_KEY"] == NEW_KEY
    for gone in ("ANTHROPIC_API_KEY_FILE", "CLAUDE_CODE_OAUTH_TOKEN", "WM_SECRETS_DIR"):
        assert gone not in env
    assert "WM_CLAUDE_CODE_OAUTH_TOKEN" not in env
    # What the service reads from that environment digests as the manager's own settings.
    for name in [n for n in os.environ if n not in env]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert settings_digests(load(), KEY) == settings_digests(settings, KEY)


def test_every_setting_the_service_reads_is_passed_on_and_compared() -> None:
    """A setting the service reads but a manager does not pass on would silently take the
    service's default; one passed on but not compared would let a difference go unseen."""
    tree = ast.parse(Path(service_module.__file__).read_text())
    read = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute | ast.Name)
        and getattr(node.value, "attr", getattr(node.value, "id", "")) in ("settings", "_settings")
    }
    compared = {field for field, _variable in SERVICE_SETTINGS}
    allowed = compared | {field for field, _variable in NOT_COMPARED}
    assert read, "no setting read found: the test no longer sees the service's reads"
    assert read <= allowed, f"read but not passed on: {sorted(read - allowed)}"
