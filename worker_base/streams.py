"""The output stream writer: every event the wrapper emits goes through one batching task.

Agents can print tens of thousands of lines a second, and a round trip per line would cap that
at a few thousand. So producers only append to a local buffer; one task takes whatever has
accumulated (up to ``batch_size`` entries) and sends it as one non-transactional pipeline of
XADDs. Nothing waits on purpose: an idle writer sends a lone line at once (latency), a busy one
sends big batches (throughput). The buffer is bounded: when it is full, producers wait, so a
fast agent ends up blocked on its own stdout pipe instead of filling the wrapper's memory.

Delivery is at least once: if Redis drops the connection in the middle of a pipeline, the batch
is sent again after reconnecting, and entries that had already landed appear twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterable

from redis.asyncio import Redis

from worker_base.agents.base import Event
from worker_base.clock import iso_now
from worker_base.redis_client import TRANSIENT_ERRORS, Backoff

log = logging.getLogger("worker_base")

#: (type, content, timestamp, input_id)
Entry = tuple[str, str, str, str]


class OutputWriter:
    def __init__(
        self,
        redis: Redis,
        key: str,
        maxlen: int,
        *,
        batch_size: int = 500,
        max_batch_bytes: int = 4 * 1024 * 1024,
        max_pending: int = 10_000,
        max_pending_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self._redis = redis
        self._key = key
        self._maxlen = maxlen
        self._batch_size = batch_size
        self._max_batch_bytes = max_batch_bytes
        self._max_pending = max_pending
        self._max_pending_bytes = max_pending_bytes
        self._pending: deque[Entry] = deque()
        self._pending_bytes = 0
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._drained = asyncio.Event()
        self._drained.set()
        self._task: asyncio.Task[None] | None = None
        #: Counters for logs and tests.
        self.sent = 0
        self.batches = 0
        self.refused = 0

    # --- producers -----------------------------------------------------------------------
    def put_nowait(self, type_: str, content: str, input_id: str) -> None:
        """Queue one of the wrapper's own events (status, error, done): never waits.

        These are few, so they may exceed the bound; only agent output is held back.
        """
        self._append((type_, content, iso_now(), input_id))
        self._wakeup.set()

    async def put_many(self, events: Iterable[Event], input_id: str) -> None:
        """Queue agent events, all stamped now; waits while the buffer is full."""
        stamp = iso_now()
        for event in events:
            self._append((event.type, event.content, stamp, input_id))
        self._wakeup.set()
        while self._full():
            self._room.clear()
            await self._room.wait()

    def _append(self, entry: Entry) -> None:
        self._pending.append(entry)
        self._pending_bytes += len(entry[1])
        self._drained.clear()

    def _full(self) -> bool:
        return (
            len(self._pending) >= self._max_pending
            or self._pending_bytes >= self._max_pending_bytes
        )

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="output-writer")

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def wait_drained(self) -> None:
        """Until everything queued so far is in Redis (or refused by it)."""
        await self._drained.wait()

    async def flush(self, within: float | None) -> bool:
        """True when everything queued has been sent within ``within`` seconds."""
        try:
            async with asyncio.timeout(within):
                await self._drained.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, within: float) -> None:
        """Flush what we can within ``within`` seconds, then stop the task."""
        flushed = await self.flush(within)
        if not flushed:
            log.error(
                "could not write %d output events before stopping (Redis unreachable)",
                len(self._pending),
            )
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # --- the writer task -----------------------------------------------------------------
    async def _run(self) -> None:
        backoff = Backoff("writing the output stream")
        while True:
            await self._wakeup.wait()
            if not self._pending:
                self._wakeup.clear()
                self._drained.set()
                continue
            batch = self._take()
            while True:
                try:
                    await self._send(batch)
                except TRANSIENT_ERRORS as exc:
                    await backoff.wait(exc)
                    continue
                backoff.succeeded()
                break
            if not self._pending:
                self._drained.set()

    def _take(self) -> list[Entry]:
        batch: list[Entry] = []
        size = 0
        pending = self._pending
        while pending and len(batch) < self._batch_size and size < self._max_batch_bytes:
            entry = pending.popleft()
            size += len(entry[1])
            batch.append(entry)
        self._pending_bytes -= size
        if not self._full():
            self._room.set()
        return batch

    async def _send(self, batch: list[Entry]) -> None:
        key, maxlen = self._key, self._maxlen
        pipe = self._redis.pipeline(transaction=False)
        for type_, content, stamp, input_id in batch:
            # execute_command skips xadd()'s argument juggling: this loop is the hot path.
            pipe.execute_command(
                "XADD",
                key,
                "MAXLEN",
                "~",
                maxlen,
                "*",
                "type",
                type_,
                "content",
                content,
                "timestamp",
                stamp,
                "input_id",
                input_id,
            )
        results = await pipe.execute(raise_on_error=False)
        errors = [result for result in results if isinstance(result, Exception)]
        self.batches += 1
        self.sent += len(batch) - len(errors)
        if errors:
            # A refusal (NOPERM, OOM, wrong type) will not heal by resending; say so and go on.
            self.refused += len(errors)
            log.error(
                "Redis refused %d of %d output events: %s", len(errors), len(batch), errors[0]
            )
