"""Snapshots' records in Redis (SPEC §10): what each keeps, where, since when, when last used.

A snapshot's record (``<prefix>:snapshot:<name>``, a hash) says what it was taken of (the worker,
its agent type), which manager's host holds its volumes, its size, when it was taken and last
used, and what a create from it starts with: the worker's saved create (``spec``) and the record
fields of its shape and workspace (``fields``). ``<prefix>:snapshots`` orders the names by last
use, for listing and for ``WM_SNAPSHOT_RETENTION_DAYS``. A name is taken once: a second snapshot
under it is refused until the first is deleted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from worker_manager.core.clock import iso_from_unix, iso_now, unix_or_none
from worker_manager.core.keys import Keys

# KEYS: record index   ARGV: name score field value [field value ...]
_SAVE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"""


@dataclass(frozen=True, slots=True)
class Snapshot:
    name: str
    worker_id: str
    agent_type: str
    manager_id: str
    created_at: str
    last_used_at: str
    size_bytes: int
    #: The image its worker ran (a create from it runs the same): the collector keeps it.
    image_hash: str
    #: The worker's saved create, and the record fields a create from it starts with.
    spec: dict[str, Any]
    fields: dict[str, str]

    @property
    def last_used(self) -> float:
        return unix_or_none(self.last_used_at) or unix_or_none(self.created_at) or 0.0

    def public(self) -> dict[str, Any]:
        """As replies show it."""
        return {
            "name": self.name,
            "worker_id": self.worker_id,
            "agent_type": self.agent_type,
            "created_at": self.created_at,
            "last_used_at": self.last_used_at,
            "manager_id": self.manager_id,
            "size_bytes": self.size_bytes,
        }

    @classmethod
    def from_hash(cls, values: dict[str, str]) -> Snapshot | None:
        if not values.get("name"):
            return None
        try:
            spec = json.loads(values.get("spec") or "{}")
            fields = json.loads(values.get("fields") or "{}")
        except ValueError:
            spec, fields = {}, {}
        size = values.get("size_bytes") or "0"
        return cls(
            name=values["name"],
            worker_id=values.get("worker_id", ""),
            agent_type=values.get("agent_type", ""),
            manager_id=values.get("manager_id", ""),
            created_at=values.get("created_at", ""),
            last_used_at=values.get("last_used_at", ""),
            size_bytes=int(size) if size.isdigit() else 0,
            image_hash=values.get("image_hash", ""),
            spec=spec if isinstance(spec, dict) else {},
            fields={str(k): str(v) for k, v in fields.items()} if isinstance(fields, dict) else {},
        )


class SnapshotStore:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._save = redis.register_script(_SAVE)

    async def save(self, snapshot: Snapshot) -> bool:
        """Keep it; False when the name is taken."""
        now = iso_now()
        values = {
            "name": snapshot.name,
            "worker_id": snapshot.worker_id,
            "agent_type": snapshot.agent_type,
            "manager_id": snapshot.manager_id,
            "created_at": snapshot.created_at or now,
            "last_used_at": snapshot.last_used_at or now,
            "size_bytes": str(snapshot.size_bytes),
            "image_hash": snapshot.image_hash,
            "spec": json.dumps(snapshot.spec, separators=(",", ":")),
            "fields": json.dumps(snapshot.fields, separators=(",", ":")),
        }
        args: list[str | float] = [snapshot.name, snapshot.last_used or _now_score(now)]
        for key, value in values.items():
            args += [key, value]
        keys = [self._keys.snapshot(snapshot.name), self._keys.snapshots]
        return bool(await self._save(keys=keys, args=args))

    async def get(self, name: str) -> Snapshot | None:
        values: dict[str, str] = await self._redis.hgetall(self._keys.snapshot(name))
        return Snapshot.from_hash(values)

    async def names(self) -> list[str]:
        found: list[str] = await self._redis.zrange(self._keys.snapshots, 0, -1)
        return found

    async def all(self) -> list[Snapshot]:
        names = await self.names()
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(self._keys.snapshot(name))
            values: list[dict[str, str]] = await pipe.execute()
        return [s for v in values if (s := Snapshot.from_hash(v)) is not None]

    async def touch(self, name: str, now: float) -> None:
        """A create started from it: its retention counts from now."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._keys.snapshot(name), "last_used_at", iso_from_unix(now))
            pipe.zadd(self._keys.snapshots, {name: now}, xx=True)
            await pipe.execute()

    async def delete(self, name: str) -> bool:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._keys.snapshot(name))
            pipe.zrem(self._keys.snapshots, name)
            deleted, _ = await pipe.execute()
        return bool(deleted)


def _now_score(now: str) -> float:
    return unix_or_none(now) or 0.0
