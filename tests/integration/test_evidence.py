"""Every ending explained (``workers/state/evidence.py``): each way a worker ends leaves
``<prefix>:<id>:evidence`` saying how, who ended it, and its container's last lines, kept
``WM_EVIDENCE_DAYS`` after the container is gone. Real Redis, real Docker, real wrappers."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from tests.support.cli import run_cli
from tests.support.flows import Harness
from worker_manager.client.api import Client
from worker_manager.contract.reasons import Ended, never_ready, parse_end_reason
from worker_manager.workers.resources.acl import WorkerAcl

pytestmark = [pytest.mark.docker, pytest.mark.redis]

CAT = json.dumps(["cat"])
DAY = 86_400


async def running_worker(harness: Harness, command: str = CAT) -> str:
    reply = await harness.client.request("create", agent_type="CUSTOM", agent_command=command)
    assert reply.ok and reply.worker_id, reply
    assert await harness.wait_status(reply.worker_id, "RUNNING", "FAILED") == "RUNNING"
    return reply.worker_id


async def evidence_of(harness: Harness, worker_id: str, *fields: str) -> dict[str, str]:
    """The evidence once it holds ``fields`` (the last words follow the verdict, in the
    background teardown), polled with a deadline."""
    key = harness.keys.evidence(worker_id)
    for _ in range(300):
        found: dict[str, str] = await harness.redis.hgetall(key)
        if all(found.get(f) for f in fields):
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"evidence of {worker_id} lacks {fields}: {found}")


async def test_a_deleted_worker_is_explained_and_its_evidence_expires(
    harness: Harness, tmp_path: Path
) -> None:
    manager = await harness.start(evidence_days=3)
    worker_id = await running_worker(harness)
    await harness.client.send_input(worker_id, "the last thing it said")
    seen = await harness.events_until(
        worker_id, lambda f: "the last thing it said" in f.get("content", "")
    )
    assert seen
    echoed = (await harness.redis.xrevrange(harness.keys.output(worker_id), count=1))[0][0]
    password = WorkerAcl(harness.redis, harness.settings).password(worker_id)

    deleted = await harness.client.request("delete", worker_id=worker_id, request_id="ev-del-1")
    assert deleted.ok and deleted.status == "STOPPED"
    evidence = await evidence_of(harness, worker_id, "log_tail", "finished_at")
    assert evidence["status"] == "STOPPED" and evidence["reason"] == "deleted"
    assert evidence["ended_by"] == "delete request ev-del-1"
    assert evidence["manager_id"] == manager.settings.manager_id
    # The newest output entry when it ended: at or after the echo, and one the stream holds.
    last = evidence["last_output_id"]
    assert _id(last) >= _id(echoed)
    assert await harness.redis.xrange(harness.keys.output(worker_id), last, last)
    assert evidence["oom"] == "false" and evidence["exit_code"].lstrip("-").isdigit()
    assert password not in evidence["log_tail"]
    assert harness.container(worker_id) is None  # explained after its container is gone
    ttl = await harness.redis.ttl(harness.keys.evidence(worker_id))
    assert 3 * DAY - 60 < ttl <= 3 * DAY  # WM_EVIDENCE_DAYS
    # The Python client reads the same evidence.
    client = Client(harness.redis, key_prefix=harness.settings.key_prefix)
    assert (await client.worker(worker_id).evidence())["ended_by"] == "delete request ev-del-1"
    # And the CLI: a table, and JSON.
    code, out = await run_cli(harness.settings, tmp_path, "status", worker_id, "--evidence")
    assert code == 0 and "delete request ev-del-1" in out and "last lines" in out, out
    code, out = await run_cli(
        harness.settings, tmp_path, "status", worker_id, "--evidence", "--json"
    )
    assert code == 0, out
    assert json.loads(out.splitlines()[-1])["evidence"]["reason"] == "deleted"


async def test_a_container_killed_from_outside_leaves_its_exit_code(harness: Harness) -> None:
    await harness.start()
    worker_id = await running_worker(harness)
    await asyncio.to_thread(harness.container(worker_id).kill)  # SIGKILL: exit 137
    assert await harness.wait_status(worker_id, "FAILED", "STOPPED") == "FAILED"
    evidence = await evidence_of(harness, worker_id, "exit_code")
    assert evidence["reason"] == "exited with code 137"
    assert evidence["exit_code"] == "137"
    assert evidence["ended_by"] == "docker events (exit)"


async def test_an_oom_kill_is_explained(harness: Harness) -> None:
    await harness.start(container_memory="64m")
    hog = "x = []\nwhile True:\n    x.append(bytearray(8 * 1024 * 1024))\n"
    worker_id = await running_worker(harness, json.dumps(["python3", "-c", hog]))
    await harness.client.send_input(worker_id, "eat")
    assert await harness.wait_status(worker_id, "FAILED", "STOPPED", timeout=60) == "FAILED"
    evidence = await evidence_of(harness, worker_id, "finished_at")
    assert evidence["reason"] == "oom"
    assert evidence["ended_by"] == "docker events (OOM kill)"
    assert evidence["oom"] == "true"


async def test_a_silent_worker_is_explained(harness: Harness) -> None:
    await harness.start()
    worker_id = await running_worker(harness)
    await asyncio.to_thread(harness.container(worker_id).pause)  # no more heartbeats
    assert await harness.wait_status(worker_id, "FAILED", timeout=60) == "FAILED"
    evidence = await evidence_of(harness, worker_id, "finished_at")
    assert evidence["reason"] == "heartbeat_lost"
    assert evidence["ended_by"] == "watcher (heartbeats)"
    assert "log_tail" in evidence  # read after the paused container was stopped


async def test_an_idle_worker_is_explained(harness: Harness) -> None:
    await harness.start(idle_timeout_seconds=2, eviction_interval_seconds=0.2)
    worker_id = await running_worker(harness)
    assert await harness.wait_status(worker_id, "STOPPED", timeout=60) == "STOPPED"
    evidence = await evidence_of(harness, worker_id, "finished_at")
    assert evidence["reason"] == "idle"
    assert evidence["ended_by"] == "evictor (idle timeout)"


async def test_a_worker_kept_suspended_too_long_is_explained_as_retention(
    harness: Harness,
) -> None:
    """Deleted for the workspace retention (``workers.transitions.sleep``): the evidence names
    that rule, not "manager" (as it did while reasons were free strings)."""
    await harness.start(workspace_retention_days=2 / DAY)  # two seconds
    worker_id = await running_worker(harness)
    suspended = await harness.client.request("suspend", worker_id=worker_id)
    assert suspended.ok and suspended.status == "SUSPENDED", suspended
    assert await harness.wait_status(worker_id, "STOPPED", timeout=60) == "STOPPED"
    evidence = await evidence_of(harness, worker_id, "ended_by")
    assert evidence["status"] == "STOPPED" and evidence["reason"] == "retention"
    assert evidence["ended_by"] == "sleepers (suspended longer than the workspace retention)"
    assert parse_end_reason(evidence["reason"]) is Ended.RETENTION


async def test_a_worker_that_never_becomes_ready_is_explained_as_its_start_timeout(
    harness: Harness,
) -> None:
    """The watcher's start timeout: the evidence names it, not "manager"."""
    await harness.start(start_timeout_seconds=3)
    worker_id = str(uuid.uuid4())
    # A string where its input stream should be: its wrapper can never read its inputs, so it
    # never says it is ready (it retries, as it would for an unreachable Redis).
    await harness.redis.set(harness.keys.input(worker_id), "not a stream")
    reply = await harness.client.request(
        "create", agent_type="CUSTOM", agent_command=CAT, worker_id=worker_id
    )
    assert reply.ok, reply
    assert await harness.wait_status(worker_id, "FAILED", "RUNNING") == "FAILED"
    evidence = await evidence_of(harness, worker_id, "ended_by", "finished_at")
    assert evidence["reason"] == "wrapper never became ready within 3s"
    assert evidence["ended_by"] == "watcher (start timeout: the wrapper never became ready)"
    assert parse_end_reason(evidence["reason"]) == never_ready(3)


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


