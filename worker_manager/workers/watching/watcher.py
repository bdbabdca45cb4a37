"""Status from the outside: heartbeats in Redis and Docker's events stream, never the data plane.

- A worker's first heartbeat turns STARTING into RUNNING (and delivers the create's prompt).
- A RUNNING worker whose heartbeat expired is FAILED (``heartbeat_lost``); a STARTING one whose
  container started ``start_timeout_seconds`` ago without a heartbeat is FAILED too.
- The heartbeat's value (the wrapper's last activity, checked and clamped to now) becomes
  ``last_activity_at``; the spend it reports becomes ``cost_usd``, and ``budget=exceeded`` stops
  the worker (``budget_exceeded``). A value the wrapper would never write is that worker's
  problem alone: FAILED with ``heartbeat_invalid``.
- Docker's ``die``/``oom`` events of this manager's containers end the worker: exit code 0 is
  STOPPED, anything else FAILED, OOM-kill FAILED with ``reason=oom``. An ``oom`` event ends the
  worker even when only the agent (not the container's init) was killed: its memory limit is too
  small for its work, and the wrapper's own state may have been hit. A ``die`` with 137 whose
  ``oom`` event was missed (events reconnecting) is checked against ``State.OOMKilled``.
- After a Redis restart (its ``run_id`` changes) or an outage, lost heartbeats are not judged for
  one heartbeat TTL: the wrappers need that long to reconnect (and their ACL users to be
  re-created by ``on_redis_restart``).
- The same for contained workers when their own data path was down: before failing a worker
  for a lost heartbeat, the watcher asks when the host's egress service (their only way to
  Redis) last started; while it is down, or until one TTL after it came back, a silence may be
  the service's doing, not the worker's, and is not judged.
One pipeline per tick covers every live worker; one events stream covers every container.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import docker.errors
from docker import DockerClient
from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker_manager.contract.kinds import WorkerStatus
from worker_manager.contract.labels import (
    LABEL_MANAGER,
    LABEL_PREFIX,
    LABEL_SERVICE,
    LABEL_SERVICE_OF,
    LABEL_WORKER,
)
from worker_manager.contract.reasons import Ended, Moved, never_ready
from worker_manager.core.clock import iso_from_unix
from worker_manager.core.logs import get_logger
from worker_manager.settings import Settings
from worker_manager.workers.state.heartbeats import Observed, observe
from worker_manager.workers.state.records import WorkerStore
from worker_manager.workers.state.summaries import Summaries
from worker_manager.workers.transitions.lifecycle import Lifecycle, Outcome, outcome_of
from worker_manager.workers.watching.service_exits import service_ended

log = get_logger(__name__)

#: How often heartbeats are read while a started worker has not yet sent its first one.
STARTING_POLL_SECONDS = 0.025
RedisRestarted = Callable[[], Awaitable[None]]
#: When the workers' data path (the egress service) last started, as Unix time; None while it
#: does not answer.
DataPathStarted = Callable[[], Awaitable[float | None]]
#: Counts refused worker writes by kind (the manager passes its metrics' counter).
Dropped = Callable[[str, int], None]


class StatusWatcher:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        raw_redis: Redis,
        store: WorkerStore,
        docker: DockerClient,
        lifecycle: Lifecycle,
        *,
        wake: asyncio.Event,
        on_redis_restart: RedisRestarted | None = None,
        dropped: Dropped = lambda _kind, _count: None,
        data_path_started: DataPathStarted | None = None,
        summaries: Summaries | None = None,
        others: Callable[[str], StatusWatcher | None] | None = None,
    ) -> None:
        """``others``: the watchers of the other namespaces this manager serves, by key prefix
        (SPEC §11). With it this watcher reads the Engine's events of every namespace of this
        manager and hands each to its namespace's watcher: one events stream per host, however
        many tenants; without it, only its own namespace's."""
        self._others = others
        self._settings = settings
        self._redis = redis
        self._raw = raw_redis  # does not decode: heartbeats are the workers' bytes
        self._store = store
        self._docker = docker
        self._lifecycle = lifecycle
        self._dropped = dropped
        self._on_redis_restart = on_redis_restart
        self._data_path_started = data_path_started
        self._summaries = summaries
        #: Set when a container has just started (the provisioner sets it): the next round
        #: comes at once, and its fast polling catches the first heartbeat within
        #: ``STARTING_POLL_SECONDS``.
        self.wake = wake
        self._oom: set[str] = set()
        self.events_connected = threading.Event()
        self._stream: Any = None
        self._run_id: str | None = None
        self._outage = False
        self._grace_until = 0.0
        self._next_restart_check = 0.0
        self.redis_restarts = 0

    # --- heartbeats: one round per watch interval, run by the supervisor -------------------
    async def heartbeat_round(self) -> float:
        """Judge every live worker once; returns how long to wait before the next round."""
        soon = False
        try:
            await self._notice_redis_restart()
            soon = await self.check_heartbeats()
        except (RedisError, OSError) as exc:
            self._outage = True
            log.warning("heartbeat check failed", error=str(exc))
        # A started container is about to send its first heartbeat: look again quickly, so
        # RUNNING follows readiness closely instead of up to a whole interval later.
        interval = self._settings.watch_interval_seconds
        return min(interval, STARTING_POLL_SECONDS) if soon else interval

    @property
    def _settle_seconds(self) -> float:
        """How long reconnecting wrappers may take to beat again."""
        return self._settings.heartbeat_ttl_seconds + 2 * self._settings.heartbeat_interval_seconds

    async def _data_path_was_down(self, now: float) -> bool:
        """Whether the contained workers' data path is down or came back within the settle
        time (then a lost heartbeat may be its fault); asked only when a heartbeat is lost."""
        if self._data_path_started is None:
            return False
        try:
            started = await self._data_path_started()
        except Exception as exc:  # asking must never stop the round
            log.warning("the egress service's start time is unknown", error=str(exc))
            return True
        return started is None or now - started < self._settle_seconds

    async def _notice_redis_restart(self) -> None:
        # Once per watch interval is enough to notice a restart; the 25 ms ticks while a worker
        # starts need not each send an INFO.
        now = time.monotonic()
        if now < self._next_restart_check and not self._outage:
            return
        self._next_restart_check = now + self._settings.watch_interval_seconds
        info: dict[str, Any] = await self._redis.info("server")
        run_id = str(info.get("run_id", ""))
        restarted = self._run_id is not None and run_id != self._run_id
        if restarted or self._outage:
            self._grace_until = time.monotonic() + self._settle_seconds
        self._run_id, self._outage = run_id, False
        if restarted:
            self.redis_restarts += 1
            log.warning(
                "redis restarted or failed over; restoring what it may have lost", run_id=run_id
            )
            if self._on_redis_restart is not None:
                await self._on_redis_restart()

    async def check_heartbeats(self) -> bool:
        """Judge every live worker; true when one has started and awaits its first heartbeat.

        Each worker is judged on its own: whatever its keys hold, a failure while judging one
        is logged and the others are judged all the same."""
        ids = await self._store.live_ids()
        now = time.time()
        in_grace = time.monotonic() < self._grace_until
        awaiting = False
        observed = await observe(self._raw, self._settings.keys, ids, now)
        if not in_grace and any(silent(seen) for seen in observed):
            in_grace = await self._data_path_was_down(now)
        for seen in observed:
            verdict = heartbeat_verdict(
                seen, now, start_timeout=self._settings.start_timeout_seconds, in_grace=in_grace
            )
            try:
                await self._apply(seen.worker_id, verdict)
            except (RedisError, OSError):
                raise  # an outage, not this worker's doing
            except Exception:
                log.exception(
                    "judging a worker failed; it is judged again next round",
                    worker_id=seen.worker_id,
                )
            awaiting = awaiting or verdict.awaiting_first_beat
        if self._summaries is not None:
            try:
                await self._summaries.refresh(observed)
            except (RedisError, OSError):
                raise
            except Exception:
                log.exception("copying workspace summaries failed; tried again next round")
        return awaiting

    async def _apply(self, worker_id: str, verdict: Verdict) -> None:
        if verdict.forget:  # record expired or removed: nothing live to watch
            await self._redis.srem(self._store.live_key, worker_id)
        elif verdict.end is not None:
            if verdict.problem is not None:
                log.warning("invalid heartbeat", worker_id=worker_id, problem=verdict.problem)
                self._dropped("heartbeat", 1)
            await self._lifecycle.end(worker_id, verdict.end)
        elif verdict.running:
            changed = await self._store.transition(
                worker_id,
                WorkerStatus.RUNNING,
                Moved.READY,
                allowed_from=(WorkerStatus.STARTING,),
                fields=verdict.fields,
            )
            if changed.changed:
                log.info("worker running", worker_id=worker_id)
        elif verdict.fields:
            await self._store.update(worker_id, verdict.fields)

    # --- docker events: for the service's life, run by the supervisor ---------------------
    async def docker_events(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        # Ends this run's reader thread when the run ends for any reason (a restart starts a
        # new one), not only at the service's stop.
        finished = threading.Event()
        reader = threading.Thread(
            target=self._read_events,
            args=(loop, queue, stop, finished),
            name="docker-events",
            daemon=True,
        )
        reader.start()
        try:
            await self._pump(queue, stop)
        finally:
            finished.set()
            stream = self._stream
            if stream is not None:
                with contextlib.suppress(Exception):
                    stream.close()

    async def _pump(self, queue: asyncio.Queue[dict[str, Any]], stop: asyncio.Event) -> None:
        while (event := await self._next_event(queue, stop)) is not None:
            watcher = self._watcher_of(event)
            if watcher is None:
                continue
            try:
                await watcher.on_event(event)
            except Exception:
                log.exception("handling a docker event failed")

    def _watcher_of(self, event: dict[str, Any]) -> StatusWatcher | None:
        """The watcher of the event's namespace (its container's key prefix label)."""
        if self._others is None:
            return self
        attrs = (event.get("Actor") or {}).get("Attributes") or {}
        prefix = str(attrs.get(LABEL_PREFIX, ""))
        return self if prefix == self._settings.keys.prefix else self._others(prefix)

    async def _next_event(
        self, queue: asyncio.Queue[dict[str, Any]], stop: asyncio.Event
    ) -> dict[str, Any] | None:
        """The next event from the reader thread, or None once ``stop`` is set."""
        getter = asyncio.ensure_future(queue.get())
        stopper = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if getter not in done:
            getter.cancel()
            return None
        return getter.result()

    def _read_events(
        self,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[dict[str, Any]],
        stop: asyncio.Event,
        finished: threading.Event,
    ) -> None:
        """Blocking reader thread; reconnects with back-off when the daemon goes away."""
        labels = [f"{LABEL_MANAGER}={self._settings.manager_id}"]
        if self._others is None:  # this namespace's only
            labels.append(f"{LABEL_PREFIX}={self._settings.keys.prefix}")
        filters = {"type": "container", "event": ["die", "oom"], "label": labels}
        delay = 0.5
        while not (stop.is_set() or finished.is_set()):
            stream = None
            try:
                stream = self._docker.events(
                    decode=True, filters=filters, since=int(time.time()) - 1
                )
                self._stream = stream
                self.events_connected.set()
                delay = 0.5
                for event in stream:
                    if stop.is_set() or finished.is_set():
                        break
                    loop.call_soon_threadsafe(queue.put_nowait, event)
            except (docker.errors.DockerException, OSError) as exc:
                log.warning("docker events unavailable; reconnecting", error=str(exc))
            except Exception:  # this thread must outlive anything one event can do to it
                log.exception("reading docker events failed; reconnecting")
            finally:
                self.events_connected.clear()
                self._stream = None
                if stream is not None:
                    with contextlib.suppress(Exception):
                        stream.close()
            if stop.is_set() or finished.is_set():
                return
            time.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def on_event(self, event: dict[str, Any]) -> None:
        attrs = (event.get("Actor") or {}).get("Attributes") or {}
        if attrs.get(LABEL_SERVICE_OF):
            await self._on_service_event(event, attrs)
            return
        worker_id = attrs.get(LABEL_WORKER)
        if not worker_id:
            return
        action = event.get("Action") or event.get("status")
        if action in ("die", "oom"):
            record = await self._store.get(worker_id)
            dying = str(event.get("id") or (event.get("Actor") or {}).get("ID") or "")
            if record is not None and not about_this_start(record.container_id, dying):
                # An earlier container's end (a suspended one stopping, replayed to a manager
                # that started a moment later): this start's container is not the one.
                return
        if action == "oom":
            self._oom.add(worker_id)
            await self._lifecycle.end(worker_id, Outcome(Ended.OOM))
            return
        if action != "die":
            return
        exit_code = int(attrs.get("exitCode", "0") or 0)
        oom = worker_id in self._oom or (exit_code == 137 and await self._oom_killed(attrs))
        self._oom.discard(worker_id)
        await self._lifecycle.end(worker_id, outcome_of(exit_code, oom))

    async def _on_service_event(self, event: dict[str, Any], attrs: dict[str, Any]) -> None:
        """A service of a worker ended (``service_exits``); its worker goes on."""
        if (event.get("Action") or event.get("status")) != "die":
            return
        if attrs.get(LABEL_MANAGER) != self._settings.manager_id:
            return
        code = str(attrs.get("exitCode") or "")
        exit_code = int(code) if code.isdigit() else None
        oom = exit_code == 137 and await self._oom_killed(attrs)
        worker_id, name = str(attrs[LABEL_SERVICE_OF]), str(attrs.get(LABEL_SERVICE, ""))
        if await service_ended(self._store, worker_id, name, exit_code, oom):
            log.warning("a service ended", worker_id=worker_id, service=name, exit_code=code)

    async def _oom_killed(self, attrs: dict[str, Any]) -> bool:
        name = attrs.get("name")
        if not name:
            return False

        def inspect() -> bool:
            try:
                state = self._docker.api.inspect_container(name).get("State") or {}
            except docker.errors.DockerException:
                return False
            return bool(state.get("OOMKilled"))

        return await asyncio.to_thread(inspect)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one heartbeat round decides for one worker (at most one of these is set)."""

    #: The record is gone: drop the id from the live set.
    forget: bool = False
    #: End the worker so.
    end: Outcome | None = None
    #: STARTING → RUNNING (its first heartbeat), with ``fields``.
    running: bool = False
    #: Record fields to write: the heartbeat's activity time and spend.
    fields: dict[str, str] = field(default_factory=dict)
    #: Why the heartbeat was refused (with ``end`` = ``heartbeat_invalid``).
    problem: str | None = None
    #: Started, no heartbeat yet: the watcher polls fast until it comes.
    awaiting_first_beat: bool = False


def about_this_start(recorded: str, dying: str) -> bool:
    """Whether a container's ``die``/``oom`` is about the worker's container of this start:
    the one its record names. A record that names none (just resumed, or its container not yet
    recorded) has none to end; an event that names no container is believed."""
    if not dying:
        return True
    return bool(recorded) and recorded == dying


def silent(seen: Observed) -> bool:
    """A RUNNING worker without a heartbeat: about to be judged ``heartbeat_lost``."""
    return seen.status is WorkerStatus.RUNNING and seen.beat is None and seen.problem is None


def heartbeat_verdict(
    seen: Observed, now: float, *, start_timeout: float, in_grace: bool
) -> Verdict:
    """The heartbeat rule (module docstring) as a plain function of what one round read.

    ``in_grace``: Redis restarted or was unreachable a moment ago, so a missing heartbeat is not
    yet a lost one (the wrappers are reconnecting)."""
    record = seen.record
    if record is None or not record.text("status"):
        return Verdict(forget=True)
    if record.status is None:
        return Verdict()  # a status no manager writes: nothing here to judge it by
    if seen.problem is not None:
        return Verdict(end=Outcome(Ended.HEARTBEAT_INVALID), problem=seen.problem)
    beat = seen.beat
    if beat is not None:
        fields = {}
        activity = iso_from_unix(beat.activity)
        if activity != record.text("last_activity_at"):
            fields["last_activity_at"] = activity
        # The gateway's metering, where there is one, is the spend: not what the agent says.
        cost = seen.metered_cost_usd if seen.metered_cost_usd is not None else beat.cost_usd
        if cost is not None and cost != record.cost_usd:
            fields["cost_usd"] = cost
        if beat.budget_exceeded or seen.metered_budget_exceeded:
            return Verdict(end=Outcome(Ended.BUDGET_EXCEEDED, fields=fields))
        if record.status is WorkerStatus.STARTING:
            if record.started_at is None:
                # No container of this start yet: the beat is an earlier container's (a
                # suspended wrapper beats while it stops), so it says nothing of this one.
                return Verdict()
            return Verdict(running=True, fields=fields)
        return Verdict(fields=fields)
    started = record.status is WorkerStatus.STARTING and record.started_at is not None
    if in_grace:
        return Verdict(awaiting_first_beat=started)
    if record.status is WorkerStatus.RUNNING:
        return Verdict(end=Outcome(Ended.HEARTBEAT_LOST))
    if started and record.started_at is not None and now - record.started_at > start_timeout:
        return Verdict(end=Outcome(never_ready(start_timeout)))
    return Verdict(awaiting_first_beat=started)
