"""The Python client for orchestrators: ``from worker_manager import Client``.

It speaks only the wire contract (SPEC §1–§4), so it works against any manager sharing the Redis:

    async with Client.from_url("redis://localhost:6379/0") as client:
        worker = await client.create(agent_type="CUSTOM", agent_command=["cat"])
        await worker.wait_running()
        result = await worker.run("hello")
        print(result.exit_code, result.text)
        await worker.delete()

Errors are typed: a reply with ``ok=false`` raises the :class:`WorkerManagerError` subclass of its
``error`` code (with ``.code``, ``.message`` and ``.retry_after``); a worker that ends while you
wait for it raises :class:`WorkerEnded` with its status and reason. Streams are read with resume
points: :meth:`Worker.events` and :meth:`Client.lifecycle` pick up after the last entry they
yielded when the connection to Redis drops and comes back.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import json
from collections.abc import AsyncGenerator, Sequence
from types import TracebackType
from typing import Any

from redis.asyncio import Redis

from worker_base.events import EventType
from worker_base.redis_urls import client_for
from worker_manager.client.errors import (
    BuildFailedError,
    CapacityExceededError,
    ConflictError,
    InternalError,
    InvalidCommandError,
    NotFoundError,
    QuotaExceededError,
    WorkerEnded,
    WorkerManagerError,
    WorkspaceRequestError,
    raise_for,
)
from worker_manager.client.models import (
    Diff,
    Event,
    FileEntry,
    LifecycleEvent,
    RunResult,
    WorkerInfo,
    ended,
    event,
)
from worker_manager.client.requests import CommandClient, ReplyTimeout
from worker_manager.client.streams import read_stream as _read
from worker_manager.client.teams import Team
from worker_manager.contract.reply import Reply
from worker_manager.core.keys import Keys

__all__ = [
    "BuildFailedError",
    "CapacityExceededError",
    "Client",
    "ConflictError",
    "Diff",
    "Event",
    "FileEntry",
    "InternalError",
    "InvalidCommandError",
    "LifecycleEvent",
    "NotFoundError",
    "QuotaExceededError",
    "ReplyTimeout",
    "RunResult",
    "Team",
    "Worker",
    "WorkerEnded",
    "WorkerInfo",
    "WorkerManagerError",
    "WorkspaceRequestError",
]


# --- the client --------------------------------------------------------------------------------
class Client:
    """An orchestrator's connection to the fleet; use as ``async with``."""

    def __init__(
        self,
        redis: Redis,
        *,
        key_prefix: str = "worker",
        tenant: str | None = None,
        producer: str | None = None,
        timeout: float = 30.0,
        owns_redis: bool = False,
    ) -> None:
        """``tenant``: the tenant whose namespace the commands go to (SPEC §11)."""
        self.redis = redis
        fleet = Keys(key_prefix)
        self.keys = fleet.for_tenant(tenant) if tenant else fleet
        self.timeout = timeout
        self._commands = CommandClient(redis, self.keys, producer=producer)
        self._owns_redis = owns_redis

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str = "worker",
        tenant: str | None = None,
        producer: str | None = None,
        timeout: float = 30.0,
    ) -> Client:
        """``producer``: send as that registered producer (see docs/trust-boundaries.md)."""
        redis = client_for(url, decode_responses=True, health_check_interval=30)
        return cls(
            redis,
            key_prefix=key_prefix,
            tenant=tenant,
            producer=producer,
            timeout=timeout,
            owns_redis=True,
        )

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_redis:
            await self.redis.aclose()

    async def request(self, command: str, **fields: Any) -> Reply:
        """One command, its reply checked: a typed error for ``ok=false``."""
        reply = await self._commands.request(command, timeout=self.timeout, **fields)
        return raise_for(reply)

    async def create(
        self,
        *,
        egress: list[str] | None = None,
        environment: str | dict[str, Any] | None = None,
        **fields: Any,
    ) -> Worker:
        """A new worker (the create fields of SPEC §1 as keyword arguments: lists and dicts
        are sent as JSON). Answered as soon as it is accepted: ``await worker.wait_running()``.

        ``egress``: the destinations it may reach (``["api.github.com:443", "*.pypi.org"]``);
        None sends none, so the deployment's default applies; ``[]`` grants nothing.
        ``environment``: its toolchain (SPEC §9), the name of a catalogue entry (``"node20"``)
        or a spec (``{"apt": ["jq"], "pip": ["pytest==8.3.3"]}``). ``from_snapshot=<name>``
        starts it from a snapshot (SPEC §10): its workspace and agent session."""
        if egress is not None:
            fields["egress"] = list(egress)
        if environment is not None:
            fields["environment"] = environment
        reply = await self.request("create", **fields)
        assert reply.worker_id is not None
        return Worker(self, reply.worker_id)

    async def snapshots(self) -> list[dict[str, Any]]:
        """Every snapshot (SPEC §10): name, worker_id, agent_type, created_at, last_used_at,
        manager_id, size_bytes."""
        reply = await self.request("list_snapshots")
        return list(reply.snapshots or [])

    async def delete_snapshot(self, name: str) -> None:
        await self.request("delete_snapshot", name=name)

    def worker(self, worker_id: str) -> Worker:
        """A handle on an existing worker (nothing is sent)."""
        return Worker(self, worker_id)

    def team(self, name: str) -> Team:
        """A handle on a team (SPEC §12): its board, its members, posts to it."""
        return Team(self, name)

    async def list(self, *, page_size: int = 500) -> list[WorkerInfo]:
        """Every worker, newest first, across all pages."""
        found: list[WorkerInfo] = []
        cursor: str | None = None
        while True:
            reply = await self.request("list", limit=str(page_size), cursor=cursor)
            found += [WorkerInfo.from_fields(w) for w in reply.workers or []]
            if not reply.next_cursor:
                return found
            cursor = reply.next_cursor

    async def lifecycle(
        self, *, after: str = "$", follow: bool = True
    ) -> AsyncGenerator[LifecycleEvent, None]:
        """Status changes of every worker; from now (``$``) by default, or after an entry id
        (``"0"`` for all that are kept). Resumes after a lost connection."""
        async for entry_id, fields in _read(self.redis, self.keys.lifecycle, after, follow):
            yield LifecycleEvent(
                entry_id,
                fields.get("worker_id", ""),
                fields.get("from", ""),
                fields.get("to", ""),
                fields.get("reason", ""),
                fields.get("timestamp", ""),
            )


