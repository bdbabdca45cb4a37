"""The wrapper end to end: ``python -m worker_base`` against redis-server, driven like a worker."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.support.redis_server import RedisServer
from tests.wrapper.conftest import ISO_MS, OutputTail, Worker, is_event

pytestmark = pytest.mark.redis


async def ready(worker: Worker, tail: OutputTail) -> None:
    await tail.until(is_event("status", "ready", ""))


async def test_ready_status_then_heartbeat_with_ttl(worker: Worker) -> None:
    tail = worker.tail()
    await worker.start(["cat"])
    [event] = await tail.until(is_event("status", "ready"))
    assert event["input_id"] == ""
    assert ISO_MS.match(event["timestamp"])
    async with asyncio.timeout(5):
        while (beat := await worker.admin.get(worker.heartbeat_key)) is None:
            await asyncio.sleep(0.02)
    moment, *facts = beat.split()
    assert ISO_MS.match(moment)
    assert facts == ["cost=0"]  # the worker's spend so far (SPEC §4: in the heartbeat's value)
    ttl = await worker.admin.ttl(worker.heartbeat_key)
    assert 0 < ttl <= 3


async def test_prompt_streams_lines_then_done_and_is_acked(worker: Worker) -> None:
    tail = worker.tail()
    await worker.start(["cat"])
    await ready(worker, tail)
    input_id = await worker.push("one\ntwo\n")
    events = await tail.until(is_event("status", "idle"))
    assert [(e["type"], e["content"]) for e in events] == [
        ("status", "busy"),
        ("stdout", "one"),
        ("stdout", "two"),
        ("done", "0"),
        ("status", "idle"),
    ]
    assert {e["input_id"] for e in events} == {input_id}
    assert all(ISO_MS.match(e["timestamp"]) for e in events)
    await worker.wait_acked()


async def test_input_written_before_start_is_processed_and_group_created(
    worker: Worker, redis_server: RedisServer
) -> None:
    # No consumer group yet, and a user allowed to create it (the admin): as on a fresh stream.
    await worker.admin.delete(worker.input_key)
    input_id = await worker.push("early bird")
    tail = worker.tail()
    await worker.start(["cat"], WM_REDIS_URL=redis_server.url)
    events = await tail.until(is_event("done", input_id=input_id))
    assert ("stdout", "early bird") in [(e["type"], e["content"]) for e in events]
    assert events[-1]["content"] == "0"
    await worker.wait_acked()


async def test_restart_does_not_replay_acked_inputs(worker: Worker) -> None:
    tail = worker.tail()
    wrapper = await worker.start(["cat"])
    first = await worker.push("first")
    await tail.until(is_event("done", input_id=first))
    await worker.wait_acked()
    assert await wrapper.stop() == 0

    await worker.start(["cat"])
    await ready(worker, tail)
    second = await worker.push("second")
    events = await tail.until(is_event("done", input_id=second))
    assert all(e["input_id"] != first for e in events)
    assert ("stdout", "second") in [(e["type"], e["content"]) for e in events]


async def test_failing_command_reports_its_exit_code(worker: Worker) -> None:
    tail = worker.tail()
    await worker.start(["sh", "-c", "echo oops >&2; exit 3"])
    input_id = await worker.push("x")
    events = await tail.until(is_event("done", input_id=input_id))
    assert ("stderr", "oops") in [(e["type"], e["content"]) for e in events]
    assert events[-1]["content"] == "3"


async def test_missing_program_gives_error_and_127(worker: Worker) -> None:
    tail = worker.tail()
    await worker.start(["/nonexistent/agent", "--flag"])
    input_id = await worker.push("x")
    events = await tail.until(is_event("done", input_id=input_id))
    errors = [e["content"] for e in events if e["type"] == "error"]
    assert len(errors) == 1
    assert "/nonexistent/agent" in errors[0]
    assert "not found" in errors[0]
    assert events[-1]["content"] == "127"


async def test_program_that_cannot_be_executed_gives_126(worker: Worker) -> None:
    script = worker.workdir / "agent.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    tail = worker.tail()
    await worker.start([str(script)])
    input_id = await worker.push("x")
    events = await tail.until(is_event("done", input_id=input_id))
    assert any(e["type"] == "error" and "permission denied" in e["content"] for e in events)
    assert events[-1]["content"] == "126"


async def test_cancel_stops_a_long_run_promptly(worker: Worker) -> None:
    tail = worker.tail()
    await worker.start(["sleep", "30"])
    prompt = await worker.push("x")
    await tail.until(is_event("status", "busy", prompt))
    started = time.monotonic()
    cancel = await worker.push(type_="cancel")
    events = await tail.until(is_event("status", "idle", prompt), timeout=5)
    assert time.monotonic() - started < 3
    kinds = [(e["type"], e["content"]) for e in events]
    assert ("done", str(128 + signal.SIGTERM)) in kinds
    assert any(t == "error" and cancel in c for t, c in kinds)
    await worker.wait_acked()  # the prompt and the cancel


async def test_busy_worker_keeps_refreshing_its_activity_time(worker: Worker) -> None:
    tail = worker.tail()
    await worker.start(["sleep", "30"])
    prompt = await worker.push("x")
    busy = (await tail.until(is_event("status", "busy", prompt)))[-1]
    # The input arrived at `busy`; a beat after that must carry a later time (not the arrival).
    async with asyncio.timeout(5):
        while (beat := await worker.admin.get(worker.heartbeat_key)) is None or beat <= busy[
            "timestamp"
        ]:
            await asyncio.sleep(0.05)


async def test_cancel_with_nothing_running_is_answered_and_acked(worker: Worker) -> None:
    tail = worker.tail()
    await worker.start(["cat"])
    await ready(worker, tail)
    cancel = await worker.push(type_="cancel")
    [event] = await tail.until(is_event("error", input_id=cancel))
    assert "nothing" in event["content"].lower()
    await worker.wait_acked()


async def test_unknown_input_type_is_answered(worker: Worker) -> None:
    tail = worker.tail()
    await worker.start(["cat"])
    input_id = await worker.push("x", type_="dance")
    events = await tail.until(is_event("done", input_id=input_id))
    assert any(e["type"] == "error" and "dance" in e["content"] for e in events)
    await worker.wait_acked()


async def test_lines_stream_while_the_agent_still_runs(worker: Worker) -> None:
    tail = worker.tail()
    # Prints a line, then waits for the test to create a file: the first line must arrive
    # while the agent is still running, long before it exits.
    script = "echo first; while [ ! -e release ]; do sleep 0.02; done; echo second"
    await worker.start(["sh", "-c", script])
    input_id = await worker.push("x")
    events = await tail.until(is_event("stdout", "first", input_id), timeout=5)
    assert not any(e["type"] == "done" for e in events)
    (worker.workdir / "release").touch()
    rest = await tail.until(is_event("done", input_id=input_id))
    assert [(e["type"], e["content"]) for e in rest] == [("stdout", "second"), ("done", "0")]


async def test_two_prompts_run_in_order_one_at_a_time(worker: Worker) -> None:
    tail = worker.tail()
    script = 'echo "start $WM_INPUT_ID"; sleep 0.2; echo "end $WM_INPUT_ID"'
    await worker.start(["sh", "-c", script])
    await ready(worker, tail)
    first = await worker.push("a")
    second = await worker.push("b")
    events = await tail.until(is_event("status", "idle", second))
    sequence = [(e["type"], e["content"], e["input_id"]) for e in events]
    assert sequence == [
        ("status", "busy", first),
        ("stdout", f"start {first}", first),
        ("stdout", f"end {first}", first),
        ("done", "0", first),
        ("status", "idle", first),
        ("status", "busy", second),
        ("stdout", f"start {second}", second),
        ("stdout", f"end {second}", second),
        ("done", "0", second),
        ("status", "idle", second),
    ]


async def test_custom_agent_gets_prompt_on_stdin_env_and_file(worker: Worker) -> None:
    tail = worker.tail()
    script = (
        'echo "env:$WM_PROMPT"; echo "file:$(cat "$WM_PROMPT_FILE")"; '
        'echo "stdin:$(cat)"; echo "url:${WM_REDIS_URL:-absent}"'
    )
    await worker.start(["sh", "-c", script])
    input_id = await worker.push("hello there")
    events = await tail.until(is_event("done", input_id=input_id))
    lines = [e["content"] for e in events if e["type"] == "stdout"]
    assert lines == [
        "env:hello there",
        "file:hello there",
        "stdin:hello there",
        "url:absent",  # the Redis credentials stay with the wrapper
    ]


async def test_large_prompt_is_not_put_in_the_environment(worker: Worker) -> None:
    tail = worker.tail()
    script = 'echo "env:${#WM_PROMPT}"; wc -c < "$WM_PROMPT_FILE"; wc -c'
    await worker.start(["sh", "-c", script])
    input_id = await worker.push("x" * 100_000)
    events = await tail.until(is_event("done", input_id=input_id))
    lines = [e["content"].strip() for e in events if e["type"] == "stdout"]
    assert lines == ["env:0", "100000", "100000"]


async def test_sigterm_stops_the_run_without_acking_it(worker: Worker) -> None:
    tail = worker.tail()
    wrapper = await worker.start(["sleep", "30"])
    prompt = await worker.push("long job")
    await tail.until(is_event("status", "busy", prompt))
    started = time.monotonic()
    assert await wrapper.stop(timeout=8) == 0
    assert time.monotonic() - started < 5
    events = await tail.until(is_event("error", input_id=prompt))
    assert ("status", "stopping") in [(e["type"], e["content"]) for e in events]
    assert not any(e["type"] == "done" for e in tail.seen)
    assert await worker.pending_count() == 1

    # The work is not lost: the restarted worker runs the same input again.
    await worker.start(["sh", "-c", 'echo "again: $WM_PROMPT"'])
    events = await tail.until(is_event("done", input_id=prompt))
    assert ("stdout", "again: long job") in [(e["type"], e["content"]) for e in events]
    await worker.wait_acked()


async def test_survives_a_redis_restart(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    admin = Redis.from_url(server.url, decode_responses=True)
    worker = Worker(
        id="restart",
        prefix="wrs",
        admin=admin,
        url=server.url,
        tmp=tmp_path,
        workdir=tmp_path / "ws",
        state_dir=tmp_path / "state",
    )
    worker.workdir.mkdir()
    try:
        tail = worker.tail()
        wrapper = await worker.start(["cat"])
        await ready(worker, tail)
        server.restart()  # the data is gone too: the wrapper must recreate its group
        tail.restart()
        with contextlib.suppress(RedisConnectionError):
            await admin.ping()  # the test's own pooled connection died with the server
        input_id = await worker.push("after the restart")
        events = await tail.until(is_event("done", input_id=input_id), timeout=15)
        assert ("stdout", "after the restart") in [(e["type"], e["content"]) for e in events]
        async with asyncio.timeout(5):
            while await admin.get(worker.heartbeat_key) is None:
                await asyncio.sleep(0.05)
        assert await wrapper.stop() == 0
    finally:
        for process in worker.processes:
            await process.kill()
        await admin.aclose()
        server.stop()


async def test_a_spent_budget_refuses_input_and_says_so_in_the_heartbeat(worker: Worker) -> None:
    # The spend survives restarts in the state directory; this worker has spent 2 of 1.
    worker.state_dir.mkdir(parents=True, exist_ok=True)
    private = worker.state_dir / "wrapper" / "private"  # the wrapper's own files
    private.mkdir(parents=True)
    (private / "cost.json").write_text('{"total_usd": 2.0, "sessions": {}}')
    tail = worker.tail()
    await worker.start(["sh", "-c", "touch ran"], WM_MAX_COST_USD="1")
    await ready(worker, tail)
    input_id = await worker.push("anything")
    events = await tail.until(is_event("done", input_id=input_id))
    [error] = [e["content"] for e in events if e["type"] == "error"]
    assert "budget is spent" in error and "max_cost_usd 1" in error
    assert events[-1]["content"] == "1"
    assert not (worker.workdir / "ran").exists()  # the agent never started
    beat = await worker.admin.get(worker.heartbeat_key)
    assert beat is not None and beat.split()[1:] == ["cost=2", "budget=exceeded"]


async def test_an_input_past_its_timeout_is_stopped_with_124(worker: Worker) -> None:
    tail = worker.tail()
    await worker.start(["sh", "-c", "echo started; exec sleep 60"], WM_INPUT_TIMEOUT_SECONDS="1")
    await ready(worker, tail)
    input_id = await worker.push("x")
    events = await tail.until(is_event("done", input_id=input_id), timeout=15)
    assert [e["content"] for e in events if e["type"] == "stdout"] == ["started"]
    assert any(
        "input_timeout_seconds (1 s)" in e["content"] for e in events if e["type"] == "error"
    )
    assert events[-1]["content"] == "124"
    await worker.wait_acked()
