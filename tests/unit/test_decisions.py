"""The service's decisions as plain functions over data, checked without Docker or Redis: how a
container's exit reads, the heartbeat verdict, eviction, the reconciler's diff, the GC plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from worker_base.heartbeat import Beat
from worker_manager.contract.kinds import WorkerStatus
from worker_manager.contract.labels import LABEL_HASH, LABEL_PREFIX, LABEL_WORKER
from worker_manager.contract.labels import LABEL_PREFIX as WORKER_PREFIX_LABEL
from worker_manager.contract.limits import parse_size
from worker_manager.contract.reasons import Ended, build_failed, never_ready
from worker_manager.contract.record import WorkerRecord
from worker_manager.core.clock import iso_from_unix
from worker_manager.images.gc_plan import Engine, plan_rows
from worker_manager.settings import FleetSettings
from worker_manager.workers.state.heartbeats import Observed
from worker_manager.workers.transitions.lifecycle import Outcome, outcome_of
from worker_manager.workers.transitions.sleep import expired, wants_waking
from worker_manager.workers.watching.disk_guard import (
    over_entries,
    over_limit,
    usage_by_worker,
    walk_size,
)
from worker_manager.workers.watching.eviction import eviction_reason
from worker_manager.workers.watching.reconciler import Found, reconcile_steps
from worker_manager.workers.watching.watcher import heartbeat_verdict, silent

NOW = 1_800_000_000.0
DAY = 86_400.0


def record(status: str = "RUNNING", **fields: Any) -> WorkerRecord:
    values = {"worker_id": "w", "status": status}
    for name, value in fields.items():
        values[name] = iso_from_unix(value) if name.endswith("_at") else str(value)
    built = WorkerRecord.from_hash("w", values)
    assert built is not None
    return built


def beat(activity: float = NOW, cost: str | None = None, exceeded: bool = False) -> Beat:
    return Beat(activity=activity, cost_usd=cost, budget_exceeded=exceeded)


# --- how a container's exit reads ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("exit_code", "oom", "status", "reason"),
    [
        (0, False, WorkerStatus.STOPPED, "exited"),
        (3, False, WorkerStatus.FAILED, "exited with code 3"),
        (137, True, WorkerStatus.FAILED, "oom"),
        (0, True, WorkerStatus.FAILED, "oom"),
    ],
)
def test_outcome_of_an_exit(exit_code: int, oom: bool, status: WorkerStatus, reason: str) -> None:
    outcome = outcome_of(exit_code, oom)
    assert (outcome.status, str(outcome.reason), outcome.exit_code) == (status, reason, exit_code)
    assert outcome.record_fields() == {"exit_code": str(exit_code)}


def test_a_failed_reason_is_bounded() -> None:
    reason = Outcome(build_failed("x" * 10_000)).reason
    assert len(str(reason)) == 4000 and str(reason).startswith("build_failed: xxx")


def test_a_record_is_read_forgivingly() -> None:
    odd = WorkerRecord.from_hash(
        "w", {"status": "SOMETHING", "created_at": "yesterday", "exit_code": "x", "pool": "CUSTOM"}
    )
    assert odd is not None and odd.status is None and not odd.is_live
    assert odd.created_at is None and odd.exit_code is None and odd.pool == "CUSTOM"
    assert WorkerRecord.from_hash("w", {}) is None
    assert record("STARTING").is_live and not record("STOPPED").is_live


# --- the heartbeat verdict ----------------------------------------------------------------------
def verdict(seen: Observed, *, in_grace: bool = False) -> Any:
    return heartbeat_verdict(seen, NOW, start_timeout=120, in_grace=in_grace)


def test_first_heartbeat_makes_a_starting_worker_running() -> None:
    v = verdict(Observed("w", record("STARTING", started_at=NOW - 1), beat(NOW, "0.5")))
    assert v.running and v.end is None
    assert v.fields == {"last_activity_at": iso_from_unix(NOW), "cost_usd": "0.5"}


def test_a_beat_before_the_container_started_is_an_earlier_containers() -> None:
    """A suspended wrapper may beat once more while it stops; on resume that beat must not make
    the worker RUNNING before its new container has started (then expire: heartbeat_lost)."""
    stale = verdict(Observed("w", record("STARTING"), beat(NOW - 3, "0.5")))
    assert not stale.running and stale.end is None and stale.fields == {}


def test_a_running_worker_only_gets_what_changed() -> None:
    same = record("RUNNING", last_activity_at=NOW, cost_usd="0.5")
    assert verdict(Observed("w", same, beat(NOW, "0.5"))).fields == {}
    assert verdict(Observed("w", same, beat(NOW + 2, "0.5"))).fields == {
        "last_activity_at": iso_from_unix(NOW + 2)
    }


def test_lost_invalid_and_spent_heartbeats_end_the_worker() -> None:
    lost = verdict(Observed("w", record("RUNNING")))
    assert lost.end == Outcome(Ended.HEARTBEAT_LOST)
    invalid = verdict(Observed("w", record("RUNNING"), problem="not a time"))
    assert invalid.end == Outcome(Ended.HEARTBEAT_INVALID) and invalid.problem == "not a time"
    spent = verdict(Observed("w", record("RUNNING"), beat(NOW, "2.0", exceeded=True)))
    assert spent.end is not None and spent.end.status is WorkerStatus.STOPPED
    assert spent.end.reason is Ended.BUDGET_EXCEEDED and spent.end.fields["cost_usd"] == "2.0"


def test_a_worker_that_never_becomes_ready_fails_after_the_start_timeout() -> None:
    young = verdict(Observed("w", record("STARTING", started_at=NOW - 5)))
    assert young.end is None and young.awaiting_first_beat
    old = verdict(Observed("w", record("STARTING", started_at=NOW - 500)))
    assert old.end is not None and old.end.reason == never_ready(120)
    assert str(old.end.reason) == "wrapper never became ready within 120s"
    # Not yet started (building): nothing to await, nothing to judge.
    assert verdict(Observed("w", record("STARTING"))) == type(young)()


def test_after_a_redis_outage_a_missing_heartbeat_is_not_yet_lost() -> None:
    assert verdict(Observed("w", record("RUNNING")), in_grace=True).end is None


def test_only_a_running_worker_without_a_heartbeat_is_silent() -> None:
    """Silent workers are the ones a data-path outage could explain (the watcher then asks the
    egress service before it fails them)."""
    assert silent(Observed("w", record()))
    assert not silent(Observed("w", record(), beat()))
    assert not silent(Observed("w", record(), problem="garbage"))
    assert not silent(Observed("w", record("STARTING")))
    assert not silent(Observed("w", None))


def test_a_worker_without_a_record_is_forgotten() -> None:
    assert verdict(Observed("w", None)).forget
    # A status no manager writes is left alone: neither forgotten nor ended.
    odd = WorkerRecord.from_hash("w", {"status": "SOMETHING"})
    assert verdict(Observed("w", odd)) == type(verdict(Observed("w", None)))()


# --- eviction -----------------------------------------------------------------------------------
FLEET = FleetSettings(idle_timeout_seconds=600, max_idle_timeout_seconds=3600)


def test_idle_is_judged_by_the_latest_sign_of_activity() -> None:
    worker = record("RUNNING", created_at=NOW - 7200, started_at=NOW - 7200)
    assert eviction_reason(Observed("w", worker, beat(NOW - 601)), NOW, FLEET) is Ended.IDLE
    assert eviction_reason(Observed("w", worker, beat(NOW - 10)), NOW, FLEET) is None
    touched = record("RUNNING", created_at=NOW - 7200, last_activity_at=NOW - 5)
    assert eviction_reason(Observed("w", touched, beat(NOW - 900)), NOW, FLEET) is None


def test_a_create_may_ask_for_its_own_idle_timeout_within_the_cap() -> None:
    own = record("RUNNING", created_at=NOW - 9000, idle_timeout_seconds=60)
    assert eviction_reason(Observed("w", own, beat(NOW - 61)), NOW, FLEET) is Ended.IDLE
    greedy = record("RUNNING", created_at=NOW - 9000, idle_timeout_seconds=10**9)
    assert eviction_reason(Observed("w", greedy, beat(NOW - 3601)), NOW, FLEET) is Ended.IDLE


def test_lifetime_ends_starting_workers_too_and_idle_never_does() -> None:
    fleet = FleetSettings(max_lifetime_seconds=3600)
    starting = record("STARTING", created_at=NOW - 4000)
    assert eviction_reason(Observed("w", starting), NOW, fleet) is Ended.TTL
    young = record("STARTING", created_at=NOW - 4000)
    assert eviction_reason(Observed("w", young), NOW, FLEET) is None
    ended = record("STOPPED", created_at=NOW - 9999)
    assert eviction_reason(Observed("w", ended), NOW, fleet) is None


# --- the reconciler's diff ----------------------------------------------------------------------
def found(worker_id: str, state: str = "running", cid: str = "c1", pooled: bool = False) -> Found:
    return Found(worker_id, cid, state, pooled)


def test_reconcile_steps_cover_every_case() -> None:
    records = {
        "adopt": record("RUNNING", container_id="c1"),
        "exited": record("RUNNING", container_id="c1"),
        "created": record("STARTING"),
        "unrecorded": record("STARTING", container_id="other"),
        "ended": record("STOPPED"),
        "asleep": record("SUSPENDED"),
        "orphan": None,
        "pooled": None,
        "busy": record("STARTING"),
        "no-container-starting": record("STARTING"),
        "no-container-running": record("RUNNING", container_id="c9"),
        "no-container-ended": record("FAILED"),
        "expired": None,
    }
    containers = {
        "adopt": found("adopt"),
        "exited": found("exited", "exited"),
        "created": found("created", "created"),
        "unrecorded": found("unrecorded"),
        "ended": found("ended", "exited"),
        "asleep": found("asleep", "running"),
        "orphan": found("orphan"),
        "pooled": found("pooled", pooled=True),
        "busy": found("busy", "created"),
    }
    live = {"adopt", "exited", "created", "unrecorded", "busy", "expired"} | {
        "no-container-starting",
        "no-container-running",
        "no-container-ended",
    }
    steps = dict(reconcile_steps(live, containers, records, busy={"busy"}))
    assert steps == {
        "adopt": "adopt",
        "exited": "ended_unseen",
        "created": "resume",
        "unrecorded": "resume",
        "ended": "finish",
        "asleep": "sleep",  # its container goes, its volumes stay
        "orphan": "orphan",
        "no-container-starting": "resume_if_absent",
        "no-container-running": "lost_if_absent",
    }


# --- the GC plan --------------------------------------------------------------------------------
def image(
    image_id: str, image_hash: str, created: float, prefix: str = "p", tag: bool = True
) -> dict[str, Any]:
    return {
        "Id": image_id,
        "RepoTags": [f"worker:{image_hash}"] if tag else ["<none>:<none>"],
        "Labels": {LABEL_HASH: image_hash, LABEL_PREFIX: prefix},
        "Created": created,
        "Size": 100,
    }


def engine(images: list[dict[str, Any]], used_by: dict[str, list[str]] | None = None) -> Engine:
    ids = {str(i["Id"]) for i in images}
    return Engine(
        labelled=images,
        parents={i: "base" for i in ids} | {"base": ""},
        children={"base": len(ids)},
        sizes={i: 100 for i in ids} | {"base": 60},
        tagged={str(i["Id"]) for i in images if i["RepoTags"] != ["<none>:<none>"]} | {"base"},
        used_by=used_by or {},
    )


def plan(records: dict[str, float], eng: Engine, budget: int | None = None) -> dict[str, Any]:
    rows = plan_rows(records, eng, prefix="p", max_age=7 * DAY, budget=budget, now=NOW)
    return {row.hash or str(row.image_id): (row.action, row.reason) for row in rows}


def test_gc_removes_only_old_unused_images_of_its_own_deployment() -> None:
    eng = engine(
        [
            image("old", "h-old", NOW - 30 * DAY),
            image("new", "h-new", NOW - 30 * DAY),
            image("used", "h-used", NOW - 30 * DAY),
            image("theirs", "h-theirs", NOW - 30 * DAY, prefix="other"),
        ],
        used_by={"used": ["worker-1"]},
    )
    records = {"h-old": NOW - 8 * DAY, "h-new": NOW - 3600, "h-used": NOW - 9 * DAY, "h-gone": NOW}
    actions = {k: v[0] for k, v in plan(records, eng).items()}
    assert actions == {"h-old": "remove", "h-new": "keep", "h-used": "keep", "h-gone": "forget"}
    assert plan(records, eng)["h-used"][1].startswith("in use by 1 container(s): worker-1")


def test_gc_adopts_unrecorded_images_by_their_creation_time() -> None:
    eng = engine([image("a", "h-a", NOW - 10 * DAY), image("b", "h-b", NOW - DAY)])
    rows = plan_rows({}, eng, prefix="p", max_age=7 * DAY, budget=None, now=NOW)
    by_hash = {r.hash: r for r in rows}
    assert by_hash["h-a"].action == "remove" and by_hash["h-a"].adopted
    assert by_hash["h-b"].action == "keep" and by_hash["h-b"].last_used == NOW - DAY


def test_gc_budget_removes_least_recently_used_first() -> None:
    eng = engine([image(f"i{n}", f"h{n}", NOW - DAY) for n in range(4)])
    records = {f"h{n}": NOW - 3600 * (n + 1) for n in range(4)}  # h3 is the least recently used
    # Each image adds 40 bytes beyond the shared base: 160 in all, 80 once two are gone.
    actions = {k: v[0] for k, v in plan(records, eng, budget=90).items()}
    assert actions == {"h0": "keep", "h1": "keep", "h2": "remove", "h3": "remove"}


def test_gc_removes_dangling_images_unless_in_use() -> None:
    eng = engine(
        [image("d1", "h-d1", NOW, tag=False), image("d2", "h-d2", NOW, tag=False)],
        used_by={"d2": ["worker-2"]},
    )
    actions = {k: v[0] for k, v in plan({}, eng).items()}
    assert actions == {"h-d1": "remove", "h-d2": "keep"}


def test_a_suspended_worker_wakes_for_an_input_its_wrapper_was_not_given() -> None:
    assert wants_waking("1700-5", "1700-4") and wants_waking("1701-0", "1700-9")
    assert not wants_waking("1700-4", "1700-4") and not wants_waking("", "1700-4")
    assert wants_waking("1-0", "")  # no group yet: the input waits
    day = 86_400
    assert expired(iso_from_unix(NOW - 8 * day), NOW, 7)
    assert not expired(iso_from_unix(NOW - 6 * day), NOW, 7)
    assert not expired("garbage", NOW, 7)


def test_disk_usage_is_summed_per_worker_of_this_deployment() -> None:
    rows: list[dict[str, Any]] = [
        {"Labels": {LABEL_WORKER: "a", WORKER_PREFIX_LABEL: "p"}, "UsageData": {"Size": 10}},
        {"Labels": {LABEL_WORKER: "a", WORKER_PREFIX_LABEL: "p"}, "UsageData": {"Size": 5}},
        {"Labels": {LABEL_WORKER: "b", WORKER_PREFIX_LABEL: "p"}, "UsageData": {"Size": -1}},
        {"Labels": {LABEL_WORKER: "c", WORKER_PREFIX_LABEL: "other"}, "UsageData": {"Size": 9}},
        {"Labels": None, "UsageData": None},
    ]
    used = usage_by_worker(rows, "p")
    assert used == {"a": 15, "b": 0}
    assert over_limit({"a", "b", "gone"}, used, 14) == ["a"]
    assert over_limit({"a"}, used, 15) == []  # at the limit is within it


@pytest.mark.parametrize(
    ("text", "size"),
    [("10g", 10 * 1024**3), ("512m", 512 * 1024**2), ("1.5k", 1536), ("7", 7), ("3B", 3)],
)
def test_sizes_read_as_docker_writes_them(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "g", "ten", "-1m", "1x", "nan"])
def test_a_size_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_a_walk_counts_blocks_without_following_links(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 100_000)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b").write_bytes(b"y" * 10_000)
    (tmp_path / "up").symlink_to("/")  # followed, it would count the whole host
    used, entries = walk_size(str(tmp_path))
    assert 110_000 <= used < 200_000
    assert entries == 4
    # Past the bound the walk stops counting: a flood of empty files is not walked to its end.
    for i in range(50):
        (tmp_path / f"e{i}").touch()
    assert walk_size(str(tmp_path), max_entries=10)[1] <= 11 + 1
    assert over_entries({"w", "v"}, {"w": 11, "v": 10}, 10) == ["w"]


def test_a_containers_end_ends_only_the_start_its_record_names() -> None:
    from worker_manager.workers.watching.watcher import about_this_start

    assert about_this_start("abc", "abc")
    assert not about_this_start("abc", "old")  # an earlier container's end
    assert not about_this_start("", "old")  # just resumed: no container of this start yet
    assert about_this_start("abc", "")  # an event naming no container is believed
