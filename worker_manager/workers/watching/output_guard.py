"""The output cap is the manager's to keep, not only the wrapper's (SPEC §4).

A worker's ACL user may ``XADD`` to its output stream, so a hostile (or broken) worker can write
without ``MAXLEN``, as fast as Redis takes it. Every round this guard trims each live worker's
output to ``WM_OUTPUT_MAXLEN`` (``XTRIM MAXLEN ~ … LIMIT 0``, which frees whole nodes, cheaply)
and counts what it dropped. ``LIMIT 0`` matters: an approximate trim otherwise removes at most
100 × ``stream-node-max-entries`` (10 000) entries a call, so a worker writing faster than that
kept its stream many times over the cap for as long as it went on, and the overflow verdict
below, which reads how much one round removed, never saw more than that. Without the limit one
round takes any stream back to the cap plus less than one node (entries sharing a node with the
ones kept), the slack the wrapper's own ``MAXLEN ~`` leaves too; the work is one step per freed
node, and a worker can only have made as many as Redis took from it since the last round.

A worker that writes more than ``WM_OUTPUT_OVERFLOW_FACTOR`` times its cap in one round, or whose
output holds more than ``WM_OUTPUT_MAX_BYTES`` after the trim (few entries, each huge), is FAILED
with ``reason=output_overflow``. Each worker is judged on its own: the round is one pipeline that
does not fail as a whole.
"""

from __future__ import annotations

from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker_manager.contract.reasons import Ended
from worker_manager.core.logs import get_logger
from worker_manager.settings import Settings
from worker_manager.workers.state.records import WorkerStore
from worker_manager.workers.transitions.lifecycle import Lifecycle, Outcome

log = get_logger(__name__)

Dropped = Callable[[str, int], None]

#: ``LIMIT`` of an approximate ``XTRIM``: 0 lifts Redis's default bound of entries removed per call
#: (see the module docstring). An exact ``MAXLEN =`` is never limited either, but it would cut
#: into the oldest node every round, counting as dropped the entries a well-behaved wrapper's own
#: ``MAXLEN ~`` rightly left there.
NO_LIMIT = 0


class OutputGuard:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        store: WorkerStore,
        lifecycle: Lifecycle,
        dropped: Dropped = lambda _kind, _count: None,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._store = store
        self._lifecycle = lifecycle
        self._dropped = dropped

    async def round(self) -> None:
        """Trim every live worker's output once; stop the ones that flood."""
        try:
            await self._trim_all()
        except (RedisError, OSError) as exc:
            log.warning("trimming worker output failed; retrying next round", error=str(exc))

    async def _trim_all(self) -> None:
        ids = await self._store.live_ids()
        if not ids:
            return
        s = self._settings
        async with self._redis.pipeline(transaction=False) as pipe:
            for worker_id in ids:
                key = s.keys.output(worker_id)
                pipe.xtrim(key, maxlen=s.output_maxlen, approximate=True, limit=NO_LIMIT)
                pipe.memory_usage(key, samples=5)
            results = await pipe.execute(raise_on_error=False)
        for i, worker_id in enumerate(ids):
            trimmed, size = results[2 * i], results[2 * i + 1]
            if isinstance(trimmed, int) and trimmed > 0:
                self._dropped("output", trimmed)
            reason = overflow(trimmed, size, s.output_maxlen, s)
            if reason is not None:
                log.warning("worker output overflows; stopping it", worker_id=worker_id, why=reason)
                await self._lifecycle.end(worker_id, Outcome(Ended.OUTPUT_OVERFLOW))


def overflow(trimmed: object, size: object, maxlen: int, settings: Settings) -> str | None:
    """Why a worker's output counts as a flood, from one round's ``XTRIM`` and ``MEMORY USAGE``
    replies (either may be an error object), or None."""
    if isinstance(trimmed, int) and trimmed > settings.output_overflow_factor * maxlen:
        return f"wrote {trimmed} entries past its cap of {maxlen} in one round"
    if isinstance(size, int) and size > settings.output_max_bytes:
        return f"its output holds {size} bytes, more than {settings.output_max_bytes}"
    return None
