"""A team's board (SPEC §12) as one wrapper reads and writes it.

The board is a Redis stream the manager and the team's wrappers share. What a wrapper adds on
its agent's behalf always carries ``sender`` = this worker's id: the agent names only the words
(a post's text, a status and its note), never who says them, so no agent can speak as another.
The worker's ACL user may run XADD, XRANGE, XREVRANGE and XREAD on this one key, so those are
the only commands used here; every read is bounded (``COUNT``), and so is the stream
(``MAXLEN ~``), whatever a teammate writes.

The limits on what an agent may say are checked here too (:func:`post_problem`,
:func:`status_problem`), so the socket that carries its requests only speaks the protocol.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from worker_base.clock import iso_now
from worker_base.redis_client import REDIS_ERRORS

#: ``MAXLEN ~`` of every XADD: a busy team keeps its recent history, never an unbounded one.
BOARD_MAXLEN = 1000
#: The most entries one ``read`` returns.
READ_LIMIT = 200
#: How far back ``who`` looks (newest first): a member silent for longer is not listed.
WHO_SCAN = 1000
MAX_POST = 4000
MAX_NOTE = 500
#: A field of an entry someone else wrote is cut to this before it is passed on (an event, an
#: answer): the manager bounds its own posts, this bounds what we relay whatever it does.
FIELD_CAP = 16_000
#: How many fields of an entry are passed on (the contract names five; the manager may add).
FIELDS_CAP = 32

POST = "post"
STATUS = "status"
#: The status words an agent may set; the manager also writes ``joined`` and ``left``.
STATUS_WORDS = ("working", "blocked", "done")
JOINED = "joined"
LEFT = "left"
#: Senders that are not workers: posts from outside the team.
OUTSIDE_SENDERS = frozenset({"producer", "manager"})

#: A stream id as a client may name it (``since``): ``<ms>`` or ``<ms>-<seq>``.
STREAM_ID = re.compile(r"\d{1,20}(?:-\d{1,20})?")


@dataclass(frozen=True, slots=True)
class BoardEntry:
    """One entry of the board: its stream id and its fields (bounded copies)."""

    id: str
    fields: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, entry_id: Any, raw: Mapping[Any, Any]) -> BoardEntry:
        fields: dict[str, str] = {}
        for name, value in list(raw.items())[:FIELDS_CAP]:
            text = value if isinstance(value, str) else str(value)
            fields[str(name)] = text[:FIELD_CAP]
        return cls(str(entry_id), fields)

    @property
    def sender(self) -> str:
        return self.fields.get("sender", "")

    @property
    def kind(self) -> str:
        return self.fields.get("kind", "")

    @property
    def content(self) -> str:
        return self.fields.get("content", "")

    @property
    def note(self) -> str:
        return self.fields.get("note", "")

    @property
    def timestamp(self) -> str:
        return self.fields.get("timestamp", "")

    def as_dict(self) -> dict[str, str]:
        """The entry as JSON carries it: ``id`` and then every field."""
        return {**self.fields, "id": self.id}


def post_problem(text: object) -> str | None:
    """Why an agent's post is refused, or None."""
    if not isinstance(text, str) or not text.strip():
        return "a post needs some text"
    if len(text) > MAX_POST:
        return f"a post is at most {MAX_POST} characters (this one has {len(text)})"
    return None


def status_problem(status: object, note: object) -> str | None:
    """Why an agent's status is refused, or None."""
    if status not in STATUS_WORDS:
        return f"the status must be one of {', '.join(STATUS_WORDS)}"
    if note is not None and not isinstance(note, str):
        return "the note must be text"
    if note is not None and len(note) > MAX_NOTE:
        return f"a status note is at most {MAX_NOTE} characters (this one has {len(note)})"
    return None


def after(entry_id: str) -> str:
    """The smallest id after ``entry_id``: XRANGE's start for "since" (exclusive ranges need
    Redis 6.2; this works with any)."""
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


