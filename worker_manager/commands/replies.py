"""Replies, the idempotency record of each ``request_id``, and the dead-letter stream.

A ``request_id`` moves through two states in ``<prefix>:request:<id>``: an in-flight marker naming
the stream entry being handled, then the reply itself. A redelivery of the same entry after a
crash handles it again (handlers are idempotent); a duplicate entry with the same ``request_id``
gets the stored reply; nothing answered twice changes anything twice.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from worker_manager.commands.batching import PipelineBatcher, Stage
from worker_manager.contract.commands import COMMAND_NAMES
from worker_manager.contract.reply import DEAD_FIELD_PREFIX, Reply
from worker_manager.core.clock import iso_now
from worker_manager.core.keys import MANAGER_GROUP
from worker_manager.settings import Settings

_IN_FLIGHT = "in-flight:"
#: A dead letter keeps a known command whole up to ``WM_DEAD_KEEP_BYTES`` (``dead_complete``: it
#: can be replayed, ``worker-manager dead-letters --replay``); anything else (bigger, or not a
#: command at all) keeps at most this many fields, each cut to this many characters: it records
#: what went wrong, it is not a second copy of every megabyte a producer sent.
DEAD_MAX_FIELDS = 32
DEAD_MAX_NAME = 128
DEAD_MAX_VALUE = 2048

# The reply, written only where a reply may go: ``reply_to`` must be a stream or not exist. Any
# other type (a producer's mistake, or an attempt to make us expire someone's key) gets the
# reply as a dead letter instead, and the key is not touched. The idempotency record is kept
# either way: the command was handled, and its retry must get the same answer.
# KEYS: reply_to dead request
# ARGV: reply_maxlen reply_ttl dead_maxlen remember stored entry_id now [field value ...]
_REPLY = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if ARGV[4] ~= '' then redis.call('SET', KEYS[3], ARGV[5], 'EX', ARGV[4]) end
if kind ~= 'none' and kind ~= 'stream' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'dead_entry_id', ARGV[6],
    'dead_reason', 'reply_to names an existing ' .. kind .. ' key, not a reply stream; ' ..
    'the reply is kept here instead', 'dead_deliveries', '1', 'dead_at', ARGV[7],
    unpack(ARGV, 8))
  return 0
end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 8))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class Claim:
    """What the idempotency record says about a command about to be handled."""

    owned: bool  # we may handle it
    reply: Reply | None = None  # already answered: send this again


class ReplyBook:
    def __init__(
        self, redis: Redis, settings: Settings, *, commands_stream: str | None = None
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._keys = settings.keys
        # The stream the answered entries are acknowledged on (shared, or a manager's own).
        self._commands = commands_stream or settings.keys.commands
        # The finishes of the commands answered in one loop tick, and the reads of those started
        # in it, share one MULTI/EXEC: one round trip a tick, however many commands.
        self._batch = PipelineBatcher(redis, transaction=True, epilogue=self._ack)

    async def claim(self, request_id: str, entry_id: str, *, wait: float = 5.0) -> Claim:
        """Own ``request_id`` for this entry, or return the reply a previous handling gave.

        Returns ``Claim(owned=False)`` when another entry with the same id is still in flight
        after ``wait`` seconds: the caller leaves its entry pending, to be retried.
        """
        key = self._keys.request(request_id)
        marker = _IN_FLIGHT + entry_id
        deadline = asyncio.get_running_loop().time() + wait
        delay = 0.02
        while True:
            if await self._redis.set(
                key, marker, nx=True, ex=self._settings.idempotency_ttl_seconds
            ):
                return Claim(owned=True)
            current: str | None = await self._redis.get(key)
            if current is None:
                continue
            if current == marker:  # our own entry, redelivered after a crash
                return Claim(owned=True)
            if not current.startswith(_IN_FLIGHT):
                return Claim(owned=False, reply=Reply.model_validate_json(current))
            if asyncio.get_running_loop().time() >= deadline:
                return Claim(owned=False)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def read(self, stage: Stage) -> list[Any]:
        """Run the reads ``stage`` queues in the next batch, with the next finishes.

        Inside the ``MULTI`` they see a consistent snapshot; the ``EXEC`` returns their values.
        """
        return await self._batch.run(stage)

    async def finish(
        self,
        entry_id: str,
        reply: Reply | None,
        reply_to: str | None,
        *,
        remember_seconds: int | None = None,
        dead: DeadLetter | None = None,
    ) -> None:
        """Answer and acknowledge one command in one transaction.

        The reply (remembered under its request id for ``remember_seconds``), the dead-letter
        copy and the ``XACK`` land together or not at all: a caller who sees the reply never
        sees the command still pending, and a crash before the commit means a redelivery. The
        commands finished in the same loop tick share one ``MULTI``/``EXEC`` (see
        :mod:`worker_manager.commands.batching`), which keeps each one's writes just as indivisible.
        """
        keys, settings = self._keys, self._settings
        dead_entry = (
            dead.entry(entry_id, stream=self._commands, max_bytes=settings.dead_keep_bytes)
            if dead is not None
            else None
        )
        answer = reply.to_fields() if reply is not None and reply_to is not None else None
        stored = None
        if answer is not None and reply is not None and remember_seconds is not None:
            stored = reply.model_dump_json()

        reply_args: list[str] = []
        request_key = keys.request(reply.request_id) if reply is not None else None
        if answer is not None and reply is not None:
            reply_args = [
                str(settings.reply_maxlen),
                str(settings.reply_ttl_seconds),
                str(settings.dead_maxlen),
                str(remember_seconds) if stored is not None else "",
                stored or "",
                entry_id,
                iso_now(),
            ]
            for name, value in answer.items():
                reply_args += [name, value]

        def stage(pipe: Pipeline) -> None:
            if dead_entry is not None:
                pipe.xadd(keys.dead, dead_entry, maxlen=settings.dead_maxlen, approximate=True)
            if reply_args and request_key is not None and reply_to is not None:
                pipe.eval(_REPLY, 3, reply_to, keys.dead, request_key, *reply_args)

        # The XACK is queued by _ack, one for every entry of the batch, in the same MULTI.
        await self._batch.run(stage, tag=entry_id)

    def _ack(self, pipe: Pipeline, entry_ids: list[str]) -> None:
        pipe.xack(self._commands, MANAGER_GROUP, *entry_ids)

    async def age_out_dead_letters(self) -> None:
        """Drop dead letters older than ``dead_retention_seconds`` (they are also capped in
        number by ``dead_maxlen``)."""
        cutoff_ms = int((time.time() - self._settings.dead_retention_seconds) * 1000)
        await self._redis.xtrim(self._keys.dead, minid=f"{max(cutoff_ms, 0)}-0", approximate=True)

    async def release(self, request_id: str, entry_id: str) -> None:
        """Drop our in-flight marker (the command was not answered and will be retried)."""
        key = self._keys.request(request_id)
        if await self._redis.get(key) == _IN_FLIGHT + entry_id:
            await self._redis.delete(key)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A command copied, field for field, to ``<prefix>:dead`` with why it was not handled."""

    fields: dict[str, str]
    reason: str
    deliveries: int

    def entry(self, entry_id: str, *, stream: str, max_bytes: int) -> dict[str, str]:
        """The dead letter: the command whole when it names a command, is at most
        ``max_bytes`` and has no field named like a dead letter's own; else cut."""
        size = sum(len(k.encode()) + len(v.encode()) for k, v in self.fields.items())
        complete = (
            self.fields.get("command") in COMMAND_NAMES
            and size <= max_bytes
            and not any(name.startswith(DEAD_FIELD_PREFIX) for name in self.fields)
        )
        entry: dict[str, str] = {}
        if complete:
            entry.update(self.fields)
        else:
            for name, value in list(self.fields.items())[:DEAD_MAX_FIELDS]:
                entry[name[:DEAD_MAX_NAME]] = _cut(value)
            if len(self.fields) > DEAD_MAX_FIELDS:
                entry["dead_dropped_fields"] = str(len(self.fields) - DEAD_MAX_FIELDS)
        entry.update(
            dead_complete="true" if complete else "false",
            dead_stream=stream,
            dead_entry_id=entry_id,
            dead_reason=_cut(self.reason),
            dead_deliveries=str(self.deliveries),
            dead_at=iso_now(),
        )
        return entry


def _cut(value: str) -> str:
    if len(value) <= DEAD_MAX_VALUE:
        return value
    return value[:DEAD_MAX_VALUE] + f"...[{len(value) - DEAD_MAX_VALUE} more characters cut]"
