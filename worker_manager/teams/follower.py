"""The lifecycle stream turned into a board's membership entries (SPEC §12).

Every status change is on ``<prefix>:lifecycle`` already (SPEC §3). The managers read it with a
consumer group of their own (``teams``), so each change is written to its team's board once
whichever manager made it, and one that a manager read but did not finish (it crashed) is taken
over by another after :data:`CLAIM_IDLE_MS`. Reading the record's ``team`` for each change is
one ``HGET``; a worker of no team costs nothing more.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from worker_manager.contract.kinds import WorkerStatus
from worker_manager.contract.teams import JOINED, MANAGER, conflict_sentence, membership_word
from worker_manager.core.logs import get_logger
from worker_manager.settings import Settings
from worker_manager.teams.board import TeamBoards

log = get_logger(__name__)

#: The consumer group the managers share on the lifecycle stream for teams.
TEAMS_GROUP = "teams"
#: A change read by a manager that has not acknowledged it for this long is taken over.
CLAIM_IDLE_MS = 30_000
#: Entries read at once, and how long a read blocks.
BATCH = 100
BLOCK_MS = 1_000


class TeamFollower:
    def __init__(self, redis: Redis, settings: Settings, boards: TeamBoards) -> None:
        self._redis = redis
        self._keys = settings.keys
        self._consumer = settings.manager_id
        self._boards = boards

    async def ensure_group(self) -> None:
        """The group, from now on (a change from before teams existed has no board to go to)."""
        try:
            await self._redis.xgroup_create(
                self._keys.lifecycle, TEAMS_GROUP, id="$", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def follow(self, stop: asyncio.Event) -> None:
        """Runs until ``stop`` (under the manager's supervisor, restarted if it fails)."""
        await self.ensure_group()
        await self._take(await self._read("0"))  # what this manager read before a restart
        rounds = 0
        while not stop.is_set():
            await self._take(await self._read(">", block=BLOCK_MS))
            rounds += 1
            if rounds % 30 == 0:
                await self.reclaim()

    async def reclaim(self) -> None:
        """Changes another manager read and never finished."""
        result = await self._redis.xautoclaim(
            self._keys.lifecycle,
            TEAMS_GROUP,
            self._consumer,
            min_idle_time=CLAIM_IDLE_MS,
            start_id="0-0",
            count=BATCH,
        )
        await self._take([(entry_id, fields) for entry_id, fields in result[1] if fields])

    async def _read(
        self, start: str, *, block: int | None = None
    ) -> list[tuple[str, Mapping[str, str]]]:
        response = await self._redis.xreadgroup(
            TEAMS_GROUP,
            self._consumer,
            {self._keys.lifecycle: start},
            count=BATCH,
            block=block,
        )
        return [
            (entry_id, fields)
            for _stream, entries in response or []
            for entry_id, fields in entries
        ]

    async def _take(self, entries: list[tuple[str, Mapping[str, str]]]) -> None:
        for entry_id, fields in entries:
            await self.handle(fields)
            await self._redis.xack(self._keys.lifecycle, TEAMS_GROUP, entry_id)

    async def handle(self, fields: Mapping[str, str]) -> None:
        """One status change: its member's entry on its team's board, if it has a team; or a
        conflict between two workers' files, on the board of each one's team."""
        if fields.get("event") == "conflict":
            await self._conflict(fields)
            return
        try:
            to = WorkerStatus(fields.get("to", ""))
        except ValueError:
            return
        word = membership_word(to)
        worker_id = fields.get("worker_id", "")
        if word is None or not worker_id or fields.get("from") == fields.get("to"):
            return  # a note about the worker, not a change of its status
        team = await self._redis.hget(self._keys.worker(worker_id), "team")
        if not team:
            return
        await self._boards.member(str(team), worker_id, word, live=word == JOINED)
        log.debug("team member changed", team=team, worker_id=worker_id, word=word)

    async def _conflict(self, fields: Mapping[str, str]) -> None:
        """The conflict is said on the lifecycle once for each of the two workers: each time on
        that worker's team's board, once when both are of one team."""
        me, other = fields.get("worker_id", ""), fields.get("with", "")
        if not me or not other:
            return
        team = await self._redis.hget(self._keys.worker(me), "team")
        theirs = await self._redis.hget(self._keys.worker(other), "team")
        if not team or (team == theirs and me > other):
            return
        try:
            paths = [str(p) for p in json.loads(fields.get("paths", "[]"))]
        except ValueError:
            paths = []
        await self._boards.post(str(team), conflict_sentence(me, other, paths), sender=MANAGER)
