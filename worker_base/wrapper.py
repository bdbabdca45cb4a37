"""The wrapper's main loop: inputs in, one agent run at a time, events out (SPEC §4).

Three tasks run beside the main loop: the input reader, the output writer and the heartbeat.
The reader reads ahead into a local queue so that a ``cancel`` is seen while a prompt runs;
prompts are run strictly in order by the main loop.

Acknowledgement rules (what a restart replays):

* a prompt is acked only after its ``done`` is in Redis, so a crash or restart before that runs
  it again (at least once) and a finished one is never replayed;
* a ``cancel`` applies to the input at the head of the line (the running prompt, or the next
  one if it has not started yet) and is acked together with it; a cancel with nothing to cancel
  is answered with an ``error`` event and acked at once. Cancels get no ``done`` of their own:
  the cancelled prompt's ``done`` is the completion signal;
* on SIGTERM/SIGINT the running prompt is stopped but NOT acked, and neither are prompts read
  ahead: the work is not lost, a restarted worker runs it again. The output says so (``error``
  for the interrupted input, no ``done``, then nothing more after ``status stopping``).

Workspace requests (SPEC §8) are answered by the wrapper, never by the agent
(``worker_base.workspace_requests``): this loop only schedules them, ``diff``, ``read`` and
``list`` at once, even while a prompt runs, ``write`` and ``exec`` in turn, like prompts, and
after each input that ran something the workspace summary before its ``done``.

A worker of a team (SPEC §12, ``worker_base.team``) also serves its agent's ``wm-team`` and
follows the team's board: each teammate's entry is a ``team`` event at once, and the notices
gathered since the last prompt go in front of the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from worker_base import hooks
from worker_base.agents.base import AgentDriver, Event
from worker_base.config import WrapperConfig
from worker_base.events import (
    BUDGET_SPENT,
    CANCELLED_BEFORE_START,
    INVALID_INPUT,
    EventType,
    WrapperState,
)
from worker_base.heartbeat import Heartbeat
from worker_base.identity import private_dir
from worker_base.inputs import (
    CANCEL,
    IMMEDIATE,
    GroupMissingError,
    InputEntry,
    InputReader,
    InputType,
)
from worker_base.ledger import CostLedger, format_usd
from worker_base.redis_client import REDIS_ERRORS, Backoff, connect
from worker_base.relays import LoopbackRelays
from worker_base.runner import AgentRun, Sink
from worker_base.streams import OutputWriter
from worker_base.team import TeamSide
from worker_base.workspace_requests import WorkspaceRequests

log = logging.getLogger("worker_base")

#: How long shutdown may spend writing the last events once the agent is stopped.
SHUTDOWN_FLUSH = 2.0


@dataclass(eq=False)
class Job:
    entry: InputEntry
    #: Ids of the cancel entries aimed at this input (acked with it).
    cancelled_by: list[str] = field(default_factory=list)
    run: AgentRun | None = None


class Wrapper:
    def __init__(
        self, config: WrapperConfig, driver: AgentDriver, *, redis: Redis | None = None
    ) -> None:
        self._config = config
        self._driver = driver
        self._redis = redis if redis is not None else connect(config)
        self._inputs = InputReader(self._redis, config.input_key, block_ms=config.block_ms)
        self._writer = OutputWriter(self._redis, config.output_key, config.output_maxlen)
        #: One ledger per worker: the driver's when its agent reports cost.
        self._ledger = driver.ledger or CostLedger(private_dir(config), config.max_cost_usd)
        self._heartbeat = Heartbeat(
            self._redis,
            config.heartbeat_key,
            interval=config.heartbeat_interval,
            ttl=config.heartbeat_ttl,
            facts=self._facts,
        )
        self._requests = WorkspaceRequests(config, self._redis, self._writer.put_nowait)
        self._jobs: deque[Job] = deque()
        self._current: Job | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._ready = False
        self._failed = False
        self._relays = LoopbackRelays(config.relays)
        self._team = TeamSide(config, self._redis, self._team_event) if config.team else None

    # --- entry point -----------------------------------------------------------------------
    async def run(self) -> int:
        """Serves until SIGTERM/SIGINT; returns the process exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self._relays.start()
            pending = await self._start()
            if pending is None:
                log.info("stopped before Redis was reachable")
                return 0
            await self._await_services()
            self._begin(pending)
            while True:
                job = await self._next_job()
                if job is None:
                    break
                await self._handle(job)
            await self._shutdown()
            return 1 if self._failed else 0
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self._cancel_tasks()
            await self._relays.close()
            await self._writer.close(0)
            with contextlib.suppress(Exception):
                await self._redis.aclose()

    def request_stop(self) -> None:
        if self._stop.is_set():
            return
        log.info("stop requested")
        self._stop.set()
        self._wake.set()
        if self._ready:  # tell the output, and stop the agent
            self._writer.put_nowait(EventType.STATUS, WrapperState.STOPPING, "")
        job = self._current
        if job is not None and job.run is not None:
            job.run.cancel()

    # --- start -----------------------------------------------------------------------------
    async def _start(self) -> list[InputEntry] | None:
        """Connects, ensures the group, reads our pending inputs; None if stopped meanwhile."""
        backoff = Backoff(f"connecting to Redis at {self._config.safe_redis_url}", cap=5.0)
        while not self._stop.is_set():
            try:
                await self._redis.ping()
                await self._inputs.ensure_group()
                pending = await self._inputs.read_pending()
            except GroupMissingError:
                exc: BaseException = GroupMissingError(
                    f"consumer group 'wrapper' is missing on {self._config.input_key} "
                    "and this user may not create it"
                )
            except REDIS_ERRORS as exc_:
                exc = exc_
            else:
                backoff.succeeded()
                return pending
            await self._sleep_unless_stopped(backoff.failed(exc))
        return None

    async def _await_services(self) -> None:
        """Until each of the worker's services answers on its loopback port (SPEC §9), or the
        wait is over (the manager judges a service that never answers), or a stop."""
        ports = list(self._config.service_ports)
        deadline = asyncio.get_running_loop().time() + self._config.service_wait
        while ports and not self._stop.is_set():
            ports = [port for port in ports if not await _answers(port)]
            if not ports or asyncio.get_running_loop().time() >= deadline:
                break
            await self._sleep_unless_stopped(0.05)
        if ports:
            log.warning("services on ports %s did not answer; reading inputs anyway", ports)

    def _begin(self, pending: list[InputEntry]) -> None:
        """Ready: the status event, the first heartbeat, then the background tasks."""
        self._ready = True
        self._writer.start()
        self._writer.put_nowait(EventType.STATUS, WrapperState.READY, "")
        self._spawn(self._first_heartbeat(), "heartbeat")
        self._spawn(self._read_inputs(), "input-reader")
        self._spawn(self._forward_refusals(), "refusals")
        if self._team is not None:
            self._team.start(self._spawn)
        if pending:
            log.info("resuming %d unacknowledged input(s)", len(pending))
        for entry in pending:
            self._accept(entry)
        log.info(
            "ready: worker %s, agent %s, inputs %s",
            self._config.worker_id,
            self._config.agent_type,
            self._config.input_key,
        )

    async def _first_heartbeat(self) -> None:
        # After the ready event is in the stream: whoever sees RUNNING also finds "ready".
        await self._writer.wait_drained()
        await self._heartbeat.run()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_ended)
        self._tasks.add(task)

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            # Without its reader or heartbeat the worker is useless; stop so it is restarted.
            log.error("task %s failed: %r; stopping", task.get_name(), exc, exc_info=exc)
            self._failed = True
            self.request_stop()

    async def _cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    # --- inputs ----------------------------------------------------------------------------
    async def _read_inputs(self) -> None:
        backoff = Backoff("reading the input stream")
        while True:
            try:
                entries = await self._inputs.read_new()
            except GroupMissingError as exc:
                # Redis lost its data (restarted without persistence): recreate and go on.
                await self._recreate_group(backoff, exc)
                continue
            except REDIS_ERRORS as exc:
                await backoff.wait(exc)
                continue
            backoff.succeeded()
            for entry in entries:
                self._accept(entry)

    async def _recreate_group(self, backoff: Backoff, exc: BaseException) -> None:
        try:
            await self._inputs.ensure_group()
        except REDIS_ERRORS as err:
            exc = err
        await backoff.wait(exc)

    def _facts(self) -> str:
        """What the heartbeat carries after the time: the spend, and the summary's digest."""
        facts = self._ledger.heartbeat_suffix()
        digest = self._requests.summary_digest
        return f"{facts} ws={digest}" if digest else facts

    def _accept(self, entry: InputEntry) -> None:
        self._heartbeat.touch()
        if entry.missing:
            log.warning("input %s was deleted before it was handled; acknowledging it", entry.id)
            self._ack_soon(entry.id)
        elif entry.type == CANCEL:
            self._cancel(entry)
        elif entry.type in IMMEDIATE and entry.problem is None:
            self._spawn(self._answer_at_once(entry), f"answer-{entry.id}")
        else:
            self._jobs.append(Job(entry))
            self._wake.set()

    def _cancel(self, entry: InputEntry) -> None:
        target = self._current or (self._jobs[0] if self._jobs else None)
        if target is None:
            self._writer.put_nowait(
                "error", "Nothing was running, so there was nothing to cancel.", entry.id
            )
            self._ack_soon(entry.id)
            return
        log.info("input %s cancels input %s", entry.id, target.entry.id)
        target.cancelled_by.append(entry.id)
        if target.run is not None:
            target.run.cancel()

    def _ack_soon(self, *ids: str) -> None:
        async def ack() -> None:
            await self._ack(*ids)

        self._spawn(ack(), "ack")

    async def _ack(self, *ids: str) -> bool:
        """Acks once our events are in Redis; False if shutdown came first (not acked)."""
        if not await self._flushed():
            return False
        backoff = Backoff("acknowledging inputs")
        while True:
            try:
                await self._inputs.ack(*ids)
                return True
            except REDIS_ERRORS as exc:
                if self._stop.is_set():
                    log.warning("stopping before input(s) %s were acknowledged", ", ".join(ids))
                    return False
                await self._sleep_unless_stopped(backoff.failed(exc))

    async def _flushed(self) -> bool:
        drained = asyncio.ensure_future(self._writer.wait_drained())
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({drained, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            drained.cancel()
        if self._stop.is_set():
            return await self._writer.flush(SHUTDOWN_FLUSH)
        return True

    # --- running ---------------------------------------------------------------------------
    async def _next_job(self) -> Job | None:
        while not self._stop.is_set():
            if self._jobs:
                return self._jobs.popleft()
            self._wake.clear()
            await self._wake.wait()
        return None

    async def _handle(self, job: Job) -> None:
        input_id = job.entry.id
        emit = self._writer.put_nowait
        self._current = job
        self._heartbeat.busy = True
        try:
            if job.entry.problem is not None:
                emit(EventType.ERROR, job.entry.problem, input_id)
                code = INVALID_INPUT
            elif job.cancelled_by:
                emit(
                    EventType.ERROR,
                    f"Cancelled by input {job.cancelled_by[0]} before it started.",
                    input_id,
                )
                code = CANCELLED_BEFORE_START
            elif job.entry.type in (InputType.WRITE, InputType.EXEC):
                emit(EventType.STATUS, WrapperState.BUSY, input_id)
                code = await self._workspace_job(job)
                await self._requests.publish_summary(input_id)
            elif self._ledger.exhausted:
                emit(EventType.ERROR, self._budget_sentence("takes no more input"), input_id)
                code = BUDGET_SPENT
            else:
                emit(EventType.STATUS, WrapperState.BUSY, input_id)
                notices = await self._team.take_notices() if self._team is not None else None
                run = AgentRun(
                    self._config,
                    self._driver,
                    input_id,
                    (notices.text if notices is not None else "") + job.entry.content,
                    self._sink_for(input_id),
                )
                job.run = run
                if self._stop.is_set():
                    run.cancel()
                code = await run.run()
                for sentence in hooks.pending_refusals(self._config):
                    emit(EventType.ERROR, sentence, input_id)
                if self._stop.is_set() and not job.cancelled_by:
                    if notices is not None and self._team is not None:
                        self._team.give_back(notices)  # the rerun after a restart carries them
                    emit(
                        EventType.ERROR,
                        "The worker is stopping: this run was interrupted and the input left "
                        "unacknowledged, so it runs again if the worker restarts.",
                        input_id,
                    )
                    return
                if job.cancelled_by:
                    emit(EventType.ERROR, f"Cancelled by input {job.cancelled_by[0]}.", input_id)
                if self._ledger.exhausted:
                    emit(
                        EventType.ERROR, self._budget_sentence("will take no more input"), input_id
                    )
                await self._requests.publish_summary(input_id)
            emit(EventType.DONE, str(code), input_id)
            emit(EventType.STATUS, WrapperState.IDLE, input_id)
            await self._ack(input_id, *job.cancelled_by)
        finally:
            self._current = None
            self._heartbeat.busy = False
            self._heartbeat.touch()

    # --- the workspace (SPEC §8: worker_base.workspace_requests) ---------------------------------
    async def _answer_at_once(self, entry: InputEntry) -> None:
        """``diff``, ``read``, ``list``: answered now, whatever runs; acked once written."""
        code = await self._requests.answer(entry)
        self._writer.put_nowait(EventType.DONE, str(code), entry.id)
        await self._ack(entry.id)

    async def _workspace_job(self, job: Job) -> int:
        """A ``write`` or an ``exec``, in turn with the prompts."""
        entry = job.entry
        if entry.type == InputType.WRITE:
            return self._requests.write(entry)
        run = self._requests.exec_run(entry, self._sink_for(entry.id))
        if isinstance(run, int):
            return run
        job.run = run
        if self._stop.is_set():
            run.cancel()
        return await run.run()

    def _budget_sentence(self, consequence: str) -> str:
        limit = format_usd(self._ledger.max_cost_usd or 0.0)
        spent = format_usd(self._ledger.total_usd)
        return (
            f"This worker's budget is spent (max_cost_usd {limit}, spent {spent}): it "
            f"{consequence} and is being stopped."
        )

    def _sink_for(self, input_id: str) -> Sink:
        async def sink(events: list[Event]) -> None:
            await self._writer.put_many(events, input_id)

        return sink

    def _team_event(self, content: str) -> None:
        """A teammate's board entry, on the output now (``input_id``: the input running)."""
        current = self._current
        self._writer.put_nowait(EventType.TEAM, content, current.entry.id if current else "")

    async def _forward_refusals(self) -> None:
        refusals = hooks.refusals(self._config)
        if refusals is None:
            return
        try:
            async for sentence in refusals:
                current = self._current
                self._writer.put_nowait(
                    EventType.ERROR, sentence, current.entry.id if current else ""
                )
        except Exception:
            # Reporting refusals is a courtesy; the shims still refuse. Keep the worker up.
            log.exception("forwarding refused commands failed; no more will be reported")

    # --- stop ------------------------------------------------------------------------------
    async def _shutdown(self) -> None:
        await self._cancel_tasks()
        if not await self._writer.flush(SHUTDOWN_FLUSH):
            log.error("%d output events were not written (Redis unreachable)", self._writer.pending)
        log.info("stopped")


async def _answers(port: int) -> bool:
    """Whether something accepts a connection on ``127.0.0.1:port``."""
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
