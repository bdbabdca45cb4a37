"""The heartbeat's value (written by the wrapper, judged by the manager) and the cost ledger."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from worker_base.clock import iso_from_unix
from worker_base.heartbeat import HeartbeatInvalid, parse_heartbeat
from worker_base.ledger import CostLedger, format_usd

NOW = 1_800_000_000.0


def test_a_plain_time_is_a_heartbeat() -> None:
    beat = parse_heartbeat(iso_from_unix(NOW - 5), NOW)
    assert beat.activity == pytest.approx(NOW - 5)
    assert beat.cost_usd is None and beat.budget_exceeded is False


def test_facts_after_the_time_are_read_and_bounded() -> None:
    beat = parse_heartbeat(f"{iso_from_unix(NOW)} cost=0.42000 budget=exceeded future=1", NOW)
    assert beat.cost_usd == "0.42" and beat.budget_exceeded is True


def test_a_time_in_the_future_is_clamped_to_now() -> None:
    assert parse_heartbeat("2999-01-01T00:00:00.000Z", NOW).activity == NOW


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "yesterday",
        "2026-11-25T10:00:00",  # no zone: not what the wrapper writes
        "2026-11-25T10:00:00.000Z cost=lots",
        "2026-11-25T10:00:00.000Z cost=-1",
        "2026-11-25T10:00:00.000Z cost=nan",
        "2026-11-25T10:00:00.000Z cost=1e300",
        "2026-11-25T10:00:00.000Z " + "x" * 300,
        b"\xff\xfe",
        ["a", "list"],
    ],
)
def test_anything_else_is_invalid(value: object) -> None:
    with pytest.raises(HeartbeatInvalid):
        parse_heartbeat(value, NOW)


def test_ledger_counts_session_totals_once_and_persists(tmp_path: Path) -> None:
    ledger = CostLedger(tmp_path, max_cost_usd=1.0)
    assert ledger.charge_session_total("s1", 0.25).input_usd == pytest.approx(0.25)
    charge = ledger.charge_session_total("s1", 0.5)  # the session's running total
    assert charge.input_usd == pytest.approx(0.25) and charge.total_usd == pytest.approx(0.5)
    assert ledger.remaining_usd == pytest.approx(0.5) and not ledger.exhausted
    again = CostLedger(tmp_path, max_cost_usd=1.0)  # a restarted wrapper
    assert again.total_usd == pytest.approx(0.5)
    assert again.charge_session_total("s1", 0.75).input_usd == pytest.approx(0.25)
    assert again.charge(0.3).total_usd == pytest.approx(1.05)
    assert again.exhausted and again.remaining_usd == 0
    assert again.heartbeat_suffix() == "cost=1.05 budget=exceeded"


def test_ledger_ignores_what_is_not_money(tmp_path: Path) -> None:
    ledger = CostLedger(tmp_path)
    for bad in (float("nan"), float("inf"), -1.0):
        assert ledger.charge(bad).total_usd == 0
    assert ledger.remaining_usd is None and not ledger.exhausted
    (tmp_path / "cost.json").write_text("{not json")
    assert CostLedger(tmp_path).total_usd == 0  # a corrupt file is not a crash


def test_usd_is_a_plain_decimal() -> None:
    assert format_usd(0.0) == "0"
    assert format_usd(1e-7) == "0"
    assert format_usd(12.5) == "12.5"
    assert "e" not in format_usd(time.time())
