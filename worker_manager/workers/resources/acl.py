"""One Redis ACL user per worker (SPEC §4): it may read and ack only its input stream, append only
to its output stream and set only its heartbeat key.

The password is derived (HMAC-SHA256 of the worker id under ``WM_WORKER_SECRET``), so the manager
can re-create a user after a Redis restart without ever storing a password in Redis. Without a
configured secret a random one is drawn per process (users then cannot be re-created by another
process; set ``WM_WORKER_SECRET`` in production).
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import quote, urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from worker_base.redis_urls import database_of, is_sentinel_url, parse_sentinel_url
from worker_manager.core.keys import Keys
from worker_manager.core.logs import get_logger
from worker_manager.settings import Settings
from worker_manager.workers.resources.containment import contained, contained_redis_url

log = get_logger(__name__)

#: Commands a wrapper needs, and nothing else (connection set-up included). No CLIENT SETNAME:
#: a worker must not be able to dress its connection up as the manager's. Nor HELLO, whose
#: SETNAME would do the same; but Redis runs AUTH and HELLO for every user whatever its rules
#: say (``-hello`` is accepted and changes nothing), so the rule cannot be written here: the
#: wrapper speaks RESP2 and never sends HELLO, and the egress service's Redis relay, a contained
#: worker's only way to Redis, refuses it (:mod:`worker_manager.egress.redis_relay`).
WRAPPER_COMMANDS = (
    "+ping",
    "+auth",
    "+echo",
    "+client|getname",
    "+client|id",
    "+xreadgroup",
    "+xack",
    "+xadd",
    "+set",
    "+xgroup|create",
)
#: What a team's wrapper may do on its board (SPEC §12), in a selector of its own.
BOARD_COMMANDS = ("+xadd", "+xrange", "+xrevrange", "+xread")
#: Rules only newer servers know (CLIENT SETINFO is Redis >= 7.2); dropped where refused.
OPTIONAL_COMMANDS = ("+client|setinfo",)


class WorkerAcl:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings
        self._keys = settings.keys
        self._secret = settings.worker_secret.get_secret_value().encode()
        self._optional = list(OPTIONAL_COMMANDS)

    @property
    def enabled(self) -> bool:
        return self._settings.worker_acl

    def password(self, worker_id: str) -> str:
        return hmac.new(self._secret, worker_id.encode(), hashlib.sha256).hexdigest()

    def rules(self, worker_id: str, team: str = "") -> list[str]:
        """The worker's rights; with a team, a selector for its board (append and read that one
        stream, nothing else on it) and one to read its members' changed files (SPEC §12)."""
        keys = self._keys
        board = (
            [
                f"(~{keys.team_board(team)} {' '.join(BOARD_COMMANDS)})",
                f"(%R~{keys.team_changes(team)} +hgetall)",
            ]
            if team
            else []
        )
        return [
            "reset",
            "on",
            f">{self.password(worker_id)}",
            "resetchannels",
            "-@all",
            *WRAPPER_COMMANDS,
            *self._optional,
            f"%RW~{keys.input(worker_id)}",
            f"%W~{keys.output(worker_id)}",
            f"%W~{keys.heartbeat(worker_id)}",
            f"%W~{keys.workspace(worker_id)}",
            *board,
        ]

    async def create(self, worker_id: str) -> None:
        """The worker's user, as its record says it is (its team, read here: one owner for
        the rule, whoever makes the user again after Redis lost it)."""
        if not self.enabled:
            return
        team = str(await self._redis.hget(self._keys.worker(worker_id), "team") or "")
        while True:
            try:
                await self._redis.execute_command(
                    "ACL", "SETUSER", self._keys.acl_user(worker_id), *self.rules(worker_id, team)
                )
                return
            except ResponseError as exc:
                # Concurrent creates may hit the same refusal: the first one drops the rule.
                refused = [rule for rule in OPTIONAL_COMMANDS if f"'{rule}'" in str(exc)]
                if not refused:
                    raise
                if refused[0] in self._optional:
                    self._optional.remove(refused[0])

    async def delete(self, worker_id: str) -> None:
        """Remove the user; Redis closes its open connections with it."""
        if self.enabled:
            await self._redis.execute_command("ACL", "DELUSER", self._keys.acl_user(worker_id))

    async def exists(self, worker_id: str) -> bool:
        try:
            return bool(
                await self._redis.execute_command("ACL", "GETUSER", self._keys.acl_user(worker_id))
            )
        except ResponseError:
            return False

    def worker_url(self, worker_id: str) -> str:
        """The URL a worker container connects with: its own user, when ACLs are on."""
        base = self._settings.resolved_worker_redis_url()
        if contained(self._settings):
            db = database_of(self._settings.redis_url)
            # Without ACLs the workers share the URL's own credentials (unsafe, documented).
            netloc = urlsplit(base).netloc.rpartition("@")[0] + "@" if "@" in base else ""
            if self.enabled:
                user, password = self._keys.acl_user(worker_id), self.password(worker_id)
                netloc = f"{quote(user, safe='')}:{password}@"
            return contained_redis_url(netloc, f"db={db}" if db else "")
        if not self.enabled:
            return base
        user, password = self._keys.acl_user(worker_id), self.password(worker_id)
        if is_sentinel_url(base):  # the sentinels are asked anonymously; the primary as the user
            return parse_sentinel_url(base).with_credentials(user, password).render()
        parts = urlsplit(base)
        host = parts.hostname or "localhost"
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{quote(user, safe='')}:{password}@{host}" + (
            f":{parts.port}" if parts.port else ""
        )
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    async def check_admin(self) -> None:
        """Fail loudly at start when the manager cannot manage users (and ACLs are on)."""
        if not self.enabled:
            log.warning(
                "WORKER ACLs ARE OFF: every worker shares the manager's Redis credentials and "
                "can read other workers' streams and push commands (WM_WORKER_ACL=false)"
            )
            return
        await self._redis.execute_command("ACL", "WHOAMI")
        try:
            default = await self._redis.acl_getuser("default")
        except ResponseError as exc:
            raise RuntimeError(
                "the manager's Redis user lacks the ACL admin right (+acl); grant it, or set "
                "WM_WORKER_ACL=false to share one connection (unsafe)"
            ) from exc
        if default_user_is_open(default):
            log.error(
                "REDIS'S DEFAULT USER HAS NO PASSWORD: any worker can `AUTH default <anything>` "
                "and read every stream, per-worker ACLs notwithstanding. Give it a password "
                "(requirepass) or turn it off (ACL SETUSER default off) and connect the manager "
                "as its own user"
            )


