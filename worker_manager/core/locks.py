"""A Redis lock that its holder keeps alive, so a holder that dies frees it within one TTL.

Used where exactly one manager may do something at a time (the image collector): a short TTL
bounds how long a killed holder blocks the others, and a renewal task keeps a live holder's lock
for as long as its work takes. Release and renewal only act on the holder's own token.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from types import TracebackType

from redis.asyncio import Redis

from worker_manager.core.logs import get_logger

log = get_logger(__name__)

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class RenewedLock:
    """``async with lock:`` is not offered on purpose: a busy lock is a normal outcome."""

    def __init__(self, redis: Redis, key: str, *, ttl_seconds: float, owner: str) -> None:
        self._redis = redis
        self.key = key
        self._ttl_ms = max(int(ttl_seconds * 1000), 1000)
        self.token = f"{owner}:{secrets.token_hex(8)}"
        self._renewer: asyncio.Task[None] | None = None
        self.lost = asyncio.Event()

    async def acquire(self) -> bool:
        if not await self._redis.set(self.key, self.token, nx=True, px=self._ttl_ms):
            return False
        self._renewer = asyncio.create_task(self._renew_forever(), name=f"renew {self.key}")
        return True

    async def holder(self) -> str | None:
        value = await self._redis.get(self.key)
        return None if value is None else str(value)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._ttl_ms / 3000)
            try:
                renewed = await self._redis.eval(_RENEW, 1, self.key, self.token, self._ttl_ms)
            except Exception:  # a blip: the next attempt may still be within the TTL
                log.warning("lock renewal failed", key=self.key, exc_info=True)
                continue
            if not renewed:
                log.warning("lock lost", key=self.key)
                self.lost.set()
                return

    async def release(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        await self._redis.eval(_RELEASE, 1, self.key, self.token)

    async def __aenter__(self) -> RenewedLock:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._renewer is not None:
            await self.release()
