"""Reading what workers wrote to their heartbeat keys, each worker judged on its own.

A worker's ACL user may ``SET`` its heartbeat key, so whatever is there is untrusted bytes: not
UTF-8, a stream instead of a string, megabytes, no expiry, a time in the future. The watcher and
the evictor both read heartbeats through :func:`observe`, which never fails as a whole because of
one worker: the read is one pipeline with ``raise_on_error=False`` on a client that does not
decode, at most ``MAX_HEARTBEAT_CHARS + 1`` bytes are fetched (``GETRANGE``), and every problem
becomes that worker's :attr:`Observed.problem` (the watcher fails it with ``heartbeat_invalid``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from worker_base.heartbeat import MAX_HEARTBEAT_CHARS, Beat, HeartbeatInvalid, parse_heartbeat
from worker_manager.contract.kinds import WorkerStatus
from worker_manager.contract.record import WorkerRecord
from worker_manager.core.keys import Keys

#: The record fields the watcher and the evictor judge a worker by.
JUDGED_FIELDS = (
    "status",
    "created_at",
    "started_at",
    "last_activity_at",
    "cost_usd",
    "idle_timeout_seconds",
    # Whether the workspace summary in the record is the one the heartbeat announces, and the
    # repository and team its conflicts are counted within (``workers.state.summaries``).
    "workspace_digest",
    "repository_url",
    "team",
)


@dataclass(frozen=True, slots=True)
class Observed:
    worker_id: str
    #: The record, with the fields of :data:`JUDGED_FIELDS` (None: no record).
    record: WorkerRecord | None
    #: The heartbeat, when there is a valid one.
    beat: Beat | None = None
    #: Why the heartbeat is not one the wrapper would write (None: valid or absent).
    problem: str | None = None
    #: What the LLM gateway metered (``<prefix>:<id>:usage``, which no worker can write): the
    #: spend, authoritative over what the agent reports, and whether the budget is spent.
    metered_cost_usd: str | None = None
    metered_budget_exceeded: bool = False

    @property
    def status(self) -> WorkerStatus | None:
        return self.record.status if self.record is not None else None


def judge(value: object, ttl_ms: object, now: float) -> tuple[Beat | None, str | None]:
    """One worker's heartbeat from its ``GETRANGE`` and ``PTTL`` replies (either may be an
    error object): ``(beat, None)``, ``(None, None)`` when there is none, ``(None, why)``."""
    if isinstance(ttl_ms, int) and ttl_ms == -2:
        return None, None  # no key (expired, or never written)
    if isinstance(value, BaseException):
        return None, "the heartbeat key is not a string"
    if isinstance(ttl_ms, int) and ttl_ms == -1:
        return None, "the heartbeat key has no expiry"
    if isinstance(value, bytes | str) and len(value) > MAX_HEARTBEAT_CHARS:
        return None, f"the heartbeat is longer than {MAX_HEARTBEAT_CHARS} characters"
    try:
        return parse_heartbeat(value, now), None
    except HeartbeatInvalid as exc:
        return None, f"the heartbeat is invalid: {exc}"


async def observe(raw: Redis, keys: Keys, ids: Sequence[str], now: float) -> list[Observed]:
    """Records and heartbeats of ``ids`` in one round trip; ``raw`` must not decode replies."""
    if not ids:
        return []
    async with raw.pipeline(transaction=False) as pipe:
        for worker_id in ids:
            pipe.hmget(keys.worker(worker_id), *JUDGED_FIELDS)
            pipe.getrange(keys.heartbeat(worker_id), 0, MAX_HEARTBEAT_CHARS)
            pipe.pttl(keys.heartbeat(worker_id))
            pipe.hmget(keys.usage(worker_id), "cost_usd", "budget_exceeded")
        results = await pipe.execute(raise_on_error=False)
    observed: list[Observed] = []
    for i, worker_id in enumerate(ids):
        fields, value, ttl_ms, usage = results[4 * i : 4 * i + 4]
        values: dict[str, str] = {}
        if isinstance(fields, list):
            for name, item in zip(JUDGED_FIELDS, fields, strict=True):
                if isinstance(item, bytes) and item:
                    values[name] = item.decode("utf-8", "replace")
        beat, problem = judge(value, ttl_ms, now)
        record = WorkerRecord.from_hash(worker_id, values)
        cost, exceeded = metered(usage)
        observed.append(Observed(worker_id, record, beat, problem, cost, exceeded))
    return observed


def metered(usage: object) -> tuple[str | None, bool]:
    """The gateway's ``cost_usd`` (a bounded decimal string) and budget flag, if any."""
    if not isinstance(usage, list) or len(usage) != 2:
        return None, False
    cost, exceeded = usage
    text = cost.decode("ascii", "replace") if isinstance(cost, bytes) else None
    try:
        value = float(text) if text and len(text) <= 32 else None
    except ValueError:
        value = None
    shown = None if value is None or value < 0 else f"{value:.6f}".rstrip("0").rstrip(".")
    return shown, exceeded in (b"1", "1")
