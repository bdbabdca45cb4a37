"""From a stream entry to exactly one reply: validation, idempotency, dead letters, acks.

The rules (SPEC §1): a command that cannot be validated is answered with ``invalid_command``
(when its ``reply_to`` is usable) and copied to ``<prefix>:dead``; a command whose ``request_id``
was answered before gets that reply again; a command that keeps failing is dead-lettered after
``max_deliveries`` deliveries and answered with ``internal``. An entry is acked only once its
reply is written, so a crash before that means redelivery, never loss.
"""

from __future__ import annotations

import json
import time

from redis.asyncio import Redis

from worker_manager.commands.audit import AuditLog, audit_entry
from worker_manager.commands.consumer import Delivery
from worker_manager.commands.handlers import Handlers, not_found
from worker_manager.commands.replies import DeadLetter, ReplyBook
from worker_manager.contract.commands import (
    REPLY_TO_RE,
    AnyCommand,
    CreateCommand,
    DeleteCommand,
    DeleteSnapshotCommand,
    ForkCommand,
    GrantCommand,
    ListCommand,
    ListSnapshotsCommand,
    ResumeCommand,
    SnapshotCommand,
    StatusCommand,
    SuspendCommand,
    TeamPostCommand,
    parse_command,
    reply_of_request_id,
)
from worker_manager.contract.reply import Reply
from worker_manager.core.durability import replicated
from worker_manager.core.errors import CommandError, ErrorCode, InvalidCommand
from worker_manager.core.logs import get_logger
from worker_manager.environments import catalogue
from worker_manager.services.resolve import resolve as resolve_services
from worker_manager.settings import Settings
from worker_manager.typing import CommandObserver

log = get_logger(__name__)