class TeamBoard:
    """The board's key, read and written as this worker (its id is every entry's sender)."""

    def __init__(self, redis: Redis, key: str, worker_id: str, changes_key: str = "") -> None:
        self._redis = redis
        self.key = key
        self.worker_id = worker_id
        #: What each member's workspace changed, as the manager last saw it (a hash).
        self.changes_key = changes_key

    async def append(self, kind: str, content: str, note: str = "") -> str:
        """Adds an entry from this worker; returns its id."""
        fields = {
            "sender": self.worker_id,
            "kind": kind,
            "content": content,
            "note": note,
            "timestamp": iso_now(),
        }
        entry_id = await self._redis.xadd(self.key, fields, maxlen=BOARD_MAXLEN, approximate=True)
        return str(entry_id)

    async def since(
        self, since: str | None, limit: int = READ_LIMIT
    ) -> tuple[list[BoardEntry], bool]:
        """Entries after ``since`` (the oldest first), or without it the latest ``limit``; and
        whether more may follow the last one returned."""
        if since is None:
            raw = await self._redis.xrevrange(self.key, "+", "-", count=limit)
            return [BoardEntry.of(i, f) for i, f in reversed(raw)], False
        raw = await self._redis.xrange(self.key, after(since), "+", count=limit)
        return [BoardEntry.of(i, f) for i, f in raw], len(raw) >= limit

    async def follow(self, cursor: str, block_ms: int, count: int = 100) -> list[BoardEntry]:
        """Entries after ``cursor``, waiting up to ``block_ms`` for the first."""
        reply = await self._redis.xread({self.key: cursor}, count=count, block=block_ms)
        if not reply:
            return []
        return [BoardEntry.of(i, f) for i, f in reply[0][1]]

    async def members(self) -> list[dict[str, Any]]:
        """Each member seen in the latest :data:`WHO_SCAN` entries, and this worker always."""
        raw = await self._redis.xrevrange(self.key, "+", "-", count=WHO_SCAN)
        found = members_of([BoardEntry.of(i, f) for i, f in raw], self.worker_id)
        changed = await self._changed()
        for member in found:
            member["changed"] = changed.get(str(member["worker_id"]), [])
        return found

    async def _changed(self) -> dict[str, list[str]]:
        """Each member's changed paths (bounded); nothing when they cannot be read."""
        if not self.changes_key:
            return {}
        try:
            raw: Mapping[Any, Any] = await self._redis.hgetall(self.changes_key)
        except REDIS_ERRORS:
            return {}
        return {str(worker): changed_paths(value) for worker, value in raw.items()}


#: The most changed paths ``who`` shows for one member.
CHANGED_SHOWN = 50


def changed_paths(value: object) -> list[str]:
    """The manager's JSON list of paths, bounded; anything else is no paths."""
    try:
        paths = json.loads(value) if isinstance(value, (str, bytes)) else None
    except ValueError:
        return []
    if not isinstance(paths, list):
        return []
    return [p[:FIELD_CAP] for p in paths if isinstance(p, str)][:CHANGED_SHOWN]


def members_of(newest_first: list[BoardEntry], self_id: str) -> list[dict[str, Any]]:
    """Who is on the team, from its entries (newest first): each worker's latest status (and
    note), the time of its latest entry; ``left`` when that is its latest status. This worker
    first, marked ``self``; then the most recently active."""
    found: dict[str, dict[str, Any]] = {}
    status_known: set[str] = set()
    for entry in newest_first:
        sender = entry.sender
        if not sender or sender in OUTSIDE_SENDERS:
            continue
        member = found.get(sender)
        if member is None:
            member = found[sender] = {
                "worker_id": sender,
                "status": "",
                "note": "",
                "last_activity": entry.timestamp,
                "self": sender == self_id,
            }
        if entry.kind == STATUS and sender not in status_known:
            status_known.add(sender)
            member["status"] = entry.content
            member["note"] = entry.note
    if self_id not in found:
        found[self_id] = {
            "worker_id": self_id,
            "status": "",
            "note": "",
            "last_activity": "",
            "self": True,
        }
    others = [m for m in found.values() if not m["self"]]
    others.sort(key=lambda m: str(m["last_activity"]), reverse=True)
    return [found[self_id], *others]
