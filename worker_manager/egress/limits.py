"""Bounds on what one worker may take of the shared egress service.

The service is one process for every worker of a host, and a worker's agent is assumed
hostile: without bounds, one worker holding hundreds of idle proxy connections used up the
process's file descriptors (its default soft limit is often 1024, 256 on some systems) and
another worker's requests timed out, and a stream of refused requests grew the service's log
without end. So:

* **connections** — at most :data:`MAX_CONNECTIONS_PER_WORKER` proxy connections open at once
  per worker (:class:`ConnectionLimit`); the next one is answered ``429`` and closed. A browser
  through a proxy opens at most 32, package managers a few dozen.
* **open files** — the service raises its soft limit to the hard one when it starts
  (:func:`raise_open_files_limit`): the per-worker bound, not an accident of the host's
  defaults, decides how many connections a worker gets.
* **the denial log** — each refusal is still reported on the worker's own output (a capped
  stream), but the service's log takes at most a burst of refusals per worker and then one a
  second, each logged line counting the ones left out (:class:`DenialLog`).

Plain objects over data and a clock, tested without a proxy.
"""

from __future__ import annotations

import resource
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

#: Proxy connections one worker may hold open at once.
MAX_CONNECTIONS_PER_WORKER = 128
#: The soft limit asked for when the hard one is unlimited (Linux refuses an infinite one).
UNLIMITED_FILES = 1 << 20


class ConnectionLimit:
    """Open connections per worker, at most ``per_worker`` each."""

    def __init__(self, per_worker: int = MAX_CONNECTIONS_PER_WORKER) -> None:
        if per_worker < 1:
            raise ValueError("a worker must be allowed at least one connection")
        self.per_worker = per_worker
        self._open: dict[str, int] = {}

    def acquire(self, worker_id: str) -> bool:
        """Count one more connection of ``worker_id``; False (nothing counted) past its bound."""
        held = self._open.get(worker_id, 0)
        if held >= self.per_worker:
            return False
        self._open[worker_id] = held + 1
        return True

    def release(self, worker_id: str) -> None:
        held = self._open.get(worker_id, 0) - 1
        if held > 0:
            self._open[worker_id] = held
        else:
            self._open.pop(worker_id, None)

    def open(self, worker_id: str) -> int:
        return self._open.get(worker_id, 0)


def raise_open_files_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit; returns the soft limit
    now in force (unchanged when the system refuses)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = UNLIMITED_FILES if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            return soft
        return wanted
    return soft


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float
    left_out: int = 0


class DenialLog:
    """Whether the service logs one more refusal of a worker: a token bucket per worker
    (``burst`` at once, then ``per_second``), remembering at most ``max_workers`` workers (the
    longest quiet forgotten first, which only gives them a fresh burst)."""

    def __init__(
        self,
        burst: int = 20,
        per_second: float = 1.0,
        *,
        max_workers: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.per_second = per_second
        self.max_workers = max_workers
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def admit(self, worker_id: str) -> int | None:
        """None: leave this refusal out of the log. Otherwise log it, saying how many of the
        worker's refusals were left out since its last logged one (the number returned)."""
        now = self._clock()
        bucket = self._buckets.pop(worker_id, None)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.per_second)
        bucket.at = now
        self._buckets[worker_id] = bucket
        while len(self._buckets) > self.max_workers:
            self._buckets.popitem(last=False)
        if bucket.tokens < 1:
            bucket.left_out += 1
            return None
        bucket.tokens -= 1
        left_out, bucket.left_out = bucket.left_out, 0
        return left_out


class ByteLimit:
    """Bytes held per worker at once (request bodies the gateway is reading or sending), at
    most ``per_worker`` each: a worker's many large bodies at once cannot fill the service's
    memory (hole g through the gateway)."""

    def __init__(self, per_worker: int) -> None:
        if per_worker < 1:
            raise ValueError("a worker must be allowed at least one byte")
        self.per_worker = per_worker
        self._held: dict[str, int] = {}

    def take(self, worker_id: str, size: int) -> bool:
        """Count ``size`` more bytes of ``worker_id``; False (nothing counted) past its bound."""
        held = self._held.get(worker_id, 0) + size
        if held > self.per_worker:
            return False
        self._held[worker_id] = held
        return True

    def give_back(self, worker_id: str, size: int) -> None:
        held = self._held.get(worker_id, 0) - size
        if held > 0:
            self._held[worker_id] = held
        else:
            self._held.pop(worker_id, None)

    def held(self, worker_id: str) -> int:
        return self._held.get(worker_id, 0)
