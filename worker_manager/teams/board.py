"""A team's board in Redis: the manager's entries, reading it, and its expiry.

A member's status change is written as one script: the entry, the member set, and the board's
expiry (kept while a member lives, set once none does), so a crash between them cannot leave a
board that expires under a live team or one that never does.
"""

from __future__ import annotations

from redis.asyncio import Redis

from worker_manager.contract.teams import (
    BOARD_MAXLEN,
    POST,
    PRODUCER,
    STATUS,
    entry_fields,
)
from worker_manager.core.clock import iso_now
from worker_manager.settings import Settings

#: KEYS: board, members. ARGV: worker id, live (1/0), retention seconds, maxlen, then the
#: entry's fields. Adds the entry, the member in or out, and the expiry that follows.
_MEMBERSHIP = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, 5))
if ARGV[2] == '1' then
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[2])
else
  redis.call('SREM', KEYS[2], ARGV[1])
  if redis.call('SCARD', KEYS[2]) == 0 then
    redis.call('EXPIRE', KEYS[1], ARGV[3])
  end
end
return id
"""

#: KEYS: board, members. ARGV: retention seconds, maxlen, then the entry's fields. A post to a
#: team with no live member is kept only as long as such a board is.
_POST = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
if redis.call('SCARD', KEYS[2]) == 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return id
"""


class TeamBoards:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._keys = settings.keys
        self._retention = settings.team_retention_seconds
        self._membership = redis.register_script(_MEMBERSHIP)
        self._post = redis.register_script(_POST)

    async def post(self, team: str, content: str, *, sender: str = PRODUCER) -> str:
        """A post from outside the team; its entry's id."""
        fields = entry_fields(sender, POST, content, iso_now())
        flat = [item for pair in fields.items() for item in pair]
        entry_id = await self._post(
            keys=[self._keys.team_board(team), self._keys.team_members(team)],
            args=[self._retention, BOARD_MAXLEN, *flat],
        )
        return _text(entry_id)

    async def member(self, team: str, worker_id: str, word: str, *, live: bool) -> str:
        """Say what became of a member (``joined``, ``suspended``, ``left``)."""
        fields = entry_fields(worker_id, STATUS, word, iso_now())
        flat = [item for pair in fields.items() for item in pair]
        entry_id = await self._membership(
            keys=[self._keys.team_board(team), self._keys.team_members(team)],
            args=[worker_id, "1" if live else "0", self._retention, BOARD_MAXLEN, *flat],
        )
        return _text(entry_id)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