async def test_a_log_line_is_scrubbed_before_it_is_cut(harness: Harness) -> None:
    """The container's log holds the worker's Redis password where the 500-character cut runs
    through it, and a URL whose password holds ``/`` and ``@``: no part of either survives."""
    await harness.start()
    worker_id = await running_worker(harness)
    password = WorkerAcl(harness.redis, harness.settings).password(worker_id)
    url_password = "s3cr/et@pa:ss"
    line = "x" * 480 + password + f" then https://bot:{url_password}@git.example/o/r.git"
    container = harness.container(worker_id)
    assert container is not None
    # Into the container's log, as the wrapper's own lines go (its stdout is PID 1's).
    cloned = f"cloning https://bot:{url_password}@git.example/o/r.git"
    result = container.exec_run(
        ["sh", "-c", 'printf "%s\\n%s\\n" "$0" "$1" > /proc/1/fd/1', line, cloned]
    )
    assert result.exit_code == 0, result.output
    deleted = await harness.client.request("delete", worker_id=worker_id)
    assert deleted.ok, deleted
    tail = (await evidence_of(harness, worker_id, "log_tail"))["log_tail"]
    [kept] = [entry for entry in tail.splitlines() if entry.startswith("x" * 480)]
    assert kept == "x" * 480 + "***" + " then https://***@git.example/o/r"[:17] + "…", kept
    assert "cloning https://***@git.example/o/r.git" in tail.splitlines(), tail
    assert password[:8] not in tail and "s3cr" not in tail and "pa:ss" not in tail
