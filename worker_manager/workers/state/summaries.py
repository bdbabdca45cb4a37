"""Workspace summaries into records, and conflicts between workers of one repository (SPEC §8).

A wrapper publishes its workspace summary in ``worker:<id>:workspace`` after each input and
says its digest in the heartbeat (``ws=…``). The watcher hands each round's observations here:
for a worker whose digest differs from its record's, the summary is fetched (one pipeline,
bounded ``GETRANGE``), checked field by field (``contract.workspace.parse_summary``: the
worker's bytes are untrusted) and written to the record's ``workspace``. Nothing of the data
plane is read.

**Conflicts.** Workers checked out from the same ``repository.url``, or of the same team, whose
changed files overlap get a note, as git-paw's broker does for agents on one machine, here
across the fleet: each one's changed paths are kept in ``<prefix>:changes:<group>`` (hash:
worker -> paths: ``Keys.repository_changes``, ``Keys.team_changes``); when a summary arrives,
the paths it shares with other live workers of its groups are the conflicts. A conflict new or
changed since the last note (``<prefix>:conflict:<digest of the pair>``, expiring) is
announced on ``worker:lifecycle`` (``event=conflict``, ``with``, ``paths``; ``from`` = ``to`` =
the worker's status, so a reader of transitions sees no change) and as a ``workspace`` event
``{"conflicts": […]}`` on both workers' outputs; the record's ``workspace`` carries the current
``conflicts``. The decision is :func:`overlaps`, a plain function.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from redis.asyncio import Redis

from worker_manager.contract.kinds import WorkerStatus
from worker_manager.contract.workspace import MAX_SUMMARY_CHARS, parse_summary
from worker_manager.core.clock import iso_now
from worker_manager.core.keys import Keys
from worker_manager.core.logs import get_logger
from worker_manager.settings import Settings
from worker_manager.workers.state.heartbeats import Observed
from worker_manager.workers.state.records import WorkerStore

log = get_logger(__name__)

#: Paths shared with another worker, at most this many in one note.
MAX_CONFLICT_PATHS = 100


def overlaps(mine: Iterable[str], others: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """The paths ``mine`` shares with each of ``others`` (worker -> sorted paths; none: absent)."""
    own = set(mine)
    found: dict[str, list[str]] = {}
    for worker_id, paths in others.items():
        shared = own.intersection(paths)
        if shared:
            found[worker_id] = sorted(shared)[:MAX_CONFLICT_PATHS]
    return found


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def conflict_groups(keys: Keys, repository_url: str, team: str) -> list[str]:
    """The hashes whose workers' changed files are compared: of those checked out from one
    repository, and of the members of one team (SPEC §12)."""
    groups = [keys.repository_changes(_digest(repository_url))] if repository_url else []
    return [*groups, keys.team_changes(team)] if team else groups


def stale(seen: Observed) -> bool:
    """Whether the worker published a summary its record does not have yet."""
    beat, record = seen.beat, seen.record
    if beat is None or beat.workspace is None or record is None:
        return False
    return beat.workspace != record.text("workspace_digest")


class Summaries:
    def __init__(self, settings: Settings, redis: Redis, raw: Redis, store: WorkerStore) -> None:
        self._settings = settings
        self._keys = settings.keys
        self._redis = redis
        self._raw = raw  # does not decode: the summary is the worker's bytes
        self._store = store

    async def refresh(self, observed: Sequence[Observed]) -> None:
        """Copy the summaries that changed into their records; note new conflicts."""
        changed = [seen for seen in observed if stale(seen)]
        if not changed:
            return
        async with self._raw.pipeline(transaction=False) as pipe:
            for seen in changed:
                pipe.getrange(self._keys.workspace(seen.worker_id), 0, MAX_SUMMARY_CHARS)
            values = await pipe.execute(raise_on_error=False)
        for seen, value in zip(changed, values, strict=True):
            assert seen.beat is not None and seen.record is not None
            digest = seen.beat.workspace or ""
            summary = None if isinstance(value, BaseException) else parse_summary(value)
            if summary is None:
                log.warning("a workspace summary that is not one", worker_id=seen.worker_id)
                await self._store.update(seen.worker_id, {"workspace_digest": digest})
                continue
            groups = conflict_groups(
                self._keys, seen.record.text("repository_url"), seen.record.text("team")
            )
            if groups:
                conflicts = await self._conflicts(seen.worker_id, groups, summary)
                if conflicts:
                    summary["conflicts"] = conflicts
            await self._store.update(
                seen.worker_id,
                {
                    "workspace": json.dumps(summary, separators=(",", ":")),
                    "workspace_digest": digest,
                },
            )

    async def _conflicts(
        self, worker_id: str, groups: list[str], summary: dict[str, Any]
    ) -> list[dict[str, Any]]:
        prefix = self._keys.prefix
        paths = [item["path"] for item in summary["changed"]]
        listed: dict[str, str] = {}
        listed_in: dict[str, str] = {}
        for changes_key in groups:
            await self._redis.hset(changes_key, worker_id, json.dumps(paths))
            await self._redis.expire(changes_key, self._settings.retention_seconds)
            for other, text in (await self._redis.hgetall(changes_key)).items():
                if other != worker_id:
                    listed[other] = text
                    listed_in[other] = changes_key
        others: dict[str, list[str]] = {}
        live = await self._live(sorted(listed))
        for other, text in listed.items():
            if other not in live:
                await self._redis.hdel(listed_in[other], other)
                continue
            try:
                value = json.loads(text)
            except ValueError:
                continue
            if isinstance(value, list):
                others[other] = [p for p in value if isinstance(p, str)]
        found = overlaps(paths, others)
        for other, shared in found.items():
            # One note per pair and set of paths, whichever group (repository, team) found it.
            pair = _digest("|".join(sorted((worker_id, other))))
            note = _digest(json.dumps(shared))
            said = await self._redis.set(
                f"{prefix}:conflict:{pair}", note, ex=self._settings.retention_seconds, get=True
            )
            if said == note:
                continue  # already said
            await self._announce(worker_id, other, shared, live)
            log.info("workspace conflict", worker_id=worker_id, other=other, paths=len(shared))
        return [{"worker_id": other, "paths": shared} for other, shared in sorted(found.items())]

    async def _live(self, ids: list[str]) -> dict[str, str]:
        """The status of each of ``ids`` that is live."""
        statuses = {}
        for worker_id in ids:
            status = await self._redis.hget(self._keys.worker(worker_id), "status")
            if status in (WorkerStatus.STARTING, WorkerStatus.RUNNING):
                statuses[worker_id] = str(status)
        return statuses

    async def _announce(
        self, worker_id: str, other: str, paths: list[str], live: Mapping[str, str]
    ) -> None:
        now = iso_now()
        own_status = str(await self._redis.hget(self._keys.worker(worker_id), "status") or "")
        for me, them, status in (
            (worker_id, other, own_status),
            (other, worker_id, live.get(other, "")),
        ):
            await self._redis.xadd(
                self._keys.lifecycle,
                {
                    "worker_id": me,
                    "from": status,
                    "to": status,
                    "reason": "conflict",
                    "event": "conflict",
                    "with": them,
                    "paths": json.dumps(paths),
                    "timestamp": now,
                },
                maxlen=self._settings.lifecycle_maxlen,
                approximate=True,
            )
            await self._redis.xadd(
                self._keys.output(me),
                {
                    "type": "workspace",
                    "content": json.dumps({"conflicts": [{"worker_id": them, "paths": paths}]}),
                    "timestamp": now,
                    "input_id": "",
                },
                maxlen=self._settings.output_maxlen,
                approximate=True,
            )
