"""One name per ending (``contract/reasons.py``): every reason SPEC §3 lists (and the ones the
manager adds) is a value of a closed set that round-trips through its wire string and knows the
part of the service that gives it; an ``Outcome`` takes nothing else; the record's Lua steps
answer in typed results (fakeredis runs the Lua)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

import fakeredis
import pytest
from mypy import api as mypy_api

from worker_manager.client.models import WorkerInfo
from worker_manager.contract.kinds import WorkerStatus
from worker_manager.contract.reasons import (
    MAX_REASON_CHARS,
    Detail,
    Detailed,
    Ended,
    Moved,
    Slept,
    Source,
    build_failed,
    exit_reason,
    exited_with_code,
    never_ready,
    parse_end_reason,
    parse_reason,
    service_failed,
    start_failed,
    workspace_failed,
)
from worker_manager.settings import Settings
from worker_manager.workers.state import records
from worker_manager.workers.state.records import (
    CreateResult,
    Limit,
    SleepResult,
    WorkerStore,
)
from worker_manager.workers.transitions.lifecycle import Outcome

ROOT = Path(__file__).resolve().parents[2]
STOPPED, FAILED, SUSPENDED = WorkerStatus.STOPPED, WorkerStatus.FAILED, WorkerStatus.SUSPENDED

#: SPEC §3's list (with a detail where it has one), then the ones this manager adds: each
#: with the status it leads to.
SPEC_REASONS = [
    ("deleted", STOPPED),
    ("idle", STOPPED),
    ("ttl", STOPPED),
    ("budget_exceeded", STOPPED),
    ("exited", STOPPED),
    ("exited with code 3", FAILED),
    ("exited with code 137", FAILED),
    ("exited with code -1", FAILED),
    ("oom", FAILED),
    ("heartbeat_lost", FAILED),
    ("heartbeat_invalid", FAILED),
    ("output_overflow", FAILED),
    ("container_lost", FAILED),
    ("host_lost", FAILED),
    ("disk_exceeded", FAILED),
    ("suspended", SUSPENDED),
    ("build_failed: step 3/9: no space left on device", FAILED),
    ("start failed: APIError: 500 Server Error", FAILED),
    ("workspace_failed: fatal: repository 'x' not found", FAILED),
    ("service_failed: postgres exited with code 1", FAILED),
    # Added by this manager (documented in docs/operating.md):
    ("retention", STOPPED),
    ("wrapper never became ready within 120s", FAILED),
    ("wrapper never became ready within 0.5s", FAILED),
]


@pytest.mark.parametrize(("text", "status"), SPEC_REASONS)
def test_every_reason_of_the_spec_round_trips_and_has_a_source(
    text: str, status: WorkerStatus
) -> None:
    reason = parse_reason(text)
    assert reason is not None, text
    assert str(reason) == text
    assert reason.status is status
    assert isinstance(reason.source, Source)
    assert parse_reason(text, status) == reason


def test_every_member_of_the_closed_set_has_a_status_and_a_source() -> None:
    kinds = [*Ended, *Slept, *Moved, *(Detailed(k, "1") for k in Detail)]
    for reason in kinds:
        assert isinstance(reason.source, Source) and isinstance(reason.status, WorkerStatus)
        assert parse_reason(str(reason), reason.status) == reason
    # No source is left without a reason that names it.
    assert {r.source for r in kinds} == set(Source)
    # Endings are STOPPED or FAILED, sleeps SUSPENDED, the other moves live.
    assert {r.status for r in [*Ended, *(Detailed(k, "1") for k in Detail)]} == {STOPPED, FAILED}
    assert {r.status for r in Moved} == {WorkerStatus.STARTING, WorkerStatus.RUNNING}


@pytest.mark.parametrize(
    ("reason", "source"),
    [
        (Ended.DELETED, "delete"),
        (Ended.IDLE, "evictor (idle timeout)"),
        (Ended.TTL, "evictor (lifetime)"),
        (Ended.BUDGET_EXCEEDED, "watcher (budget: the metered or reported cost)"),
        (Ended.HEARTBEAT_LOST, "watcher (heartbeats)"),
        (Ended.HEARTBEAT_INVALID, "watcher (heartbeats)"),
        (Ended.OUTPUT_OVERFLOW, "output guard"),
        (Ended.DISK_EXCEEDED, "disk guard"),
        (Ended.CONTAINER_LOST, "reconciler"),
        (Ended.HOST_LOST, "lost-hosts judge"),
        (Ended.OOM, "docker events (OOM kill)"),
        (Ended.EXITED, "docker events (exit)"),
        (exited_with_code(3), "docker events (exit)"),
        (build_failed("no space"), "create (build)"),
        (start_failed("APIError"), "create (start)"),
        (workspace_failed("clone"), "create (workspace)"),
        (service_failed("db"), "create (services)"),
        # Named "manager" while reasons were free strings:
        (Ended.RETENTION, "sleepers (suspended longer than the workspace retention)"),
        (never_ready(120), "watcher (start timeout: the wrapper never became ready)"),
    ],
)
def test_each_ending_names_the_part_of_the_service_that_gives_it(
    reason: Ended | Detailed, source: str
) -> None:
    assert reason.source == source


def test_idle_is_an_end_or_a_suspend_as_its_status_says() -> None:
    assert parse_reason("idle", SUSPENDED) is Slept.IDLE
    assert parse_reason("idle", "STOPPED") is Ended.IDLE
    assert parse_reason("idle") is Ended.IDLE
    assert parse_reason("input", WorkerStatus.STARTING) is Moved.INPUT
    assert parse_end_reason("suspended") is None


@pytest.mark.parametrize(
    "text",
    [
        "something new",
        "",
        "exited with code x",
        "exited with code 03",
        "exited with code ",
        "wrapper never became ready within soon",
        "wrapper never became ready within 120",
        "Deleted",
        "build_failed" + ": " + "x" * MAX_REASON_CHARS,
    ],
)
def test_a_string_the_manager_does_not_give_is_no_reason(text: str) -> None:
    assert parse_reason(text) is None


def test_a_long_detail_is_cut_and_still_round_trips() -> None:
    reason = build_failed("x" * 10_000)
    assert len(str(reason)) == MAX_REASON_CHARS
    assert parse_end_reason(str(reason)) == reason
    assert len(str(never_ready(10**300))) <= MAX_REASON_CHARS


def test_exits_read_as_the_contract_says() -> None:
    assert exit_reason(0, oom=False) is Ended.EXITED
    assert exit_reason(0, oom=True) is Ended.OOM
    assert exit_reason(137, oom=False) == exited_with_code(137)
    assert exited_with_code(137).exit_code == 137 and Ended.OOM.status is FAILED
    with pytest.raises(ValueError, match="does not take 'three'"):
        Detailed(Detail.EXIT_CODE, "three")


def test_an_outcome_refuses_a_free_string_at_run_time() -> None:
    with pytest.raises(TypeError, match="ending reason"):
        Outcome(cast(Any, "deleted"))
    with pytest.raises(TypeError):
        Outcome(cast(Any, Slept.IDLE))  # a suspend is not an ending
    with pytest.raises(TypeError):
        Detailed(cast(Any, "build_failed: "), "boom")
    assert Outcome(Ended.TTL).status is STOPPED and Outcome(start_failed("x")).status is FAILED


def test_an_outcome_refuses_a_free_string_to_mypy(tmp_path: Path) -> None:
    program = tmp_path / "ends.py"
    program.write_text(
        "from worker_manager.contract.reasons import Ended\n"
        "from worker_manager.workers.transitions.lifecycle import Outcome\n"
        "Outcome(Ended.DELETED)\n"
        'Outcome("deleted")\n'
    )
    out, err, status = mypy_api.run(["--strict", "--no-error-summary", str(program)])
    assert status == 1, (out, err)
    assert re.findall(r"ends\.py:(\d+): error", out) == ["4"], out
    assert "incompatible type" in out


def test_the_client_reads_why_a_worker_ended() -> None:
    ended = WorkerInfo("w", "FAILED", reason="wrapper never became ready within 3s")
    assert ended.ending == never_ready(3) and ended.ending.source is Source.WATCHER_START_TIMEOUT
    assert WorkerInfo("w", "SUSPENDED", reason="idle").ending is None
    assert WorkerInfo("w", "STOPPED", reason="a deployment's own").ending is None


def test_the_reasons_are_documented() -> None:
    """docs/operating.md's table names every ending, its status and its source."""
    text = (ROOT / "docs" / "operating.md").read_text()
    rows = {
        *(f"| `{r}` | {r.status} | {r.source} |" for r in Ended),
        *(f"| `{k.value}…{k.suffix}` | FAILED | {k.source} |" for k in Detail),
        *(f"| `{r}` | {r.status} | {r.source} |" for r in Slept),
    }
    missing = sorted(row for row in rows if row not in text)
    assert not missing, missing
    # And the contract's own page lists every one of them.
    contract = (ROOT / "docs" / "contract.md").read_text()
    named = [f"`{r}`" for r in [*Ended, *Slept]] + [f"`{k.value.rstrip()}" for k in Detail]
    assert not [name for name in named if name not in contract]