def default_user_is_open(user: object) -> bool:
    """Whether ``ACL GETUSER default`` describes a user anyone can log in as."""
    if not isinstance(user, dict):
        return False
    flags = [str(flag) for flag in user.get("flags") or []]
    return "on" in flags and "nopass" in flags


#: One hex digit of a worker id (ids are lower-case UUIDs: ``contract.commands``).
_HEX = "[0-9a-f]"
#: A worker id in a key pattern: a UUID, 36 characters (so ``<prefix>:<id>`` is a record and
#: nothing longer, such as ``<prefix>:<id>:spec``, which holds a create's ``env``), written with
#: character classes, not ``?``: a ``?`` also matches ``:``, and ``worker:`` followed by any 36
#: characters would take in a tenant's keys (``worker:t:<25 characters>:commands``).
ANY_WORKER = "-".join(_HEX * n for n in (8, 4, 4, 4, 12))


def read_rules(keys: Keys) -> list[str]:
    """What every access user may read (SPEC §11): the records, the index, the lifecycle, the
    workers' outputs, the teams' boards and changed files (SPEC §12); never a command stream,
    another's replies, an input (prompts), a saved create (its ``env``), a heartbeat or a fleet
    key."""
    prefix = keys.prefix
    return [
        f"%R~{prefix}:{ANY_WORKER}",
        f"%R~{keys.index}",
        f"%R~{keys.lifecycle}",
        f"%R~{prefix}:{ANY_WORKER}:output",
        f"%R~{keys.team_board('*')}",
        f"%R~{keys.team_changes('*')}",
    ]


#: What a reader runs: read records and streams, and set up its connection; nothing that
#: writes, lists keys or administers.
READER_COMMANDS = (
    "+xread",
    "+xrange",
    "+xrevrange",
    "+xlen",
    "+hgetall",
    "+hget",
    "+hmget",
    "+zrange",
    "+zrevrange",
    "+zcard",
    "+exists",
    "+ping",
    "+hello",
    "+auth",
    "+select",
    "+client|setname",
)


def viewer_rules(keys: Keys) -> list[str]:
    """A viewer (``worker-manager access add NAME --role viewer``): reads, writes nothing."""
    return ["resetkeys", "resetchannels", *read_rules(keys), "-@all", *READER_COMMANDS]


def producer_rules(keys: Keys, producer: str) -> list[str]:
    """A registered producer's own Redis user: it may write only its command stream, read and
    remove only its reply streams, append to workers' inputs and read what a viewer reads. The
    data plane has no owner in its key names, so inputs and outputs are every worker's: a
    producer can drive any worker, not only its own (tenants separate that, SPEC §11)."""
    prefix = keys.prefix
    return [
        "resetkeys",
        "resetchannels",
        f"%W~{keys.producer_commands(producer)}",
        f"%RW~{keys.producer_replies(producer)}*",
        f"%W~{prefix}:{ANY_WORKER}:input",
        *read_rules(keys),
        "-@all",
        *READER_COMMANDS,
        "+xadd",
        "+del",
    ]


def tenant_producer_rules(keys: Keys) -> list[str]:
    """A tenant's producer (``access add NAME --tenant T --role producer``, SPEC §11): it may
    append to its tenant's command stream and its workers' inputs, read and remove its tenant's
    replies, and read what a viewer of the tenant reads; no other tenant's key matches these
    patterns (every one starts with ``<prefix>:t:<tenant>:``), nor does a fleet key."""
    return [
        "resetkeys",
        "resetchannels",
        f"%W~{keys.commands}",
        f"%RW~{keys.replies}*",
        f"%W~{keys.prefix}:{ANY_WORKER}:input",
        *read_rules(keys),
        "-@all",
        *READER_COMMANDS,
        "+xadd",
        "+del",
    ]
