"""The audit trail (SPEC §11): every command handled and every console action, in
``<prefix>:audit``, the operator's alone.

One entry per command a manager handled (whatever its outcome: answered, refused, replayed,
handed to another host) and per console action: when, which command, its ``request_id`` and
``worker_id``, the outcome, who sent it (the registered producer whose stream it came on, or the
console's signed-in user) and the tenant (empty without tenants). Only those fields, each cut
to a bound: never a prompt, an ``env``, a secret or a grant's password, whatever the command
carried. Bounded with ``MAXLEN ~`` (``WM_AUDIT_MAXLEN``).
"""

from __future__ import annotations

from collections.abc import Mapping

from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker_manager.contract.audit import audit_entry
from worker_manager.core.logs import get_logger
from worker_manager.settings import Settings

log = get_logger(__name__)

__all__ = ["AuditLog", "audit_entry"]


class AuditLog:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._key = settings.keys.audit
        self._maxlen = settings.audit_maxlen

    async def record(self, entry: Mapping[str, str]) -> None:
        """Appended; an outage loses the entry (logged), never the command."""
        try:
            await self._redis.xadd(self._key, dict(entry), maxlen=self._maxlen, approximate=True)
        except RedisError as exc:
            log.warning("an audit entry was not written", error=str(exc), **dict(entry))