# --- the Lua steps answer in typed results ------------------------------------------------------
async def store(max_suspended: int = 5) -> WorkerStore:
    redis = fakeredis.aioredis.FakeRedis(decode_responses=True)
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, key_prefix="rs", manager_id="m1", max_suspended=max_suspended
    )
    return WorkerStore(redis, settings)


async def create(store_: WorkerStore, worker_id: str, **kw: Any) -> records.CreateOutcome:
    return await store_.create(
        worker_id,
        request_id=f"r-{worker_id}",
        fields={"agent_type": "CUSTOM"},
        spec={},
        prompt=None,
        max_live=kw.pop("max_live", 5),
        **kw,
    )


async def test_the_create_step_answers_in_typed_results() -> None:
    s = await store()
    made = await create(s, "w1")
    assert made == records.CreateOutcome(CreateResult.CREATED, WorkerStatus.STARTING, "r-w1")
    again = await create(s, "w1")
    assert (again.result, again.status, again.request_id) == (
        CreateResult.EXISTS,
        WorkerStatus.STARTING,
        "r-w1",
    )
    full = await create(s, "w2", max_live=1)
    assert (full.result, full.limit, full.status) == (CreateResult.CAPACITY, Limit.MANAGER, None)
    owner = await create(s, "w3", max_live=9, owner="ann", max_per_owner=0)
    assert owner.result is CreateResult.CREATED
    over = await create(s, "w4", max_live=9, owner="ann", max_per_owner=1)
    assert (over.result, over.limit) == (CreateResult.CAPACITY, Limit.OWNER)
    # The create's lifecycle entry says the reason the contract names.
    assert f"'reason', '{Moved.CREATED}'" in records._CREATE


