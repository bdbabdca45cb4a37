"""Redis or the Docker daemon going away for a while: which errors mean that, and how to wait.

A restart of either is an outage to sit out, not a verdict on a worker: code that would otherwise
mark a worker FAILED retries these errors with back-off (tenacity) and leaves everything else to
its own error handling.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import requests.exceptions
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from worker_manager.core.logs import get_logger

log = get_logger(__name__)

T = TypeVar("T")

#: Errors of a dependency that is down or restarting (BusyLoading: Redis still loading its data).
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    requests.exceptions.ConnectionError,
    ConnectionError,
)


async def ride_out(fn: Callable[[], Awaitable[T]], *, what: str, max_seconds: float = 300.0) -> T:
    """Run ``fn`` again (0.1 s doubling to 5 s) while it fails with an outage error."""

    def note(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            "dependency unavailable; retrying",
            what=what,
            attempt=state.attempt_number,
            error=str(error),
        )

    retrying = AsyncRetrying(
        retry=retry_if_exception_type(OUTAGE_ERRORS),
        wait=wait_exponential(multiplier=0.1, max=5.0),
        stop=stop_after_delay(max_seconds),
        before_sleep=note,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await fn()
    raise AssertionError(f"unreachable: {what}")  # pragma: no cover
