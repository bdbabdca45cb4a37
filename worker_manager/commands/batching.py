"""One Redis round trip for the work of many commands at once, instead of one round trip each.

Under load the command consumer runs dozens of commands at once, and each used to send its own
small pipeline: the event loop then spent most of its time writing to sockets and parsing
replies rather than answering. A :class:`PipelineBatcher` sends a caller's stage at once when
nothing is in flight (a lone command waits for nobody); the stages submitted while a round trip
is out gather and go together as ONE pipeline (ONE ``MULTI``/``EXEC`` when transactional) as soon
as it is back, so batches grow with the load.

A transaction of several commands' stages is as atomic for each of them as its own ``MULTI`` was:
Redis runs the whole block without interleaving. Each waiter gets the results of its own stage;
an error in one of its commands (Redis does not roll a ``MULTI`` back) fails that waiter only,
an error of the whole round trip (connection lost, ``EXECABORT``) fails every waiter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

#: Queues one caller's commands on the shared pipeline.
Stage = Callable[[Pipeline], object]
#: Queues, after every stage, the commands the callers share (e.g. one XACK of all their ids).
Epilogue = Callable[[Pipeline, list[str]], object]
_Waiter = tuple[Stage, str | None, "asyncio.Future[list[Any]]"]


class PipelineBatcher:
    def __init__(
        self, redis: Redis, *, transaction: bool, epilogue: Epilogue | None = None
    ) -> None:
        self._redis = redis
        self._transaction = transaction
        self._epilogue = epilogue
        self._queue: list[_Waiter] = []
        self._busy = False  # a round trip is in flight
        self._flusher: asyncio.Task[None] | None = None  # drains the queue behind it

    async def run(self, stage: Stage, *, tag: str | None = None) -> list[Any]:
        """Queue ``stage`` on the next round trip and return the results of its commands.

        A ``tag`` goes to the epilogue, queued after every stage of the batch; a failure of the
        epilogue's commands fails each waiter that gave a tag.
        """
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        waiter = (stage, tag, future)
        if self._busy:  # a round trip is in flight: join the batch gathering behind it
            self._queue.append(waiter)
            return await future
        # Nothing in flight: go at once (a lone command waits for nobody); whoever comes while
        # this round trip is out gathers into the next batch.
        self._busy = True
        try:
            await self._execute([waiter])
        finally:
            self._hand_over()
        return future.result()

    def _hand_over(self) -> None:
        if self._queue:
            self._flusher = asyncio.create_task(self._flush(), name="pipeline-batch")
        else:
            self._busy = False

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                # A waiter cancelled before its turn (shutdown) is left out: nothing of it runs.
                batch = [waiter for waiter in batch if not waiter[2].cancelled()]
                if batch:
                    await self._execute(batch)
        finally:
            for _stage, _tag, future in self._queue:  # only when the flusher itself was cancelled
                future.cancel()
            self._queue = []
            self._busy = False

    async def _execute(self, batch: list[_Waiter]) -> None:
        bounds: list[tuple[int, int]] = []
        tags: list[str] = []
        try:
            async with self._redis.pipeline(transaction=self._transaction) as pipe:
                for stage, tag, future in batch:
                    start = len(pipe)
                    try:
                        stage(pipe)
                    except Exception as exc:  # this caller's mistake: the others still run
                        del pipe.command_stack[start:]
                        future.set_exception(exc)
                    else:
                        if tag is not None:
                            tags.append(tag)
                    bounds.append((start, len(pipe)))
                shared = len(pipe)
                if tags and self._epilogue is not None:
                    self._epilogue(pipe, tags)
                if len(pipe) == 1:
                    # One command is atomic by itself: no MULTI/EXEC around it (e.g. a status
                    # answered by one script), three replies fewer to send and parse.
                    pipe.is_transaction = False
                results = await pipe.execute(raise_on_error=False) if len(pipe) else []
        except Exception as exc:  # the whole round trip failed: so did every waiter
            for _stage, _tag, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # cancelled (loop shutting down): the waiters are too
            for _stage, _tag, future in batch:
                future.cancel()
            raise
        shared_error = next((r for r in results[shared:] if isinstance(r, Exception)), None)
        for (_stage, tag, future), (start, end) in zip(batch, bounds, strict=True):
            if future.done():
                continue
            mine = results[start:end]
            failed = next((r for r in mine if isinstance(r, Exception)), None)
            if failed is None and tag is not None:
                failed = shared_error
            if failed is not None:
                future.set_exception(failed)
            else:
                future.set_result(mine)