async def test_the_transition_and_sleep_steps_answer_in_typed_results() -> None:
    s = await store(max_suspended=1)
    await create(s, "w1")
    await create(s, "w2")
    early = await s.suspend("w1", Slept.SUSPENDED)
    assert (early.result, early.status) == (SleepResult.WRONG_STATUS, WorkerStatus.STARTING)
    moved = await s.transition("w1", WorkerStatus.RUNNING, Moved.READY)
    assert moved == records.Transition(True, WorkerStatus.STARTING)
    await s.transition("w2", WorkerStatus.RUNNING, Moved.READY)
    slept = await s.suspend("w1", Slept.IDLE)
    assert (slept.result, slept.status) == (SleepResult.SUSPENDED, WorkerStatus.RUNNING)
    no_room = await s.suspend("w2", Slept.SUSPENDED)
    assert no_room.result is SleepResult.CAPACITY
    woke = await s.resume("w1", Moved.INPUT)
    assert (woke.result, woke.status) == (SleepResult.RESUMED, WorkerStatus.SUSPENDED)
    gone = await s.resume("nobody", Moved.RESUME)
    assert (gone.result, gone.status) == (SleepResult.WRONG_STATUS, None)
    none = await s.transition("nobody", WorkerStatus.FAILED, Ended.OOM)
    assert none == records.Transition(False, None)


async def test_a_resume_forgets_the_heartbeat_the_stopping_wrapper_left() -> None:
    """The suspend deletes the heartbeat, but the wrapper may beat once more while it stops;
    the resume deletes it again, so only the new container's beat makes the worker RUNNING."""
    s = await store()
    await create(s, "w1")
    await s.transition("w1", WorkerStatus.RUNNING, Moved.READY)
    await s.suspend("w1", Slept.SUSPENDED)
    heartbeat = s._keys.heartbeat("w1")
    await s._redis.set(heartbeat, "1800000000.0", ex=15)  # the last beat, after the suspend
    woke = await s.resume("w1", Moved.RESUME)
    assert woke.result is SleepResult.RESUMED
    assert not await s._redis.exists(heartbeat)


async def test_a_transition_refuses_a_reason_that_leads_elsewhere() -> None:
    s = await store()
    await create(s, "w1")
    with pytest.raises(ValueError, match="leads to STOPPED"):
        await s.transition("w1", WorkerStatus.FAILED, Ended.DELETED)
    with pytest.raises(ValueError, match="leads to STARTING, not RUNNING"):
        await s.transition("w1", WorkerStatus.RUNNING, Moved.INPUT)
    with pytest.raises(TypeError, match="a reason of contract"):
        await s.transition("w1", WorkerStatus.RUNNING, cast(Any, "ready"))
    record = await s.get("w1")
    assert record is not None and record.status is WorkerStatus.STARTING  # nothing written
