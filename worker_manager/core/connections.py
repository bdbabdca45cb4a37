"""Redis clients with the timeouts the consumer design depends on.

Blocking ``XREADGROUP`` calls get a client of their own whose socket timeout is well above the
``BLOCK`` time: redis-py treats a socket timeout as a failed command and may re-send it, which for
a blocked read would lose or duplicate deliveries.

``decode=False`` gives a client that returns bytes: for everything a producer or a worker wrote
(command fields, heartbeats), which must be judged as bytes before they are trusted as text. A
decoding client would raise on one invalid byte, for the whole reply it came in.
"""

from __future__ import annotations

from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker_base.redis_urls import client_for


class RedisTarget(Protocol):
    """What a connection needs to know (``Settings`` has it): where, who, and how long."""

    redis_url: str
    manager_id: str
    socket_timeout: float
    block_ms: int


def connect(
    settings: RedisTarget, *, blocking: bool = False, name: str = "", decode: bool = True
) -> Redis:
    """A client for ``settings.redis_url``; ``blocking`` for the consumer's own read loop."""
    timeout = settings.socket_timeout
    if blocking:
        timeout = max(timeout, settings.block_ms / 1000 * 3 + 5)
    client: Redis = client_for(
        settings.redis_url,
        decode_responses=decode,
        socket_timeout=timeout,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 0)
        if blocking
        else Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=3),
        retry_on_error=[] if blocking else [RedisConnectionError, RedisTimeoutError],
        client_name=f"wm:{settings.manager_id}:{name}" if name else None,
        max_connections=256,
    )
    return client
