"""The CLI as people use it: full ids on a narrow terminal, filters, the lifecycle, the fleet,
a build's progress, and a failure's reason."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.support.cli import run_cli
from tests.support.flows import Harness
from tests.support.records import seed_records

pytestmark = [pytest.mark.redis]

NARROW = {"COLUMNS": "80", "LINES": "40", "TERM": "dumb"}


async def seed(harness: Harness, teams: list[str]) -> list[str]:
    manager = harness._running[0][0]
    return await seed_records(manager.store, len(teams), metadata=[{"team": t} for t in teams])


async def test_list_events_and_top_on_a_narrow_terminal(harness: Harness, tmp_path: Path) -> None:
    await harness.start(reconcile_interval_seconds=3600)
    ids = await seed(harness, ["search", "search", "infra"])
    settings = harness.settings

    code, out = await run_cli(settings, tmp_path, "list", env=NARROW)
    assert code == 0, out
    assert all(worker_id in out for worker_id in ids), out  # whole ids, copyable
    assert max(len(line) for line in out.splitlines()) <= 80
    code, out = await run_cli(settings, tmp_path, "list", "--selector", "team=search", env=NARROW)
    assert code == 0 and ids[0] in out and ids[1] in out and ids[2] not in out, out
    code, out = await run_cli(settings, tmp_path, "list", "--status", "RUNNING", env=NARROW)
    assert code == 0 and "0 worker(s)" in out and ids[0] not in out, out
    code, out = await run_cli(settings, tmp_path, "list", "--wide", env={"COLUMNS": "200"})
    assert code == 0 and "COST" in out and "team=infra" in out, out
    code, out = await run_cli(settings, tmp_path, "list", "--json", "--status", "STARTING")
    listed = json.loads(out)
    assert sorted(w["worker_id"] for w in listed["workers"]) == sorted(ids)

    code, out = await run_cli(settings, tmp_path, "events", env=NARROW)
    assert code == 0, out
    for worker_id in ids:
        assert f"{worker_id} (new) -> STARTING  created" in out, out

    code, out = await run_cli(settings, tmp_path, "top", "--once", env=NARROW)
    assert code == 0 and "STARTING 3" in out and all(i in out for i in ids), out


@pytest.mark.docker
@pytest.mark.build
async def test_create_wait_shows_the_build_and_then_the_reason(
    harness: Harness, tmp_path: Path
) -> None:
    # A shape of its own (one extra build step), so this test sees a real build's steps.
    overlay = tmp_path / "overlay"
    (overlay / "agents").mkdir(parents=True)
    (overlay / "agents" / "CUSTOM.Dockerfile").write_text(f"RUN echo {uuid.uuid4().hex}\n")
    manager = await harness.start(images_overlay=overlay)
    env = {**NARROW, "WM_IMAGES_OVERLAY": str(overlay)}
    code, out = await run_cli(
        harness.settings,
        tmp_path,
        "create",
        "--agent-type",
        "CUSTOM",
        "--agent-command",
        '["cat"]',
        "--wait",
        timeout=300,
        env=env,
    )
    assert code == 0, out
    steps = [line for line in out.splitlines() if line.startswith("STARTING: building ")]
    assert steps, out
    worker_id = next(line.split()[1] for line in out.splitlines() if line.startswith("worker "))
    record = await harness.redis.hgetall(harness.keys.worker(worker_id))
    assert record["status"] == "RUNNING" and "progress" not in record, record
    events = await harness.redis.xrange(harness.keys.output(worker_id))
    progress = [
        json.loads(fields["content"]).get("progress", "")
        for _id, fields in events
        if fields.get("type") == "status" and fields.get("content", "").startswith("{")
    ]
    assert any(p.startswith("building ") for p in progress), progress

    # `build` of the same shape: already there, and it says so.
    code, out = await run_cli(
        manager.settings, tmp_path, "build", "--agent-type", "CUSTOM", env=env
    )
    assert code == 0 and "already built" in out and "worker:" in out, out

    # A create that fails says why, and exits non-zero.
    await harness.close()
    await harness.start(base_image="worker-manager/missing:none")
    code, out = await run_cli(
        harness.settings,
        tmp_path,
        "create",
        "--agent-type",
        "CUSTOM",
        "--agent-command",
        '["cat"]',
        "--wait",
        env=NARROW,
    )
    assert code == 1 and "is FAILED: build_failed:" in out, out
