"""A credential for one worker (SPEC §11 ``grant``): a Redis ACL user that Redis itself confines.

A ``read`` grant's user may read that worker's record and its output stream; ``drive`` may also
append to its input stream; nothing else (no other key, no administrative command). Its
password is drawn at random and given once, in the grant's reply; nothing here keeps it. Every
grant's user is kept in ``<prefix>:grants`` (scored by its expiry) and in its worker's set, so it
goes at its expiry (:meth:`WorkerGrants.expire`, a loop of the manager) or with its worker
(:meth:`WorkerGrants.revoke_worker`, called by the lifecycle), whichever comes first; Redis
closes its connections when the user is deleted.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Literal

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from worker_manager.core.clock import iso_from_unix
from worker_manager.core.keys import Keys
from worker_manager.core.logs import get_logger

log = get_logger(__name__)

Access = Literal["read", "drive"]
#: What a client needs to connect (redis-py names its connection; Redis >= 7.2 asks its
#: library's name) and to read a record and a stream, follow it, and, driving, append to one.
READ_COMMANDS = (
    "+ping",
    "+auth",
    "+hello",
    "+client|setname",
    "+client|getname",
    "+select",
    "+hgetall",
    "+hget",
    "+hmget",
    "+xread",
    "+xrange",
    "+xrevrange",
    "+xlen",
)
OPTIONAL_COMMANDS = ("+client|setinfo",)


@dataclass(frozen=True, slots=True)
class Minted:
    username: str
    password: str
    expires_at: float

    @property
    def expires_iso(self) -> str:
        return iso_from_unix(self.expires_at)


def grant_user(keys: Keys) -> str:
    """A new grant's Redis user name (never a worker's: ``<prefix>-grant-<random>``)."""
    return f"{keys.prefix}-grant-{secrets.token_hex(8)}"


def grant_rules(keys: Keys, worker_id: str, access: Access, password: str) -> list[str]:
    """Exactly what the grant allows (module docstring)."""
    rules = [
        "reset",
        "on",
        f">{password}",
        "resetchannels",
        "-@all",
        *READ_COMMANDS,
        f"%R~{keys.worker(worker_id)}",
        f"%R~{keys.output(worker_id)}",
    ]
    if access == "drive":
        rules += ["+xadd", f"%W~{keys.input(worker_id)}"]
    return rules


class WorkerGrants:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._optional = list(OPTIONAL_COMMANDS)

    async def mint(self, worker_id: str, access: Access, ttl_seconds: int) -> Minted:
        username = grant_user(self._keys)
        password = secrets.token_urlsafe(24)
        expires = time.time() + ttl_seconds
        # Registered before the user exists: a crash in between leaves a name the expiry loop
        # deletes, never a user nothing would delete.
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(self._keys.grants, {username: expires})
            pipe.sadd(self._keys.worker_grants(worker_id), username)
            await pipe.execute()
        rules = grant_rules(self._keys, worker_id, access, password)
        while True:
            try:
                await self._redis.execute_command(
                    "ACL", "SETUSER", username, *rules, *self._optional
                )
                break
            except ResponseError as exc:
                refused = [r for r in self._optional if f"'{r}'" in str(exc)]
                if not refused:
                    raise
                self._optional.remove(refused[0])
        log.info("grant minted", worker_id=worker_id, access=access, user=username)
        return Minted(username, password, expires)

    async def revoke_worker(self, worker_id: str) -> int:
        """Every grant of the worker (it is deleted): their users go, and their connections."""
        key = self._keys.worker_grants(worker_id)
        users = list(await self._redis.smembers(key))
        for user in users:
            await self._delete(str(user))
        await self._redis.delete(key)
        return len(users)

    async def expire(self, now: float | None = None) -> int:
        """The grants whose time is up."""
        due = await self._redis.zrangebyscore(self._keys.grants, "-inf", now or time.time())
        for user in due:
            await self._delete(str(user))
        return len(due)

    async def _delete(self, user: str) -> None:
        await self._redis.execute_command("ACL", "DELUSER", user)
        await self._redis.zrem(self._keys.grants, user)
