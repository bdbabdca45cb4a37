"""Reading the worker's input stream through its consumer group, and acknowledging entries.

The consumer group is what makes inputs survive a wrapper restart: an entry stays in the
group's pending list until the wrapper acks it, which it does only once the input is answered.
So at start the wrapper first re-reads its own pending entries (id ``0``), then new ones (``>``).

Only XREADGROUP, XACK and (when the group is missing) XGROUP CREATE are sent: that is all the
worker's ACL user may run on this key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, ResponseError

from worker_base.config import WRAPPER_CONSUMER, WRAPPER_GROUP

log = logging.getLogger("worker_base")

PROMPT = "prompt"
CANCEL = "cancel"


@dataclass(frozen=True, slots=True)
class InputEntry:
    id: str
    type: str
    content: str
    #: The entry is pending in the group but was deleted from the stream (XDEL or trimming).
    missing: bool = False


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
                if not fields:
                    entries.append(InputEntry(entry_id, "", "", missing=True))
                    continue
                type_ = (fields.get("type") or PROMPT).strip().lower()
                entries.append(InputEntry(entry_id, type_, fields.get("content") or ""))
        return entries
