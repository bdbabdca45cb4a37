"""Several managers on one Redis: who is alive, and getting a delete to the host that can do it.

Commands are spread over the managers by the shared consumer group, so a ``delete`` may reach a
manager whose Docker Engine does not hold the worker's container. Such a delete is forwarded to
the owning manager's own stream (``<prefix>:commands:<manager_id>``, which only that manager
reads) and its reply is relayed as the answer. When the owner is gone (its presence key
expired), the record is ended in Redis alone and the owner's reconciler removes the container
when it comes back. ``status`` and ``list`` are answered from Redis by any manager; a ``create``
is run by whichever manager takes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker_manager.acl import WorkerAcl
from worker_manager.client import CommandClient, ReplyTimeout
from worker_manager.clock import iso_now
from worker_manager.config import Settings
from worker_manager.logs import get_logger
from worker_manager.models import DeleteCommand, Reply, WorkerStatus
from worker_manager.records import WorkerStore

log = get_logger(__name__)


class ForwardTimeout(RuntimeError):
    """The owning manager did not answer in time: the delete stays pending and is retried."""


class Router:
    def __init__(
        self, settings: Settings, redis: Redis, store: WorkerStore, acl: WorkerAcl
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._store = store
        self._acl = acl
        self._keys = settings.keys
        self._client = CommandClient(redis, settings.keys)

    async def is_alive(self, manager_id: str) -> bool:
        return bool(await self._redis.exists(self._keys.manager(manager_id)))

    async def delete_elsewhere(self, cmd: DeleteCommand, owner: str) -> Reply:
        if not await self.is_alive(owner):
            return await self._delete_for_dead_owner(cmd, owner)
        # The same request id on every redelivery: the owner replays its answer, never
        # deleting twice. Hashed, so a 128-character caller id still fits.
        digest = hashlib.sha256(cmd.request_id.encode()).hexdigest()[:40]
        request_id = f"fwd.{self._settings.manager_id[:60]}.{digest}"
        reply_to = f"{self._keys.replies}:forward:{uuid.uuid4().hex}"
        await self._redis.xadd(
            self._keys.manager_commands(owner),
            {
                "command": "delete",
                "worker_id": cmd.worker_id,
                "request_id": request_id,
                "reply_to": reply_to,
            },
        )
        log.info("delete forwarded to the owning manager", worker_id=cmd.worker_id, owner=owner)
        try:
            answer = await self._client.wait_reply(
                reply_to, request_id, timeout=self._settings.forward_timeout_seconds
            )
        except ReplyTimeout as exc:
            if not await self.is_alive(owner):
                return await self._delete_for_dead_owner(cmd, owner)
            raise ForwardTimeout(
                f"manager {owner} did not answer a forwarded delete of {cmd.worker_id}"
            ) from exc
        finally:
            with contextlib.suppress(RedisError):
                await self._redis.delete(reply_to)
        return answer.model_copy(update={"request_id": cmd.request_id, "command": "delete"})

    async def _delete_for_dead_owner(self, cmd: DeleteCommand, owner: str) -> Reply:
        """End the record and the worker's Redis user now (Redis is shared: any manager can);
        the container goes when its manager's reconciler runs again."""
        await self._store.transition(cmd.worker_id, WorkerStatus.STOPPED, "deleted")
        await self._acl.delete(cmd.worker_id)
        log.warning(
            "owning manager is gone: worker deleted in Redis, its container is removed when the "
            "manager returns",
            worker_id=cmd.worker_id,
            owner=owner,
        )
        record = await self._store.get(cmd.worker_id) or {}
        return Reply(
            request_id=cmd.request_id,
            command="delete",
            ok=True,
            worker_id=cmd.worker_id,
            status=record.get("status", WorkerStatus.STOPPED.value),
        )


class Presence:
    """This manager's presence key, refreshed while it runs; its expiry means the manager died."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        offer: Callable[[], Awaitable[dict[str, int]]] | None = None,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._key = settings.keys.manager(settings.manager_id)
        self._offer = offer

    async def beat(self) -> None:
        """The key (its expiry means the manager died) says when, how much room it has and how
        many warm-pool workers are ready (``placement.py``)."""
        value: dict[str, object] = {"at": iso_now()}
        if self._offer is not None:
            value.update(await self._offer())
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key, json.dumps(value), ex=self._settings.presence_ttl_seconds)
            pipe.sadd(self._settings.keys.managers, self._settings.manager_id)
            await pipe.execute()

    @property
    def interval(self) -> float:
        return self._settings.presence_ttl_seconds / 3

    async def refresh(self) -> None:
        """One round (the supervisor runs one per interval); an outage waits for the next."""
        try:
            await self.beat()
        except (RedisError, OSError) as exc:
            log.warning("presence refresh failed", error=str(exc))

    async def leave(self) -> None:
        """At a clean stop: the others need not wait for the key to expire."""
        with contextlib.suppress(RedisError, OSError):
            await self._redis.delete(self._key)
