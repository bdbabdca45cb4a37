"""From a stream entry to exactly one reply: validation, idempotency, dead letters, acks.

The rules (SPEC §1): a command that cannot be validated is answered with ``invalid_command``
(when its ``reply_to`` is usable) and copied to ``<prefix>:dead``; a command whose ``request_id``
was answered before gets that reply again; a command that keeps failing is dead-lettered after
``max_deliveries`` deliveries and answered with ``internal``. An entry is acked only once its
reply is written, so a crash before that means redelivery, never loss.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from worker_manager.config import Settings
from worker_manager.consumer import Delivery
from worker_manager.errors import CommandError, ErrorCode, InvalidCommand
from worker_manager.handlers import Handlers
from worker_manager.logs import get_logger
from worker_manager.models import (
    REPLY_TO_RE,
    CreateCommand,
    DeleteCommand,
    ListCommand,
    Reply,
    StatusCommand,
    parse_command,
    reply_of_request_id,
)
from worker_manager.replies import READ_ONLY_DEFAULT_TTL, DeadLetter, ReplyBook

log = get_logger(__name__)

Observer = Callable[[str, str, float], None]  # (command, result, seconds)


def _noop(_command: str, _result: str, _seconds: float) -> None:
    return None


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        book: ReplyBook,
        handlers: Handlers,
        observe: Observer = _noop,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._book = book
        self._handlers = handlers
        self._observe = observe

    async def __call__(self, delivery: Delivery) -> None:
        started = time.perf_counter()
        result = await self._dispatch(delivery)
        if result:
            self._observe(delivery.fields.get("command", ""), result, time.perf_counter() - started)

    def _usable_reply_to(self, fields: dict[str, str]) -> str | None:
        value = fields.get("reply_to")
        if value is None or value == "":
            return self._settings.keys.replies
        if REPLY_TO_RE.fullmatch(value) and value.startswith(self._settings.keys.replies):
            return value
        return None

    async def _refuse(self, delivery: Delivery, code: ErrorCode, message: str, reason: str) -> None:
        """Answer (when possible), dead-letter and ack a command that will never be handled."""
        fields = delivery.fields
        reply = Reply(
            request_id=reply_of_request_id(fields, delivery.entry_id),
            command=fields.get("command", "")[:64],
            ok=False,
            error=code.value,
            message=message,
        )
        await self._book.finish(
            delivery.entry_id,
            reply,
            self._usable_reply_to(fields),
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
        try:
            cmd = parse_command(delivery.fields, delivery.entry_id, self._settings)
        except InvalidCommand as exc:
            await self._refuse(delivery, ErrorCode.INVALID_COMMAND, exc.message, exc.message)
            return "invalid"

        if isinstance(cmd, StatusCommand | ListCommand):
            return await self._read_only(delivery, cmd)

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

        await self._book.finish(
            delivery.entry_id,
            reply,
            cmd.reply_to,
            remember_seconds=self._settings.idempotency_ttl_seconds,
        )
        return result

    async def _read_only(self, delivery: Delivery, cmd: StatusCommand | ListCommand) -> str:
        """Status and list change nothing, so they need no in-flight claim: a stored reply is
        replayed, otherwise they are answered from Redis; a status in one round trip (the
        stored reply and the record read together) plus the reply's MULTI.
        """
        keys = self._settings.keys
        request_key = keys.request(cmd.request_id)
        record_key = keys.worker(cmd.worker_id) if isinstance(cmd, StatusCommand) else None

        def read(pipe: Pipeline) -> None:
            pipe.get(request_key)
            if record_key is not None:
                pipe.hgetall(record_key)

        # The reads of the commands started in one loop tick share one round trip, with the
        # finishes of those answered in it.
        results = await self._book.read(read)
        stored = self._book.parse_stored(results[0])
        if stored is not None:
            await self._book.finish(delivery.entry_id, stored, cmd.reply_to)
            return "replayed"
        try:
            if isinstance(cmd, StatusCommand):
                reply = self._handlers.status_of(cmd, results[1] or None)
            else:
                reply = await self._handlers.list_workers(cmd)
            result = "ok"
        except CommandError as exc:
            reply = self._error_reply(cmd, exc)
            result = exc.code.value
        # Without a caller-chosen request id a reply only needs to outlive a redelivery.
        implicit_id = cmd.request_id == delivery.entry_id
        remember = READ_ONLY_DEFAULT_TTL if implicit_id else self._settings.idempotency_ttl_seconds
        await self._book.finish(delivery.entry_id, reply, cmd.reply_to, remember_seconds=remember)
        return result

    @staticmethod
    def _error_reply(
        cmd: CreateCommand | DeleteCommand | StatusCommand | ListCommand, exc: CommandError
    ) -> Reply:
        return Reply(
            request_id=cmd.request_id,
            command=cmd.command,
            ok=False,
            worker_id=getattr(cmd, "worker_id", None),
            error=exc.code.value,
            message=exc.message,
            retry_after=exc.retry_after,
        )

    async def _handle(self, cmd: CreateCommand | DeleteCommand) -> Reply:
        if isinstance(cmd, CreateCommand):
            return await self._handlers.create(cmd)
        return await self._handlers.delete(cmd)
