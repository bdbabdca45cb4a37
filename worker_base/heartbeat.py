"""The heartbeat key: proof of life for the manager, and the worker's last activity time.

The manager never reads the data plane; it learns everything from this one key: the first SET
turns the worker RUNNING, its expiry means the wrapper is gone, and its value (the time of the
last activity) drives idle eviction. Activity is an input received or a run in progress, so a
busy worker refreshes the time on every beat and never looks idle, however long a run takes.

The value is the activity time, optionally followed by space-separated ``name=value`` facts the
manager reads without touching the data plane: ``2026-11-25T10:00:00.123Z cost=0.42`` (the
worker's total spend), ``budget=exceeded`` once its ``max_cost_usd`` is spent, and ``ws=<digest>``
of the workspace summary last published in ``worker:<id>:workspace`` (the manager fetches that
only when the digest changes).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from redis.asyncio import Redis

from worker_base.clock import iso_from_unix
from worker_base.ledger import format_usd
from worker_base.redis_client import REDIS_ERRORS, Backoff

log = logging.getLogger("worker_base")


class Heartbeat:
    def __init__(
        self,
        redis: Redis,
        key: str,
        *,
        interval: float,
        ttl: int,
        facts: Callable[[], str] | None = None,
    ) -> None:
        self._redis = redis
        self._facts = facts
        self._key = key
        self._interval = interval
        self._ttl = ttl
        self.last_activity = time.time()
        self.busy = False

    def touch(self) -> None:
        self.last_activity = time.time()

    async def beat(self) -> None:
        if self.busy:
            self.touch()
        # Bounded: a beat stuck on a dead socket must not outlive the key's TTL unnoticed.
        value = iso_from_unix(self.last_activity)
        if self._facts is not None and (facts := self._facts()):
            value = f"{value} {facts}"
        async with asyncio.timeout(max(self._interval, 1.0)):
            await self._redis.set(self._key, value, ex=self._ttl)

    async def run(self) -> None:
        """Beat every ``interval`` seconds until cancelled; Redis outages are waited out."""
        backoff = Backoff("writing the heartbeat", cap=self._interval)
        while True:
            try:
                await self.beat()
            except REDIS_ERRORS as exc:
                # A refusal (NOPERM) is a deployment bug; it is logged and retried like an outage.
                backoff.failed(exc)
            else:
                backoff.succeeded()
            await asyncio.sleep(self._interval)


#: A heartbeat longer than this is not one (the wrapper writes well under 100 characters).
MAX_HEARTBEAT_CHARS = 256
#: The most a heartbeat may claim a worker spent: beyond it the value is not believed.
MAX_COST_USD = 1e9
BUDGET_EXCEEDED = "budget=exceeded"
_HEX = re.compile(r"[0-9a-f]{1,16}")


class HeartbeatInvalid(ValueError):
    """The heartbeat's value is not one the wrapper writes; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Beat:
    """A heartbeat as the manager reads it: everything checked and bounded."""

    #: The last activity, clamped to ``now``: a clock ahead (or a lie) cannot keep a worker busy.
    activity: float
    #: The worker's total spend as a plain decimal string, when reported.
    cost_usd: str | None = None
    budget_exceeded: bool = False
    #: The digest of the workspace summary the wrapper last published (``ws=``), when any.
    workspace: str | None = None


def parse_heartbeat(raw: object, now: float) -> Beat:
    """Read a heartbeat value (written by :meth:`Heartbeat.beat`); raise HeartbeatInvalid.

    The manager runs this on what a worker wrote to its own key, i.e. untrusted input: it never
    raises anything else, and nothing it returns is larger than a few dozen characters.
    """
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError:
            raise HeartbeatInvalid("it is not ASCII text") from None
    if not isinstance(raw, str):
        raise HeartbeatInvalid(f"it is a {type(raw).__name__}, not text")
    if len(raw) > MAX_HEARTBEAT_CHARS:
        raise HeartbeatInvalid(f"it is {len(raw)} characters long")
    words = raw.split()
    if not words:
        raise HeartbeatInvalid("it is empty")
    try:
        moment = datetime.fromisoformat(words[0].replace("Z", "+00:00"))
    except ValueError:
        raise HeartbeatInvalid(f"{words[0][:40]!r} is not a time") from None
    if moment.tzinfo is None:
        raise HeartbeatInvalid("its time has no time zone")
    cost: str | None = None
    exceeded = False
    workspace: str | None = None
    for word in words[1:]:
        name, _, value = word.partition("=")
        if name == "cost":
            try:
                amount = float(value)
            except ValueError:
                raise HeartbeatInvalid(f"cost {value[:20]!r} is not a number") from None
            if not 0 <= amount <= MAX_COST_USD:  # also NaN
                raise HeartbeatInvalid(f"cost {value[:20]!r} is out of range")
            cost = format_usd(amount)
        elif word == BUDGET_EXCEEDED:
            exceeded = True
        elif name == "ws" and _HEX.fullmatch(value):
            workspace = value
        # Unknown facts are ignored: a newer wrapper may say more than this manager reads.
    return Beat(min(moment.timestamp(), now), cost, exceeded, workspace)
