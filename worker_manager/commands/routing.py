"""Several managers on one Redis: who is alive, and getting a command to the host that can do it.

Commands are spread over the managers by the shared consumer group, so a ``delete`` (or a
``suspend``, or a ``resume``) may reach a manager whose Docker Engine does not hold the worker's
container or volumes. Such a command is forwarded to the owning manager's own stream
(``<prefix>:commands:<manager_id>``, which only that manager reads) and its reply is relayed as
the answer. When the owner is gone (its presence key expired), a delete ends the record in Redis
alone and the owner's reconciler removes the container when it comes back (a suspend or resume
is refused: the volumes are on that host). ``status`` and ``list`` are answered from Redis by any
manager; a ``create`` is run by whichever manager takes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid

from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker_manager.client.requests import CommandClient, ReplyTimeout
from worker_manager.contract.commands import (
    DeleteCommand,
    ForkCommand,
    ResumeCommand,
    SnapshotCommand,
    SuspendCommand,
)
from worker_manager.contract.reply import Reply
from worker_manager.core.logs import get_logger
from worker_manager.settings import Settings

log = get_logger(__name__)


class ForwardTimeout(RuntimeError):
    """The owning manager did not answer in time: the delete stays pending and is retried."""


class Router:
    def __init__(self, settings: Settings, redis: Redis) -> None:
        self._settings = settings
        self._redis = redis
        self._keys = settings.keys
        self._client = CommandClient(redis, settings.keys)

    async def is_alive(self, manager_id: str) -> bool:
        return bool(await self._redis.exists(self._keys.manager(manager_id)))

    async def forward(
        self,
        cmd: DeleteCommand | SuspendCommand | ResumeCommand | ForkCommand | SnapshotCommand,
        owner: str,
        extra: dict[str, str] | None = None,
    ) -> Reply | None:
        """The owning manager's answer to ``cmd``; None when that manager is gone (before or
        while we waited), so the caller ends the worker in Redis alone."""
        if not await self.is_alive(owner):
            return None
        # The same request id on every redelivery: the owner replays its answer, never
        # deleting twice. Hashed, so a 128-character caller id still fits.
        digest = hashlib.sha256(cmd.request_id.encode()).hexdigest()[:40]
        request_id = f"fwd.{self._settings.manager_id[:60]}.{digest}"
        reply_to = f"{self._keys.replies}:forward:{uuid.uuid4().hex}"
        await self._redis.xadd(
            self._keys.manager_commands(owner),
            {
                "command": cmd.command,
                "worker_id": cmd.worker_id,
                "request_id": request_id,
                "reply_to": reply_to,
                **(extra or {}),
            },
        )
        log.info(
            "command forwarded to the owning manager",
            command=cmd.command,
            worker_id=cmd.worker_id,
            owner=owner,
        )
        try:
            answer = await self._client.wait_reply(
                reply_to, request_id, timeout=self._settings.forward_timeout_seconds
            )
        except ReplyTimeout as exc:
            if not await self.is_alive(owner):
                return None
            raise ForwardTimeout(
                f"manager {owner} did not answer a forwarded {cmd.command} of {cmd.worker_id}"
            ) from exc
        finally:
            with contextlib.suppress(RedisError):
                await self._redis.delete(reply_to)
        return answer.model_copy(update={"request_id": cmd.request_id, "command": cmd.command})
