"""Reading the worker's input stream through its consumer group, and acknowledging entries.

The consumer group is what makes inputs survive a wrapper restart: an entry stays in the
group's pending list until the wrapper acks it, which it does only once the input is answered.
So at start the wrapper first re-reads its own pending entries (id ``0``), then new ones (``>``).

Only XREADGROUP, XACK and (when the group is missing) XGROUP CREATE are sent: that is all the
worker's ACL user may run on this key.

Each entry is judged here, once, against :data:`INPUT_TYPES` (SPEC §4): an entry of an unknown
``type``, or without a field its type needs (a ``prompt`` without ``content``, say a producer's
``{"data": …}`` envelope), carries a ``problem`` and runs nothing; the wrapper answers it with
that sentence as an ``error`` and a non-zero ``done``, acks it and goes on. Defaulting the
missing field instead would run an empty prompt, which costs an agent run and answers nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, ResponseError

from worker_base.config import WRAPPER_CONSUMER, WRAPPER_GROUP

log = logging.getLogger("worker_base")

#: How much of an unknown ``type`` an error quotes: the value is the producer's, of any size.
SHOWN_TYPE_CHARS = 40


class InputType(StrEnum):
    """``type`` of an entry on ``worker:<id>:input`` that the wrapper answers."""

    PROMPT = "prompt"
    CANCEL = "cancel"
    #: SPEC §8's workspace requests, answered by the wrapper itself.
    DIFF = "diff"
    READ = "read"
    LIST = "list"
    WRITE = "write"
    EXEC = "exec"


@dataclass(frozen=True, slots=True)
class InputSpec:
    """What an input of one type must carry to be run.

    ``required`` fields must be present and non-empty: an empty string carries nothing, and is
    what a client that forgot the field most often sends.
    """

    required: tuple[str, ...] = ()


#: Every input type and what it needs: adding a type is one member of :class:`InputType` and one
#: entry here. A ``write``'s ``content`` (base64) may be empty: an empty file.
INPUT_TYPES: Mapping[InputType, InputSpec] = MappingProxyType(
    {
        InputType.PROMPT: InputSpec(required=("content",)),
        InputType.CANCEL: InputSpec(),
        InputType.DIFF: InputSpec(),
        InputType.READ: InputSpec(required=("path",)),
        InputType.LIST: InputSpec(),
        InputType.WRITE: InputSpec(required=("path",)),
        InputType.EXEC: InputSpec(required=("argv",)),
    }
)
#: Answered at once, even while a prompt runs (they change nothing); the others wait their turn.
IMMEDIATE = frozenset({InputType.DIFF, InputType.READ, InputType.LIST})

PROMPT = InputType.PROMPT
CANCEL = InputType.CANCEL


@dataclass(frozen=True, slots=True)
class InputEntry:
    id: str
    #: None when the entry names no type the wrapper knows (then ``problem`` says so).
    type: InputType | None
    content: str = ""
    #: All the entry's fields, for the types that need more than ``content``.
    fields: Mapping[str, str] = field(default_factory=dict)
    #: Why the entry runs nothing (a sentence for its ``error`` event), or None when it is valid.
    problem: str | None = None
    #: The entry is pending in the group but was deleted from the stream (XDEL or trimming).
    missing: bool = False


def parse_entry(entry_id: str, fields: Mapping[str, str] | None) -> InputEntry:
    """One stream entry as the wrapper will handle it; never raises on what a producer wrote.

    A missing or blank ``type`` means ``prompt`` (SPEC §4); the type is matched without regard
    to case or surrounding spaces, as before.
    """
    if not fields:
        return InputEntry(entry_id, None, missing=True)
    raw = (fields.get("type") or "").strip().lower() or InputType.PROMPT.value
    content = fields.get("content") or ""
    type_ = next((t for t in INPUT_TYPES if t.value == raw), None)
    if type_ is None:  # not a member, or a member without its entry in the table
        shown = raw if len(raw) <= SHOWN_TYPE_CHARS else raw[:SHOWN_TYPE_CHARS] + "…"
        problem = f"input {entry_id} has an unknown type {shown!r}: expected {_known_types()}"
        return InputEntry(entry_id, None, content, fields, problem=problem)
    absent = [name for name in INPUT_TYPES[type_].required if not fields.get(name)]
    if absent:
        needs = "one" if len(absent) == 1 else "them"
        article = "an" if type_.value[0] in "aeiou" else "a"
        problem = (
            f"input {entry_id} has no {' and no '.join(absent)}: "
            f"{article} {type_.value} needs {needs}"
        )
        return InputEntry(entry_id, type_, content, fields, problem=problem)
    return InputEntry(entry_id, type_, content, fields)


def _known_types() -> str:
    """``prompt or cancel``; ``prompt, cancel or diff`` once there are more."""
    names = [t.value for t in INPUT_TYPES]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


class GroupMissingError(RuntimeError):
    """The consumer group does not exist and this user may not create it."""


def is_nogroup(exc: ResponseError) -> bool:
    return str(exc).startswith("NOGROUP")


class InputReader:
    def __init__(self, redis: Redis, key: str, *, block_ms: int, count: int = 100) -> None:
        self._redis = redis
        self._key = key
        self._block_ms = block_ms
        self._count = count

    async def ensure_group(self) -> None:
        """Create the group from the start of the stream, unless it exists.

        ``0`` rather than ``$``: inputs pushed before the group existed must still be read. The
        manager normally creates the group itself and the worker's ACL may forbid XGROUP; both
        answers (BUSYGROUP, NOPERM) are fine here, and a truly missing group shows up as NOGROUP
        on the first read.
        """
        try:
            await self._redis.xgroup_create(self._key, WRAPPER_GROUP, id="0", mkstream=True)
            log.info("created consumer group %r on %s", WRAPPER_GROUP, self._key)
        except NoPermissionError as exc:  # redis-py strips the NOPERM prefix
            log.debug("may not create the consumer group (the manager does): %s", exc)
        except ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise

    async def read_pending(self) -> list[InputEntry]:
        """This consumer's delivered-but-unacked entries, oldest first (all of them)."""
        entries: list[InputEntry] = []
        after = "0"
        while True:
            batch = self._parse(await self._read(after, block=None))
            if not batch:
                return entries
            entries.extend(batch)
            after = batch[-1].id

    async def read_new(self) -> list[InputEntry]:
        """New entries, waiting up to ``block_ms`` for some; may return none."""
        return self._parse(await self._read(">", block=self._block_ms))

    async def ack(self, *ids: str) -> None:
        if ids:
            await self._redis.xack(self._key, WRAPPER_GROUP, *ids)

    async def _read(self, after: str, *, block: int | None) -> Any:
        try:
            return await self._redis.xreadgroup(
                WRAPPER_GROUP,
                WRAPPER_CONSUMER,
                {self._key: after},
                count=self._count,
                block=block,
            )
        except ResponseError as exc:
            if is_nogroup(exc):
                raise GroupMissingError(str(exc)) from exc
            raise

    @staticmethod
    def _parse(reply: Any) -> list[InputEntry]:
        entries: list[InputEntry] = []
        if not reply:
            return entries
        # RESP2 reply: [[stream, [(id, {field: value}), ...]]]
        for _stream, items in reply:
            for entry_id, fields in items:
                entries.append(parse_entry(entry_id, fields))
        return entries
