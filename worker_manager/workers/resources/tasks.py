"""Background tasks keyed by worker id: at most one of a kind per worker in this process.

Creates (``Provisioner``) and teardowns (``Lifecycle``) each keep one :class:`WorkerTasks`, so
"is this worker being provisioned?", "cancel its create" and "how many are in flight?" have one
answer, shared by whoever holds it (the reconciler asks, the lifecycle cancels, metrics count).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any


class WorkerTasks:
    def __init__(self, kind: str) -> None:
        self._kind = kind
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, worker_id: object) -> bool:
        return worker_id in self._tasks

    def start(self, worker_id: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``work()`` in the background unless this worker already has such a task."""
        if worker_id in self._tasks:
            return
        task = asyncio.create_task(work(), name=f"{self._kind}-{worker_id}")
        self._tasks[worker_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(worker_id, None))

    async def cancel(self, worker_id: str) -> None:
        """Cancel this worker's task, if any, and wait until it has stopped. From inside that
        very task it does nothing: a create that fails its own worker goes on to clean up."""
        task = self._tasks.get(worker_id)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
