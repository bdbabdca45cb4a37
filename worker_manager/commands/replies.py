"""Replies, the idempotency record of each ``request_id``, and the dead-letter stream.

A ``request_id`` moves through two states in ``<prefix>:request:<id>``: an in-flight marker naming
the stream entry being handled, then the reply itself. A redelivery of the same entry after a
crash handles it again (handlers are idempotent); a duplicate entry with the same ``request_id``
gets the stored reply; nothing answered twice changes anything twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from worker_manager.commands.batching import PipelineBatcher
from worker_manager.contract.commands import COMMAND_NAMES
from worker_manager.contract.kinds import LIVE_STATUSES
from worker_manager.contract.reply import DEAD_FIELD_PREFIX, STATUS_DETAILS, Reply
from worker_manager.core.clock import iso_now
from worker_manager.core.errors import ErrorCode
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
# reply as a dead letter instead, and the key is not touched. Shared by both scripts below.
_SEND = """
local function send(reply_to, dead, reply_maxlen, reply_ttl, dead_maxlen, entry_id, now, fields)
  local kind = redis.call('TYPE', reply_to)['ok']
  if kind ~= 'none' and kind ~= 'stream' then
    redis.call('XADD', dead, 'MAXLEN', '~', dead_maxlen, '*', 'dead_entry_id', entry_id,
      'dead_reason', 'reply_to names an existing ' .. kind .. ' key, not a reply stream; ' ..
      'the reply is kept here instead', 'dead_deliveries', '1', 'dead_at', now,
      unpack(fields))
    return 0
  end
  redis.call('XADD', reply_to, 'MAXLEN', '~', reply_maxlen, '*', unpack(fields))
  redis.call('EXPIRE', reply_to, reply_ttl)
  return 1
end
"""

# A reply built in Python. The idempotency record is kept whether or not ``reply_to`` takes it:
# the command was handled, and its retry must get the same answer.
# KEYS: reply_to dead request
# ARGV: reply_maxlen reply_ttl dead_maxlen remember stored entry_id now [field value ...]
_REPLY = (
    _SEND
    + """
if ARGV[4] ~= '' then redis.call('SET', KEYS[3], ARGV[5], 'EX', ARGV[4]) end
return send(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[6], ARGV[7], {unpack(ARGV, 8)})
"""
)


def _lua_strings(values: tuple[str, ...]) -> str:
    """A Lua table literal of plain names (checked: nothing in them needs quoting)."""
    assert all(value.replace("_", "").isalnum() for value in values), values
    return "{" + ", ".join(f"'{value}'" for value in values) + "}"


# A status answered inside Redis, in the one step that writes its reply and acknowledges its
# entry: the record is read, projected and sent without a round trip back to the manager in
# between (SPEC §2: the status and, while the worker is live, its address; then every
# ``STATUS_DETAILS`` field the record has). The names and the live statuses come from the
# Python constants, so the rules have one source. An empty record is ``not_found``.
# KEYS: reply_to dead record commands
# ARGV: reply_maxlen reply_ttl dead_maxlen entry_id now group request_id worker_id missing
_STATUS = (
    _SEND
    + f"""
local details = {_lua_strings(STATUS_DETAILS)}
local live = {{}}
for _, name in ipairs({_lua_strings(tuple(s.value for s in LIVE_STATUSES))}) do
  live[name] = true
end
local flat = redis.call('HGETALL', KEYS[3])
local fields
if #flat == 0 then
  fields = {{'request_id', ARGV[7], 'command', 'status', 'ok', 'false', 'worker_id', ARGV[8],
    'error', '{ErrorCode.NOT_FOUND.value}', 'message', ARGV[9]}}
else
  local record = {{}}
  for i = 1, #flat, 2 do record[flat[i]] = flat[i + 1] end
  fields = {{'request_id', ARGV[7], 'command', 'status', 'ok', 'true', 'worker_id', ARGV[8]}}
  local status = record['status']
  if status and status ~= '' then
    fields[#fields + 1] = 'status'
    fields[#fields + 1] = status
  end
  -- An ended worker has no address any more (the record keeps its last one).
  local ip = record['ip_address']
  if status and live[status] and ip and ip ~= '' then
    fields[#fields + 1] = 'ip_address'
    fields[#fields + 1] = ip
  end
  for _, name in ipairs(details) do
    local value = record[name]
    if value and value ~= '' then
      fields[#fields + 1] = name
      fields[#fields + 1] = value
    end
  end
end
send(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], fields)
redis.call('XACK', KEYS[4], ARGV[6], ARGV[4])
if #flat == 0 then return 0 end
return 1
"""
)
#: Sent by its digest (the script is ~1.7 KB); Redis knows it after the first ``EVAL``.
_STATUS_SHA = hashlib.sha1(_STATUS.encode(), usedforsecurity=False).hexdigest()


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
        # The finishes (and status scripts) of the commands answered while a round trip is out
        # share one MULTI/EXEC: one round trip a batch, however many commands.
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

    async def answer_status(
        self,
        entry_id: str,
        *,
        request_id: str,
        worker_id: str,
        reply_to: str,
        missing: str,
    ) -> bool:
        """Answer a ``status`` from its record in one script that reads the record, writes the
        reply (as :meth:`finish` does: only to a stream) and acknowledges the entry.

        One command, so atomic by itself: a lone status costs one round trip after it is read,
        as a reply costs the echo consumer; under load it joins the batch like any finish.
        ``missing`` is the message of the ``not_found`` reply when there is no record. Returns
        whether the record was found.
        """
        keys, settings = self._keys, self._settings
        args = (
            settings.reply_maxlen,
            settings.reply_ttl_seconds,
            settings.dead_maxlen,
            entry_id,
            iso_now(),
            MANAGER_GROUP,
            request_id,
            worker_id,
            missing,
        )
        record, commands = keys.worker(worker_id), self._commands

        def by_digest(pipe: Pipeline) -> None:
            pipe.evalsha(_STATUS_SHA, 4, reply_to, keys.dead, record, commands, *args)

        def whole(pipe: Pipeline) -> None:
            pipe.eval(_STATUS, 4, reply_to, keys.dead, record, commands, *args)

        # Untagged: the script acknowledges its own entry. A Redis that does not know the
        # script (restarted, failed over, flushed) ran none of it: sending it whole is safe.
        try:
            results = await self._batch.run(by_digest)
        except NoScriptError:
            results = await self._batch.run(whole)
        return bool(results[0])

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
