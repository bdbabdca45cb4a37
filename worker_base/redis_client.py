"""The one Redis client the wrapper uses, and what counts as "Redis is away, try again".

The worker's ACL user may only run a handful of commands (SPEC §4), so the client is configured
to send nothing on its own beyond the connection handshake: no health-check PINGs, no client
name, RESP2 (no HELLO). Retries are ours, in each loop, with a capped backoff: a Redis restart
must pause the wrapper, not kill it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker_base.config import WrapperConfig
from worker_base.redis_urls import client_for

log = logging.getLogger("worker_base")

#: Failures that go away when Redis comes back. Anything else is a bug or a refusal (NOPERM).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    TimeoutError,
    OSError,
)
#: Every failure a loop waits out and retries: outages, and refusals worth a log line.
REDIS_ERRORS: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, RedisError)


def connect(config: WrapperConfig) -> Redis:
    """The wrapper's client; a ``redis+sentinel://`` URL (uncontained workers only: contained
    ones reach Redis through the egress service's relay) follows the primary through a
    failover."""
    return client_for(
        config.redis_url,
        decode_responses=True,
        # Inputs are text; a stray invalid byte must not make the reader crash in a loop.
        encoding_errors="replace",
        socket_timeout=config.socket_timeout,
        socket_connect_timeout=min(5.0, config.socket_timeout),
        # One immediate retry replaces a pooled connection that died with a restarted Redis;
        # longer outages are handled by the callers' backoff loops.
        retry=Retry(NoBackoff(), 1),
        health_check_interval=0,
        # RESP2: AUTH, never HELLO (redis-py's default is RESP3; the relay refuses HELLO).
        protocol=2,
    )


class Backoff:
    """Capped exponential delays, and a log line per outage rather than per attempt."""

    def __init__(self, what: str, *, initial: float = 0.1, cap: float = 5.0) -> None:
        self._what = what
        self._initial = initial
        self._cap = cap
        self._delay = initial
        self._failing_since: float | None = None

    def failed(self, exc: BaseException) -> float:
        """Record one failure; returns how long to wait before the next attempt."""
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
            log.warning("%s failed, retrying: %s", self._what, _describe(exc))
        elif self._delay >= self._cap:
            log.warning(
                "%s still failing after %.0f s: %s",
                self._what,
                now - self._failing_since,
                _describe(exc),
            )
        delay = self._delay
        self._delay = min(self._cap, self._delay * 2)
        return delay

    def succeeded(self) -> None:
        if self._failing_since is not None:
            log.info("%s works again", self._what)
        self._failing_since = None
        self._delay = self._initial

    async def wait(self, exc: BaseException) -> None:
        await asyncio.sleep(self.failed(exc))


def _describe(exc: BaseException) -> str:
    # redis-py messages name host and port but never the password; keep it to one line.
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
