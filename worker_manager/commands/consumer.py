"""The command stream consumer: a consumer group with at-least-once delivery, done carefully.

Order of business on start: create the group (MKSTREAM, from the beginning of the stream so no
command pushed before the first manager started is lost), re-read this consumer's own pending
entries, then block for new ones. Each entry is handled in a task of its own (bounded by
``command_concurrency``), so a ``status`` never waits behind a ``create``. A side loop keeps this
consumer's in-flight entries fresh (so no other manager steals them), takes over entries that a
dead consumer left pending (``XAUTOCLAIM``), and trims acknowledged entries from the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker_manager.commands.fairness import BUSY_SECONDS, FairShare
from worker_manager.core.keys import MANAGER_GROUP
from worker_manager.core.logs import get_logger
from worker_manager.settings import Settings

log = get_logger(__name__)

#: Asked before each read of the stream: False leaves it to the other managers for now.
Gate = Callable[[], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class Delivery:
    entry_id: str
    fields: dict[str, str]
    deliveries: int
    #: Fields whose name or value is not valid UTF-8 (kept in ``fields`` with ``\\x..``
    #: escapes, so the dead letter shows them): the command is refused naming them.
    undecodable: tuple[str, ...] = ()

    @classmethod
    def from_raw(cls, entry_id: bytes | str, raw: dict[Any, Any], deliveries: int) -> Delivery:
        """A stream entry as read by a client that does not decode: never raises."""
        fields: dict[str, str] = {}
        bad: list[str] = []
        for raw_name, raw_value in raw.items():
            name, name_ok = _text(raw_name)
            value, value_ok = _text(raw_value)
            fields[name] = value
            if not (name_ok and value_ok):
                bad.append(name)
        return cls(_text(entry_id)[0], fields, deliveries, tuple(bad))


def _text(value: object) -> tuple[str, bool]:
    """``value`` as text, and whether it was valid UTF-8."""
    if isinstance(value, str):
        return value, True
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8"), True
        except UnicodeDecodeError:
            return bytes(value).decode("utf-8", "backslashreplace"), False
    return str(value), True


Dispatch = Callable[[Delivery], Awaitable[None]]


class CommandConsumer:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        blocking_redis: Redis,  # must not decode: command fields are bytes until proven text
        dispatch: Dispatch,
        *,
        stream: str | None = None,
        gate: Gate | None = None,
        fair: FairShare | None = None,
        namespace: str = "",
    ) -> None:
        """``fair``: the manager's fair shares between namespaces (``commands.fairness``), this
        consumer's ``namespace`` named in them."""
        self._settings = settings
        self._redis = redis
        self._blocking = blocking_redis
        self._dispatch = dispatch
        # The shared stream by default; a manager's own stream for commands routed to it.
        self._stream = stream or settings.keys.commands
        #: Asked before every read: False leaves the stream to the other managers for now.
        self._gate = gate
        self._name = settings.manager_id
        self._slots = asyncio.Semaphore(settings.command_concurrency)
        self._fair = fair
        self._namespace = namespace
        #: Set each time one of this consumer's commands finishes (a fair share waits on it).
        self._released = asyncio.Event()
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self.connected = asyncio.Event()
        #: Reading commands (not stopped, not draining): only then are stale entries taken over.
        self._taking = False
        self._rounds = 0

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(self._stream, MANAGER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, stop: asyncio.Event, *, grace: float = 10.0) -> None:
        """Consume until ``stop`` is set, then let in-flight commands finish within ``grace``.

        Commands still running after the grace period are cancelled and stay pending in the
        group, where another manager (or this one, restarted) picks them up.
        """
        self._taking = True
        try:
            await self._with_reconnects(stop, self._consume)
        finally:
            self._taking = False
            await self._finish_in_flight(grace)

    async def _with_reconnects(
        self, stop: asyncio.Event, body: Callable[[asyncio.Event], Awaitable[None]]
    ) -> None:
        delay = 0.1
        while not stop.is_set():
            try:
                await self.ensure_group()
                self.connected.set()
                delay = 0.1
                await body(stop)
                return
            except (RedisConnectionError, RedisTimeoutError, OSError, ResponseError) as exc:
                # NOGROUP: a Redis restarted without its data lost the group; it is re-created
                # by ensure_group() on the next round.
                if isinstance(exc, ResponseError) and "NOGROUP" not in str(exc):
                    raise
                self.connected.clear()
                log.warning("redis unavailable; retrying", error=str(exc), retry_in=delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, 5.0)

    async def _consume(self, stop: asyncio.Event) -> None:
        await self._read_own_pending(stop)
        while not stop.is_set():
            await self._slots.acquire()
            self._slots.release()
            if self._gate is not None and not await self._gate():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._settings.block_ms / 1000)
                continue
            if not await self._fair_room(stop):
                break
            free = max(1, min(100, self._free_slots()))
            response = await self._blocking.xreadgroup(
                MANAGER_GROUP,
                self._name,
                {self._stream: ">"},
                count=free,
                block=self._settings.block_ms,
            )
            for _stream, entries in response or []:
                for entry_id, fields in entries:
                    await self._start(Delivery.from_raw(entry_id, fields or {}, 1))

    def _limit(self) -> int:
        concurrency = self._settings.command_concurrency
        return concurrency if self._fair is None else self._fair.limit(self._namespace, concurrency)

    def _free_slots(self) -> int:
        return self._limit() - len(self._in_flight)

    async def _fair_room(self, stop: asyncio.Event) -> bool:
        """Before a read: until this consumer is under its limit (its own commands finishing,
        or the other namespaces going quiet, looked at again every ``BUSY_SECONDS`` at the
        latest); False once ``stop`` is set. Only reads wait: an entry already taken (read,
        pending, reclaimed) starts at once, so none is held unstarted, where the upkeep would
        not keep it fresh and another manager could take it over."""
        while len(self._in_flight) >= self._limit() and not stop.is_set():
            self._released.clear()
            waits = [
                asyncio.ensure_future(self._released.wait()),
                asyncio.ensure_future(stop.wait()),
            ]
            await asyncio.wait(waits, timeout=BUSY_SECONDS, return_when=asyncio.FIRST_COMPLETED)
            for wait in waits:
                wait.cancel()
        return not stop.is_set()

    async def _read_own_pending(self, stop: asyncio.Event) -> None:
        """Re-handle what this consumer had taken before it restarted."""
        last = "0"
        while not stop.is_set():
            response = await self._blocking.xreadgroup(
                MANAGER_GROUP, self._name, {self._stream: last}, count=100
            )
            entries = [(_text(i)[0], f) for i, f in (response[0][1] if response else [])]
            if not entries:
                return
            counts = await self._delivery_counts([entry_id for entry_id, _ in entries])
            for entry_id, fields in entries:
                last = entry_id
                if entry_id in self._in_flight:
                    continue
                if not fields:  # trimmed away while pending: nothing left to handle
                    await self._redis.xack(self._stream, MANAGER_GROUP, entry_id)
                    continue
                await self._start(Delivery.from_raw(entry_id, fields, counts.get(entry_id, 1)))

    async def _delivery_counts(self, entry_ids: list[str]) -> dict[str, int]:
        if not entry_ids:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry_id in entry_ids:
                pipe.xpending_range(self._stream, MANAGER_GROUP, entry_id, entry_id, 1)
            results = await pipe.execute()
        counts: dict[str, int] = {}
        for rows in results:
            for row in rows:
                counts[row["message_id"]] = int(row["times_delivered"])
        return counts

    async def _start(self, delivery: Delivery) -> None:
        await self._slots.acquire()
        if self._fair is not None:
            self._fair.started(self._namespace)
        task = asyncio.create_task(self._run_one(delivery), name=f"command-{delivery.entry_id}")
        self._in_flight[delivery.entry_id] = task

    async def _run_one(self, delivery: Delivery) -> None:
        try:
            await self._dispatch(delivery)
        except asyncio.CancelledError:
            raise
        except Exception:  # the dispatcher answers errors itself; this is the last guard
            log.exception(
                "command handling crashed; left pending for retry", entry_id=delivery.entry_id
            )
        finally:
            self._in_flight.pop(delivery.entry_id, None)
            self._slots.release()
            self._released.set()

    async def _finish_in_flight(self, grace: float) -> None:
        tasks = list(self._in_flight.values())
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("handing back unfinished commands", count=len(pending))
            await asyncio.gather(*pending, return_exceptions=True)

    # --- housekeeping: rounds run by the service's supervisor -------------------------------
    @property
    def upkeep_interval(self) -> float:
        return max(self._settings.claim_idle_ms / 3000, 0.2)

    async def upkeep(self) -> None:
        """One round: keep our in-flight entries ours, take over a dead consumer's (while we
        take commands), and every ~30 s trim what every group has acknowledged. Outages are
        logged and wait for the next round; anything else is the supervisor's to report."""
        self._rounds += 1
        trim_every = max(int(30 / self.upkeep_interval), 1)
        try:
            await self._keep_in_flight_fresh()
            if self._taking:
                await self._reclaim()
            if self._rounds % trim_every == 0:
                await self.trim()
        except (RedisError, OSError) as exc:
            log.warning("consumer housekeeping failed", error=str(exc))

    async def _keep_in_flight_fresh(self) -> None:
        """Reset the idle time of entries we are still working on, so nobody reclaims them."""
        ids = list(self._in_flight)
        if ids:
            await self._redis.xclaim(self._stream, MANAGER_GROUP, self._name, 0, ids, justid=True)

    async def _reclaim(self) -> None:
        """Take over entries that another (dead) consumer left pending for too long."""
        start = "0-0"
        while True:
            result = await self._blocking.xautoclaim(
                self._stream,
                MANAGER_GROUP,
                self._name,
                self._settings.claim_idle_ms,
                start_id=start,
                count=100,
            )
            start = _text(result[0])[0]
            entries = [(_text(eid)[0], f) for eid, f in result[1]]
            fresh = [(eid, f) for eid, f in entries if eid not in self._in_flight]
            counts = await self._delivery_counts([eid for eid, _ in fresh])
            for entry_id, fields in fresh:
                if not fields:
                    await self._redis.xack(self._stream, MANAGER_GROUP, entry_id)
                    continue
                log.info("reclaimed a stale command", entry_id=entry_id)
                await self._start(Delivery.from_raw(entry_id, fields, counts.get(entry_id, 1)))
            if start in ("0-0", "0"):
                return

    async def trim(self) -> None:
        """Drop entries every group has acknowledged, so the stream does not grow forever."""
        groups = await self._redis.xinfo_groups(self._stream)
        thresholds: list[tuple[int, int]] = []
        for group in groups:
            last = _parse_id(str(group["last-delivered-id"]))
            thresholds.append((last[0], last[1] + 1))
            if int(group["pending"]):
                summary = await self._redis.xpending(self._stream, str(group["name"]))
                if summary.get("min"):
                    thresholds.append(_parse_id(str(summary["min"])))
        if thresholds:
            low = min(thresholds)
            await self._redis.xtrim(self._stream, minid=f"{low[0]}-{low[1]}")


def _parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