def _noop(command: str, result: str, seconds: float) -> None:
    return None


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        book: ReplyBook,
        handlers: Handlers,
        observe: CommandObserver = _noop,
        *,
        producer: str | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self._settings = settings
        #: Every command handled, whatever its outcome (SPEC §11).
        self._audit = audit
        self._redis = redis
        self._book = book
        self._handlers = handlers
        self._observe = observe
        #: The registered producer whose own stream this dispatcher serves (None: the shared
        #: stream, or a manager's own).
        self._producer = producer
        self._replies = (
            settings.keys.producer_replies(producer) if producer else settings.keys.replies
        )

    async def __call__(self, delivery: Delivery) -> None:
        started = time.perf_counter()
        result = await self._dispatch(delivery)
        if result:
            self._observe(delivery.fields.get("command", ""), result, time.perf_counter() - started)
            if self._audit is not None:
                await self._audit.record(
                    audit_entry(
                        delivery.fields,
                        result,
                        sender=self._producer or "",
                        tenant=self._settings.tenant or "",
                    )
                )

    def _usable_reply_to(self, delivery: Delivery) -> str | None:
        fields = delivery.fields
        if "reply_to" in delivery.undecodable:
            return None
        value = fields.get("reply_to")
        if value is None or value == "":
            return self._replies
        if REPLY_TO_RE.fullmatch(value) and value.startswith(self._replies):
            return value
        return None

    async def _refuse(self, delivery: Delivery, code: ErrorCode, message: str, reason: str) -> None:
        """Answer (when possible), dead-letter and ack a command that will never be handled."""
        fields = delivery.fields
        request_id = fields.get("request_id") if "request_id" not in delivery.undecodable else None
        reply = Reply(
            request_id=reply_of_request_id({"request_id": request_id or ""}, delivery.entry_id),
            command="" if "command" in delivery.undecodable else fields.get("command", "")[:64],
            ok=False,
            error=code.value,
            message=message,
        )
        await self._book.finish(
            delivery.entry_id,
            reply,
            self._usable_reply_to(delivery),
            dead=DeadLetter(fields, reason, delivery.deliveries),
        )
        log.info("command refused", entry_id=delivery.entry_id, error=code.value, reason=reason)

    async def _dispatch(self, delivery: Delivery) -> str:
        if delivery.deliveries > self._settings.max_deliveries:
            await self._refuse(
                delivery,
                ErrorCode.INTERNAL,
                f"the command failed {delivery.deliveries - 1} times and was set aside in "
                f"{self._settings.keys.dead}; check the manager's logs",
                f"delivered {delivery.deliveries} times without being handled",
            )
            return "dead"
        if delivery.undecodable:
            names = ", ".join(repr(name[:40]) for name in delivery.undecodable[:5])
            message = f"field {names} is not valid UTF-8 text"
            await self._refuse(delivery, ErrorCode.INVALID_COMMAND, message, message)
            return "invalid"
        try:
            cmd = parse_command(
                delivery.fields,
                delivery.entry_id,
                self._settings,
                replies=self._settings.keys.replies,
            )
        except InvalidCommand as exc:
            await self._refuse(delivery, ErrorCode.INVALID_COMMAND, exc.message, exc.message)
            return "invalid"

        problem = self._identity_problem(cmd)
        if problem is not None:
            await self._refuse(delivery, ErrorCode.INVALID_COMMAND, problem, problem)
            return "invalid"
        if isinstance(cmd, CreateCommand):
            # Against this deployment's catalogue: a refusal is an invalid command (answered
            # and dead-lettered), the resolved spec is what the create is saved with.
            try:
                environment = catalogue.resolve(cmd.environment, self._settings)
            except InvalidCommand as exc:
                await self._refuse(delivery, ErrorCode.INVALID_COMMAND, exc.message, exc.message)
                return "invalid"
            try:
                services = resolve_services(cmd.services, self._settings, cmd.modules)
            except InvalidCommand as exc:
                await self._refuse(delivery, ErrorCode.INVALID_COMMAND, exc.message, exc.message)
                return "invalid"
            cmd = cmd.model_copy(update={"environment": environment, "services": services})
        if self._producer is not None and isinstance(cmd, CreateCommand):
            # The owner is who sent it: its stream says so, whatever the field said.
            owned = {**cmd.metadata, "owner": self._producer}
            cmd = cmd.model_copy(update={"metadata": owned})

        if isinstance(cmd, StatusCommand | ListCommand):
            return await self._read_only(delivery, cmd)
        if isinstance(cmd, CreateCommand) and cmd.from_snapshot is not None:
            owner = await self._snapshot_host(cmd.from_snapshot)
            if owner is not None:
                return await self._hand_to(owner, delivery, cmd)

        claim = await self._book.claim(cmd.request_id, delivery.entry_id)
        if claim.reply is not None:
            await self._book.finish(delivery.entry_id, claim.reply, cmd.reply_to)
            return "replayed"
        if not claim.owned:
            return ""  # a duplicate still in flight elsewhere: stays pending, retried later

        try:
            reply = await self._handle(cmd)
            result = "ok"
        except CommandError as exc:
            reply = self._error_reply(cmd, exc)
            result = exc.code.value
        except Exception:
            log.exception("command failed; it will be retried", entry_id=delivery.entry_id)
            await self._book.release(cmd.request_id, delivery.entry_id)
            return "retry"

        await self._replicated(cmd)
        await self._book.finish(
            delivery.entry_id,
            reply,
            cmd.reply_to,
            remember_seconds=self._settings.idempotency_ttl_seconds,
        )
        return result

    async def _snapshot_host(self, name: str) -> str | None:
        """The live manager, other than this one, whose host holds the snapshot; None when it
        is this one's (or unknown, or gone: the handler then says so)."""
        keys = self._settings.keys
        owner = await self._redis.hget(keys.snapshot(name), "manager_id")
        if not owner or owner == self._settings.manager_id:
            return None
        return str(owner) if await self._redis.exists(keys.manager(str(owner))) else None

    async def _hand_to(self, owner: str, delivery: Delivery, cmd: CreateCommand) -> str:
        """A create from another host's snapshot goes to that host's manager, as sent (the
        same request id and ``reply_to``: it answers the producer itself, once)."""
        fields = dict(delivery.fields)
        if self._producer is not None:  # who sent it, said by its stream, travels with it
            fields["metadata"] = json.dumps(cmd.metadata, separators=(",", ":"))
        await self._redis.xadd(self._settings.keys.manager_commands(owner), fields)
        await self._book.finish(delivery.entry_id, None, None)
        log.info("create handed to the snapshot's host", snapshot=cmd.from_snapshot, owner=owner)
        return "forwarded"

    async def _replicated(self, cmd: AnyCommand) -> None:
        """With ``WM_REDIS_WAIT_REPLICAS``: the change is on that many replicas before its
        reply is written, so a failover cannot take back what a producer was told."""
        wanted = self._settings.redis_wait_replicas
        if not wanted:
            return
        held = await replicated(
            self._redis,
            self._settings.keys.manager_wait(self._settings.manager_id),
            wanted,
            self._settings.redis_wait_timeout_ms,
        )
        if held < wanted:
            log.warning(
                "reply sent before enough replicas held the change (WAIT timed out)",
                command=cmd.command,
                request_id=cmd.request_id,
                replicas=held,
                wanted=wanted,
            )

    async def _read_only(self, delivery: Delivery, cmd: StatusCommand | ListCommand) -> str:
        """Status and list change nothing: no in-flight claim and no stored reply (SPEC §1:
        answered afresh), so polling never fills Redis. A status is answered inside Redis by
        one script (read the record, write the reply, acknowledge the entry): one round trip
        after the entry is read, in the batch of whatever else finishes meanwhile."""
        if isinstance(cmd, StatusCommand):
            found = await self._book.answer_status(
                delivery.entry_id,
                request_id=cmd.request_id,
                worker_id=cmd.worker_id,
                reply_to=cmd.reply_to,
                missing=not_found(cmd.worker_id).message,
            )
            return "ok" if found else ErrorCode.NOT_FOUND.value
        try:
            reply = await self._handlers.list_workers(cmd)
            result = "ok"
        except CommandError as exc:
            reply = self._error_reply(cmd, exc)
            result = exc.code.value
        await self._book.finish(delivery.entry_id, reply, cmd.reply_to)
        return result

    def _identity_problem(self, cmd: AnyCommand) -> str | None:
        """With registered producers: a reply goes only under the sender's own reply prefix,
        and no one claims a registered producer's name as owner from the shared stream."""
        if self._producer is not None:
            if not cmd.reply_to.startswith(self._replies):
                return f"field 'reply_to' must start with {self._replies!r} on this stream"
            return None
        owner = cmd.metadata.get("owner") if isinstance(cmd, CreateCommand) else None
        if owner is not None and owner in self._settings.producers:
            return (
                f"field 'metadata': owner {owner!r} is a registered producer; its workers are "
                "created on its own command stream"
            )
        return None

    @staticmethod
    def _error_reply(cmd: AnyCommand, exc: CommandError) -> Reply:
        return Reply(
            request_id=cmd.request_id,
            command=cmd.command,
            ok=False,
            worker_id=getattr(cmd, "worker_id", None),
            error=exc.code.value,
            message=exc.message,
            retry_after=exc.retry_after,
        )

    async def _handle(
        self,
        cmd: CreateCommand
        | DeleteCommand
        | SuspendCommand
        | ResumeCommand
        | ForkCommand
        | SnapshotCommand
        | ListSnapshotsCommand
        | DeleteSnapshotCommand
        | GrantCommand
        | TeamPostCommand,
    ) -> Reply:
        if isinstance(cmd, CreateCommand):
            return await self._handlers.create(cmd)
        if isinstance(cmd, ListSnapshotsCommand):
            return await self._handlers.forks.list_snapshots(cmd)
        if isinstance(cmd, DeleteSnapshotCommand):
            return await self._handlers.forks.delete_snapshot(cmd)
        if isinstance(cmd, TeamPostCommand):
            return await self._handlers.team_post(cmd)
        if self._producer is not None:
            record = self._settings.keys.worker(cmd.worker_id)
            status, owner = await self._redis.hmget(record, "status", "owner")
            if status is not None and owner != self._producer:
                raise CommandError(
                    ErrorCode.CONFLICT,
                    f"worker {cmd.worker_id} was not created by producer {self._producer!r}; "
                    f"a producer {cmd.command}s only the workers it created",
                )
        if isinstance(cmd, SuspendCommand):
            return await self._handlers.suspend(cmd)
        if isinstance(cmd, ResumeCommand):
            return await self._handlers.resume(cmd)
        if isinstance(cmd, GrantCommand):
            return await self._handlers.grant(cmd)
        if isinstance(cmd, ForkCommand):
            return await self._handlers.forks.fork(cmd)
        if isinstance(cmd, SnapshotCommand):
            return await self._handlers.forks.snapshot(cmd)
        return await self._handlers.delete(cmd, producer=self._producer)
