"""`worker-manager delete --all/--selector`: nothing happens unless --confirm is the exact count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import run_cli
from tests.support.flows import Harness

pytestmark = [pytest.mark.docker, pytest.mark.redis]

CAT = json.dumps(["cat"])


async def cli(harness: Harness, cwd: Path, *args: str) -> tuple[int, str]:
    return await run_cli(harness.settings, cwd, *args)


async def test_bulk_delete_needs_the_exact_count(harness: Harness, tmp_path: Path) -> None:
    await harness.start()
    teams = ["search", "search", "infra"]
    ids = []
    for team in teams:
        reply = await harness.client.create(
            agent_type="CUSTOM", agent_command=CAT, metadata={"team": team}
        )
        assert reply.worker_id
        ids.append(reply.worker_id)
    for worker_id in ids:
        assert await harness.wait_status(worker_id, "RUNNING", "FAILED") == "RUNNING"

    code, out = await cli(harness, tmp_path, "delete", "--selector", "team=search")
    assert code == 2 and "--confirm 2" in out, out
    code, out = await cli(harness, tmp_path, "delete", "--all", "--confirm", "2")
    assert code == 2 and "3 live worker(s) match" in out, out
    for worker_id in ids:
        assert await harness.redis.hget(harness.keys.worker(worker_id), "status") == "RUNNING"

    code, out = await cli(
        harness, tmp_path, "delete", "--selector", "team=search", "--confirm", "2", "--json"
    )
    assert code == 0, out
    results = json.loads(out.strip().splitlines()[-1])
    assert sorted(r["worker_id"] for r in results) == sorted(ids[:2])
    assert all(r["ok"] and r["status"] == "STOPPED" for r in results)
    statuses = [await harness.redis.hget(harness.keys.worker(i), "status") for i in ids]
    assert statuses == ["STOPPED", "STOPPED", "RUNNING"]

    code, out = await cli(harness, tmp_path, "delete", "--all", "--confirm", "1")
    assert code == 0, out
    assert await harness.redis.hget(harness.keys.worker(ids[2]), "status") == "STOPPED"
