"""Fork and snapshots (SPEC §10) without Docker: the commands' grammar, the decisions of
``snapshots.plan`` and ``snapshots.retention``, and the copy's first start in the wrapper
(``worker_base.forks``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.offline import offline_settings
from worker_base import forks
from worker_base.ledger import LEDGER_NAME, CostLedger
from worker_manager.contract.commands import ForkCommand, SnapshotCommand, parse_command
from worker_manager.contract.kinds import WorkerStatus
from worker_manager.contract.record import WorkerRecord
from worker_manager.contract.reply import Reply
from worker_manager.core.errors import InvalidCommand
from worker_manager.settings import Settings
from worker_manager.snapshots import plan
from worker_manager.snapshots.retention import expired
from worker_manager.snapshots.store import Snapshot

SOURCE = "3f2b8c1e-0d7a-4c55-9a51-2f0e6b1c9d42"


settings = offline_settings


def parse(fields: dict[str, str], s: Settings | None = None) -> Any:
    s = s or settings()
    return parse_command(fields, "1-0", s, replies=s.keys.replies)


# --- the commands ---------------------------------------------------------------------------
def test_fork_and_snapshot_commands_parse() -> None:
    fork = parse({"command": "fork", "worker_id": SOURCE, "count": "3"})
    assert isinstance(fork, ForkCommand) and fork.count == 3 and fork.worker_ids is None
    chosen = [f"00000000-0000-4000-8000-00000000000{i}" for i in range(2)]
    named = parse(
        {"command": "fork", "worker_id": SOURCE, "count": "2", "worker_ids": json.dumps(chosen)}
    )
    assert named.worker_ids == chosen
    snap = parse({"command": "snapshot", "worker_id": SOURCE, "name": "prepared-1.0"})
    assert isinstance(snap, SnapshotCommand) and snap.name == "prepared-1.0"
    assert parse({"command": "list_snapshots"}).command == "list_snapshots"
    assert parse({"command": "delete_snapshot", "name": "x"}).name == "x"
    create = parse(
        {
            "command": "create",
            "agent_type": "CUSTOM",
            "agent_command": '["cat"]',
            "from_snapshot": "x",
        }
    )
    assert create.from_snapshot == "x"


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"command": "fork", "worker_id": SOURCE, "count": "17"}, "at most 16 (WM_MAX_FORK)"),
        ({"command": "fork", "worker_id": SOURCE, "count": "0"}, "count"),
        (
            {
                "command": "fork",
                "worker_id": SOURCE,
                "count": "2",
                "worker_ids": json.dumps([SOURCE]),
            },
            "has 1 ids for count 2",
        ),
        (
            {"command": "fork", "worker_id": SOURCE, "worker_ids": json.dumps([SOURCE])},
            "names the source itself",
        ),
        ({"command": "snapshot", "worker_id": SOURCE, "name": "a b"}, "[A-Za-z0-9._-]"),
        ({"command": "snapshot", "worker_id": SOURCE, "name": "x" * 65}, "1 to 64"),
        ({"command": "delete_snapshot"}, "name"),
        (
            {
                "command": "create",
                "agent_type": "CUSTOM",
                "agent_command": '["cat"]',
                "from_snapshot": "../x",
            },
            "from_snapshot",
        ),
    ],
)
def test_malformed_fork_and_snapshot_commands_are_named(fields: dict[str, str], words: str) -> None:
    with pytest.raises(InvalidCommand) as caught:
        parse(fields)
    assert words in caught.value.message, caught.value.message


def test_wm_max_fork_bounds_a_fork() -> None:
    assert (
        parse({"command": "fork", "worker_id": SOURCE, "count": "40"}, settings(max_fork=40)).count
        == 40
    )


def test_replies_carry_the_copies_and_the_snapshots_as_json() -> None:
    reply = Reply(request_id="r", command="fork", ok=True, worker_ids=["a", "b"])
    fields = reply.to_fields()
    assert json.loads(fields["worker_ids"]) == ["a", "b"]
    assert Reply.from_fields(fields).worker_ids == ["a", "b"]
    listed = Reply(request_id="r", command="list_snapshots", ok=True, snapshots=[{"name": "x"}])
    assert Reply.from_fields(listed.to_fields()).snapshots == [{"name": "x"}]
    # A status reply's ``snapshot`` is the record's field (a name), not JSON.
    status = Reply.from_fields(
        {"request_id": "r", "command": "status", "ok": "true", "snapshot": "x"}
    )
    assert status.details == {"snapshot": "x"} and status.snapshot is None


# --- the decisions --------------------------------------------------------------------------
def test_only_a_running_worker_between_inputs_or_a_suspended_one_is_copied() -> None:
    assert plan.copy_problem(WorkerStatus.RUNNING, busy=False) is None
    assert plan.copy_problem(WorkerStatus.SUSPENDED, busy=True) is None
    assert "busy with an input" in str(plan.copy_problem(WorkerStatus.RUNNING, busy=True))
    assert "is STARTING" in str(plan.copy_problem(WorkerStatus.STARTING, busy=False))
    assert "is gone" in str(plan.copy_problem(None, busy=False))


def group(pending: int, delivered: str) -> dict[str, Any]:
    return {"name": b"wrapper", "pending": pending, "last-delivered-id": delivered.encode()}


def test_idle_means_no_input_in_hand_and_none_waiting() -> None:
    assert plan.idle_inputs([group(0, "5-0")], "5-0")
    assert not plan.idle_inputs([group(1, "5-0")], "5-0")  # delivered, not acknowledged
    assert not plan.idle_inputs([group(0, "5-0")], "5-1")  # waiting to be read
    assert not plan.idle_inputs([group(0, "5-0")], "12-0")
    assert plan.idle_inputs([], None)  # never had an input
    assert not plan.idle_inputs([], "1-0")  # an input before its wrapper made the group


def test_copies_ids_are_the_callers_or_the_same_for_every_delivery() -> None:
    assert plan.copy_ids("r", 2, ["a", "b"]) == ["a", "b"]
    first = plan.copy_ids("r", 3, None)
    assert first == plan.copy_ids("r", 3, None) and len(set(first)) == 3
    assert first != plan.copy_ids("r2", 3, None)


def test_a_copys_budget_is_what_the_source_had_left() -> None:
    assert plan.budget_left(None, "1.5") is None
    assert plan.budget_left(5.0, "1.5") == 3.5
    assert plan.budget_left(1.0, "3") == 0.0
    assert plan.budget_left(2.0, "not a number") == 2.0
    spec = plan.copy_spec(
        {"worker_id": SOURCE, "request_id": "a", "max_cost_usd": 5}, "w2", "b", 3.5
    )
    assert spec == {"worker_id": "w2", "request_id": "b", "max_cost_usd": 3.5}


def test_a_copys_record_takes_the_shape_grant_and_workspace_not_the_state() -> None:
    source = WorkerRecord.from_hash(
        SOURCE,
        {
            "status": "RUNNING",
            "agent_type": "CLAUDE",
            "modules": '["GIT"]',
            "metadata": '{"team":"search"}',
            "egress": "[]",
            "workspace_base": "abc123",
            "mirror": "wm-mirror-1",
            "repository_url": "https://example.com/r.git",
            "cost_usd": "1.5",
            "container_id": "deadbeef",
            "services": '{"db":"running","docker":"running"}',
        },
    )
    assert source is not None
    fields = plan.copy_fields(source, forked_from=SOURCE)
    assert fields["workspace_base"] == "abc123" and fields["mirror"] == "wm-mirror-1"
    assert fields["forked_from"] == SOURCE and fields["metadata"] == '{"team":"search"}'
    assert "cost_usd" not in fields and "container_id" not in fields and "status" not in fields
    # Its services start afresh (their definitions are in the spec); the engine is its own.
    assert json.loads(fields["services"]) == {"db": "starting"}


def test_a_create_from_a_snapshot_overlays_its_own_fields_on_the_snapshots() -> None:
    saved = {"agent_type": "CUSTOM", "modules": ["GIT"], "egress": ["a.com"], "env": {"A": "1"}}
    create = {"egress": ["b.com"], "env": {"B": "2"}, "metadata": {"x": "y"}, "request_id": "r"}
    spec = plan.snapshot_spec(saved, create, {"egress", "metadata"}, "w9")
    assert spec["modules"] == ["GIT"] and spec["egress"] == ["b.com"]
    assert spec["env"] == {"A": "1"}  # not named by the create: the snapshot's
    assert spec["metadata"] == {"x": "y"} and spec["worker_id"] == "w9"


def snapshot(name: str, manager: str, last_used: str) -> Snapshot:
    return Snapshot(
        name, SOURCE, "CUSTOM", manager, "2026-01-01T00:00:00.000Z", last_used, 1, "", {}, {}
    )


def test_snapshots_unused_past_their_retention_on_this_host_expire() -> None:
    now = 1_800_000_000.0
    old = "2026-01-01T00:00:00.000Z"
    found = expired(
        [
            snapshot("old", "m1", old),
            snapshot("elsewhere", "m2", old),
            snapshot("new", "m1", "2027-01-15T08:00:00.000Z"),
        ],
        manager_id="m1",
        now=now,
        retention_days=30,
    )
    assert [s.name for s in found] == ["old"]


# --- the wrapper's side ---------------------------------------------------------------------
def test_a_copys_first_start_resets_its_spend_and_forks_its_session(tmp_path: Path) -> None:
    ledger = CostLedger(tmp_path, 10.0)
    ledger.charge_session_total("s1", 2.5)
    assert forks.settle(tmp_path) is None  # not a copy: nothing done
    assert CostLedger(tmp_path).total_usd == 2.5
    (tmp_path / forks.MARKER).write_text(json.dumps({"forked_from": SOURCE}))
    assert forks.settle(tmp_path) == SOURCE
    settled = CostLedger(tmp_path, 10.0)
    assert settled.total_usd == 0.0
    # The copied session's earlier total is remembered: resuming it counts only what is new.
    assert settled.charge_session_total("s1", 3.0).input_usd == 0.5
    assert forks.fork_pending(tmp_path) and not (tmp_path / forks.MARKER).exists()
    forks.forked(tmp_path)
    assert not forks.fork_pending(tmp_path)
    assert forks.settle(tmp_path) is None  # once


def test_an_unreadable_marker_is_settled_all_the_same(tmp_path: Path) -> None:
    (tmp_path / forks.MARKER).write_text("{not json")
    (tmp_path / LEDGER_NAME).write_text("also not json")
    assert forks.settle(tmp_path) == ""
    assert CostLedger(tmp_path).total_usd == 0.0 and forks.fork_pending(tmp_path)
