"""The one owner of how a background loop runs: rounds, restarts, back-off and health.

Every loop of the service but the command consumer runs here, in one of two shapes:

- ``every(name, round, interval)``: the supervisor calls ``round()`` and sleeps ``interval``
  (or what the round returns) until stop. A round that raises is logged with its traceback,
  counted (``wm_loop_restarts_total{loop}``) and retried after a back-off (0.5 s doubling to
  30 s); the next success resets it.
- ``forever(name, body)``: ``body(stop)`` runs for the service's life (an event stream, a
  schedule of its own). If it raises, or returns before stop, it is restarted the same way.

A loop is unhealthy when it has failed ``FAILURES_UNHEALTHY`` times in a row, or (``every``)
has not finished a round in ``STALE_INTERVALS`` intervals (a round stuck on a dead socket);
``/readyz`` answers 503 naming it. Outages (Redis or Docker away) are the loops' own business:
they log and try again next round; what reaches the supervisor is a bug or a hostile value,
and it must never end a loop for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from worker_manager.core.logs import get_logger

log = get_logger(__name__)

#: One round; a float it returns is the wait before the next round (else the interval).
Round = Callable[[], Awaitable[object]]
Body = Callable[[asyncio.Event], Awaitable[None]]
Interval = Callable[[], float]

FAILURES_UNHEALTHY = 3
STALE_INTERVALS = 5
BACKOFF_FIRST = 0.5
BACKOFF_CAP = 30.0
#: A round never counts as stale sooner than this (fast loops poll every 25 ms).
MIN_STALE_SECONDS = 30.0


@dataclass
class LoopState:
    name: str
    interval: float | None  # None: a ``forever`` loop, judged by its failures only
    started: float = field(default_factory=time.monotonic)
    last_round: float | None = None
    failures: int = 0  # in a row
    restarts: int = 0  # in all
    last_error: str = ""

    def problem(self, now: float) -> str | None:
        """Why this loop is unhealthy, or None."""
        if self.failures >= FAILURES_UNHEALTHY:
            return f"failed {self.failures} times in a row ({self.last_error})"
        if self.interval is not None:
            since = self.last_round if self.last_round is not None else self.started
            limit = max(STALE_INTERVALS * self.interval, MIN_STALE_SECONDS)
            if now - since > limit:
                return f"no round finished for {now - since:.0f}s"
        return None


class Supervisor:
    def __init__(self, stop: asyncio.Event, on_restart: Callable[[str], None] | None = None):
        self._stop = stop
        self._on_restart = on_restart or (lambda _name: None)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.loops: dict[str, LoopState] = {}

    def every(
        self,
        name: str,
        round_: Round,
        interval: float | Interval,
        *,
        wait_first: bool = False,
        wake: asyncio.Event | None = None,
    ) -> None:
        """Run ``round_`` every ``interval`` seconds (a callable: read anew each round);
        ``wait_first`` when start-up has just done a round of its own; setting ``wake`` starts
        the next round at once (something happened that the round should see now)."""
        period = interval if callable(interval) else (lambda: interval)
        state = self.loops[name] = LoopState(name, period())
        self._spawn(name, self._every(state, round_, period, wait_first, wake))

    def forever(self, name: str, body: Body) -> None:
        state = self.loops[name] = LoopState(name, None)
        self._spawn(name, self._forever(state, body))

    def problems(self) -> dict[str, str]:
        """Unhealthy loops by name, with why (for ``/readyz``)."""
        now = time.monotonic()
        found = {name: state.problem(now) for name, state in self.loops.items()}
        return {name: problem for name, problem in found.items() if problem is not None}

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()

    def _spawn(self, name: str, coro: Awaitable[None]) -> None:
        if name in self._tasks:
            raise ValueError(f"loop {name!r} is already supervised")
        self._tasks[name] = asyncio.ensure_future(coro)
        self._tasks[name].set_name(f"loop-{name}")

    async def _every(
        self,
        state: LoopState,
        round_: Round,
        period: Interval,
        wait_first: bool,
        wake: asyncio.Event | None,
    ) -> None:
        if wait_first:
            await self._sleep(period(), wake)
        while not self._stop.is_set():
            try:
                result = await round_()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._failed(state, exc)
                continue
            state.interval = period()
            state.last_round = time.monotonic()
            state.failures = 0
            wait = result if isinstance(result, float) else state.interval
            await self._sleep(wait, wake)

    async def _forever(self, state: LoopState, body: Body) -> None:
        while not self._stop.is_set():
            try:
                await body(self._stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._failed(state, exc)
                continue
            if self._stop.is_set():
                return
            await self._failed(state, RuntimeError("returned while the service runs"))

    async def _failed(self, state: LoopState, exc: BaseException) -> None:
        state.failures += 1
        state.restarts += 1
        state.last_error = f"{type(exc).__name__}: {exc}"[:300]
        delay = min(BACKOFF_FIRST * 2 ** (state.failures - 1), BACKOFF_CAP)
        log.error(
            "background loop failed; restarting",
            loop=state.name,
            failures=state.failures,
            retry_in=delay,
            exc_info=exc,
        )
        self._on_restart(state.name)
        await self._sleep(delay)

    async def _sleep(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        if wake is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), seconds)
            return
        waiters = {asyncio.ensure_future(self._stop.wait()), asyncio.ensure_future(wake.wait())}
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            wake.clear()
