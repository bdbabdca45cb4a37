"""The low-level client of the contract: push a command, wait for its reply; write input.

Used by the CLI, the router and the tests, and speaks only SPEC §1–§4: anything here could be
done with ``redis-cli``. Orchestrators use :mod:`worker_manager.client.api` (``Client``), built
on it.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker_manager.contract.reply import Reply
from worker_manager.core.keys import Keys


class ReplyTimeout(TimeoutError):
    pass


class CommandClient:
    def __init__(self, redis: Redis, keys: Keys, *, producer: str | None = None) -> None:
        """``producer``: send as that registered producer (``WM_PRODUCERS``), on its own
        command stream and under its own reply prefix (its Redis user may write nothing else).
        Registered producers are the default namespace's: a tenant's producer sends on its
        tenant's command stream (SPEC §11), so ``producer`` with a tenant's keys is refused."""
        if producer and keys.fleet:
            raise ValueError(
                "a registered producer (WM_PRODUCER) sends in the default namespace; a tenant's "
                "producer sends on its tenant's command stream: set WM_PRODUCER or WM_TENANT"
            )
        self._redis = redis
        self._keys = keys
        self._commands = keys.producer_commands(producer) if producer else keys.commands
        self._replies = keys.producer_replies(producer) if producer else keys.replies

    async def push(self, fields: dict[str, str]) -> str:
        entry_id: str = await self._redis.xadd(self._commands, fields)
        return entry_id

    async def request(
        self, command: str, *, timeout: float = 30.0, reply_to: str | None = None, **fields: object
    ) -> Reply:
        """Send one command and wait for its reply on a reply stream of our own. Fields are
        flattened as the contract wants them: strings as they are, lists and objects as JSON,
        None left out."""
        flat = {
            k: v if isinstance(v, str) else json.dumps(v)
            for k, v in fields.items()
            if v is not None
        }
        request_id = flat.pop("request_id", None) or f"cli-{uuid.uuid4().hex}"
        own_stream = reply_to is None
        reply_to = reply_to or f"{self._replies}:client:{uuid.uuid4().hex}"
        body = {"command": command, "request_id": request_id, "reply_to": reply_to, **flat}
        await self.push(body)
        try:
            return await self.wait_reply(reply_to, request_id, timeout=timeout)
        finally:
            # Tidying up must not replace what is propagating: a cancellation while Redis is
            # away would otherwise turn into a ConnectionError, which callers retry.
            if own_stream:
                with contextlib.suppress(RedisError, OSError):
                    await self._redis.delete(reply_to)

    async def wait_reply(
        self, reply_to: str, request_id: str, *, timeout: float = 30.0, after: str = "0-0"
    ) -> Reply:
        deadline = time.monotonic() + timeout
        last = after
        while (left := deadline - time.monotonic()) > 0:
            response = await self._redis.xread(
                {reply_to: last}, count=100, block=max(1, int(min(left, 1.0) * 1000))
            )
            for _stream, entries in response or []:
                for entry_id, fields in entries:
                    last = entry_id
                    if fields.get("request_id") == request_id:
                        return Reply.from_fields(fields)
        raise ReplyTimeout(f"no reply to {request_id} on {reply_to} within {timeout:g}s")

    async def list_all(self, *, timeout: float = 30.0, page: int = 500) -> Reply:
        """Every page of ``list`` joined into one reply (the first error reply, if any)."""
        workers: list[dict[str, object]] = []
        cursor = ""
        while True:
            extra = {"cursor": cursor} if cursor else {}
            reply = await self.request("list", timeout=timeout, limit=str(page), **extra)
            if not reply.ok:
                return reply
            workers += reply.workers or []
            if not reply.next_cursor:
                return reply.model_copy(update={"workers": workers})
            cursor = reply.next_cursor

    async def create(self, *, timeout: float = 30.0, **fields: Any) -> Reply:
        return await self.request("create", timeout=timeout, **fields)

    async def send_input(
        self, worker_id: str, content: str, kind: str = "prompt", **fields: str
    ) -> str:
        """Push one input entry (``fields``: what a workspace request carries besides)."""
        entry: dict[str, str] = {"type": kind, "content": content, **fields}
        if kind != "prompt" and not content:
            del entry["content"]
        entry_id: str = await self._redis.xadd(self._keys.input(worker_id), entry)
        return entry_id