class Worker:
    """One worker: its id, and what can be done with it."""

    def __init__(self, client: Client, worker_id: str) -> None:
        self.client = client
        self.id = worker_id

    def __repr__(self) -> str:
        return f"Worker({self.id!r})"

    async def status(self) -> WorkerInfo:
        reply = await self.client.request("status", worker_id=self.id)
        return WorkerInfo.from_reply(reply)

    async def evidence(self) -> dict[str, str]:
        """How the worker ended, kept ``WM_EVIDENCE_DAYS`` (empty while it lives): ``status``,
        ``reason``, ``exit_code``, ``oom``, ``ended_by`` (a delete's request id and producer, or
        the loop that judged it), ``ended_at``, ``manager_id``, ``last_output_id`` and
        ``log_tail`` (its container's last lines, secrets removed)."""
        found: dict[str, str] = await self.client.redis.hgetall(self.client.keys.evidence(self.id))
        return found

    async def wait_running(self, timeout: float = 900.0) -> WorkerInfo:
        """Until the worker is RUNNING (its image may be building: minutes, the first time).

        Follows the lifecycle stream rather than polling; raises :class:`WorkerEnded` if it
        ends instead, and ``TimeoutError`` after ``timeout`` seconds."""
        redis, keys = self.client.redis, self.client.keys
        async with asyncio.timeout(timeout):
            newest = await redis.xrevrange(keys.lifecycle, count=1)
            after = newest[0][0] if newest else "0"
            info = await self.status()
            while info.status == "STARTING":
                async for entry_id, fields in _read(redis, keys.lifecycle, after, True):
                    after = entry_id
                    if fields.get("worker_id") == self.id:
                        break
                info = await self.status()
            if info.status != "RUNNING":
                raise WorkerEnded(info)
            return info

    async def send(self, prompt: str) -> str:
        """Push one input; returns its id (the ``input_id`` of the events that answer it)."""
        return await self.client._commands.send_input(self.id, prompt)

    async def cancel(self) -> str:
        """Stop the input being run (or the next one, if none has started)."""
        return await self.client._commands.send_input(self.id, "", kind="cancel")

    async def events(
        self, *, after: str = "0-0", follow: bool = True
    ) -> AsyncGenerator[Event, None]:
        """The output stream from ``after`` (the beginning by default); with ``follow`` it
        waits for new events, and resumes after the last one it yielded if the connection to
        Redis drops."""
        stream = self.client.keys.output(self.id)
        async for entry_id, fields in _read(self.client.redis, stream, after, follow):
            yield event(entry_id, fields)

    async def run(self, prompt: str, *, timeout: float | None = None) -> RunResult:
        """Send ``prompt`` and collect its events until its ``done``."""
        return await self._ask("prompt", prompt, timeout=timeout)

    async def _ask(
        self, kind: str, content: str = "", *, timeout: float | None = None, **fields: str
    ) -> RunResult:
        """Push one input and collect its events until its ``done``."""
        redis, stream = self.client.redis, self.client.keys.output(self.id)
        newest = await redis.xrevrange(stream, count=1)
        after = newest[0][0] if newest else "0-0"
        input_id = await self.client._commands.send_input(self.id, content, kind, **fields)
        collected: list[Event] = []
        async with asyncio.timeout(timeout):
            async for event in self.events(after=after):
                if event.input_id != input_id:
                    if event.type == EventType.STATUS and ended(event):
                        raise WorkerEnded(await self.status())
                    continue
                collected.append(event)
                if event.type == EventType.DONE:
                    code = int(event.content) if event.content.lstrip("-").isdigit() else -1
                    return RunResult(input_id, code, collected)
        raise AssertionError("unreachable: events() follows until cancelled")

    async def _answer(
        self, kind: str, answer: str, content: str = "", *, timeout: float | None, **fields: str
    ) -> Any:
        """A workspace request's one answer (its JSON); WorkspaceRequestError when refused."""
        result = await self._ask(kind, content, timeout=timeout, **fields)
        found = [e for e in result.events if e.type == answer]
        if result.exit_code != 0 or not found:
            raise WorkspaceRequestError("; ".join(result.errors) or f"{kind} failed")
        return found[-1].json()

    # --- the workspace (SPEC §8): answered by the wrapper, never by the agent ---------------
    async def diff(self, *, timeout: float | None = 60.0) -> Diff:
        """The patch of the workspace against where its repository was checked out."""
        return Diff.from_json(await self._answer("diff", EventType.DIFF, timeout=timeout))

    async def read(self, path: str, *, timeout: float | None = 60.0) -> bytes:
        """One file of the workspace (``path`` relative to it)."""
        answer = await self._answer("read", EventType.FILE, timeout=timeout, path=path)
        return base64.b64decode(str(answer.get("content", "")))

    async def list(self, path: str = ".", *, timeout: float | None = 60.0) -> list[FileEntry]:
        """A directory of the workspace: ``name``, ``type``, ``size`` of each entry."""
        answer = await self._answer("list", EventType.LISTING, timeout=timeout, path=path)
        return [FileEntry.from_json(item) for item in answer if isinstance(item, dict)]

    async def write(self, path: str, data: bytes, *, timeout: float | None = 60.0) -> None:
        """Write one file of the workspace (its directories made); waits its turn."""
        content = base64.b64encode(data).decode("ascii")
        await self._answer("write", EventType.FILE, content, timeout=timeout, path=path)

    async def exec(
        self, argv: Sequence[str], *, timeout_seconds: float | None = None,
        timeout: float | None = None,
    ) -> RunResult:  # fmt: skip
        """Run ``argv`` in the workspace as the agent's user (not the agent): its output lines
        and its exit code (``RunResult.exit_code``)."""
        fields = {"argv": json.dumps(list(argv))}
        if timeout_seconds is not None:
            fields["timeout_seconds"] = str(timeout_seconds)
        return await self._ask("exec", timeout=timeout, **fields)

    async def delete(self) -> WorkerInfo:
        reply = await self.client.request("delete", worker_id=self.id)
        return WorkerInfo.from_reply(reply)

    async def suspend(self) -> WorkerInfo:
        """Stop its container, keeping its workspace and agent session (SUSPENDED)."""
        reply = await self.client.request("suspend", worker_id=self.id)
        return WorkerInfo.from_reply(reply)

    async def resume(self) -> WorkerInfo:
        """Start it again (STARTING, then RUNNING): same workspace, same session. Any input
        sent to a suspended worker resumes it too."""
        reply = await self.client.request("resume", worker_id=self.id)
        return WorkerInfo.from_reply(reply)

    async def fork(self, count: int = 1) -> builtins.list[Worker]:
        """``count`` copies of it (SPEC §10): its workspace as it is and its agent's session,
        each continuing from here with its own id and budget. It must be RUNNING between
        inputs (``ConflictError`` while busy) or SUSPENDED."""
        reply = await self.client.request("fork", worker_id=self.id, count=str(count))
        return [Worker(self.client, worker_id) for worker_id in reply.worker_ids or []]

    async def snapshot(self, name: str) -> dict[str, Any]:
        """Keep its state under ``name``; ``Client.create(from_snapshot=name, ...)`` starts
        workers from it."""
        reply = await self.client.request("snapshot", worker_id=self.id, name=name)
        return dict(reply.snapshot or {})
