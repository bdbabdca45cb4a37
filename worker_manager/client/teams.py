"""A team seen from outside (SPEC §12): its board, its members, and posts to it.

Posting goes through the command stream (``team_post``): the board is written only by the
manager and the team's wrappers, so a post from outside always says ``producer``. Reading is the
board's stream itself (any user that may read it: the operator, or a producer or viewer of the
namespace).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, Protocol

from redis.asyncio import Redis

from worker_manager.client.streams import read_stream
from worker_manager.contract.reply import Reply
from worker_manager.contract.teams import (
    BoardEntry,
    Member,
    check_team_name,
    members,
    with_changes,
)
from worker_manager.core.keys import Keys


class Sender(Protocol):
    """What a team handle needs of ``Client``: its Redis, its keys, a checked request."""

    redis: Redis
    keys: Keys

    async def request(self, command: str, **fields: Any) -> Reply: ...


class Team:
    def __init__(self, client: Sender, name: str) -> None:
        self.client = client
        self.name = check_team_name(name)

    def __repr__(self) -> str:
        return f"Team({self.name!r})"

    @property
    def board_key(self) -> str:
        return self.client.keys.team_board(self.name)

    async def post(self, text: str) -> str:
        """A post on the board, from ``producer``; its entry's id."""
        reply = await self.client.request("team_post", team=self.name, content=text)
        return reply.entry_id or ""

    async def board(self, *, since: str = "0") -> list[BoardEntry]:
        """Every entry kept after ``since`` (an entry id), oldest first."""
        return [entry async for entry in self.entries(after=since, follow=False)]

    async def entries(
        self, *, after: str = "0", follow: bool = True
    ) -> AsyncGenerator[BoardEntry, None]:
        """The board's entries after ``after`` (``$``: only new ones), live with ``follow``."""
        async for entry_id, fields in read_stream(self.client.redis, self.board_key, after, follow):
            yield BoardEntry.of(entry_id, fields)

    async def members(self, board: list[BoardEntry] | None = None) -> list[Member]:
        """Each member the board tells of: its last status and note, when it was last heard,
        what its workspace changed. ``board``: the entries already read (else read here)."""
        changes = await self.client.redis.hgetall(self.client.keys.team_changes(self.name))
        entries = await self.board() if board is None else board
        return with_changes(members(entries), changes)
