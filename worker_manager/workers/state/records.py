"""The worker record (SPEC §3): hash, index, lifecycle stream, and the transitions between them.

Every status change is one Lua script, so the record, the live set used for capacity, the
``lifecycle`` stream and the worker's own output stream can never disagree, even when the manager
dies halfway through. Terminal records keep their data-plane streams for ``retention_seconds``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from redis.asyncio import Redis

from worker_manager.contract.kinds import LIVE_STATUSES, WorkerStatus
from worker_manager.contract.reasons import Moved, Reason, Slept, is_reason
from worker_manager.contract.record import WorkerRecord
from worker_manager.contract.tenants import Tenant
from worker_manager.core.clock import iso_now
from worker_manager.core.keys import Keys
from worker_manager.settings import Settings

_CREATE = """
local existing = redis.call('HMGET', KEYS[1], 'status', 'request_id')
if existing[1] then return {'exists', existing[1], existing[2] or ''} end
-- KEYS[9 .. 8+ARGV[10]]: this manager's live sets in the other namespaces it serves (its
-- capacity is the host's); then ARGV[12] keys: the tenant's live sets on every manager; then
-- ARGV[13] keys: this id's record in every other namespace (an id is the fleet's: the egress
-- service, a container's name and credentials are keyed by it).
local others = tonumber(ARGV[10])
local first_elsewhere = 9 + others + tonumber(ARGV[12])
for i = first_elsewhere, first_elsewhere + tonumber(ARGV[13]) - 1 do
  if redis.call('EXISTS', KEYS[i]) == 1 then return {'elsewhere', '', ''} end
end
local limit = tonumber(ARGV[3])
if limit > 0 then
  local live = redis.call('SCARD', KEYS[3])
  for i = 9, 8 + others do live = live + redis.call('SCARD', KEYS[i]) end
  if live >= limit then return {'capacity', 'manager', ''} end
end
-- KEYS[8] counts the live workers of one metadata.owner across managers; ARGV[9] its limit.
local owner_limit = tonumber(ARGV[9])
if owner_limit > 0 and redis.call('SCARD', KEYS[8]) >= owner_limit then
  return {'capacity', 'owner', ''}
end
local tenant_limit = tonumber(ARGV[11])
if tenant_limit > 0 then
  local live = 0
  for i = 9 + others, 8 + others + tonumber(ARGV[12]) do
    live = live + redis.call('SCARD', KEYS[i])
  end
  if live >= tenant_limit then return {'capacity', 'tenant', ''} end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 14))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
if owner_limit >= 0 then redis.call('SADD', KEYS[8], ARGV[1]) end
redis.call('SET', KEYS[5], ARGV[5])
if ARGV[6] ~= '' then redis.call('SET', KEYS[6], ARGV[6]) end
-- The wrapper's group exists from the start, so input sent while the worker starts waits for it.
redis.pcall('XGROUP', 'CREATE', KEYS[7], 'wrapper', '0', 'MKSTREAM')
-- 'created' is contract.reasons.Moved.CREATED.
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 'worker_id', ARGV[1], 'from', '',
  'to', 'STARTING', 'reason', 'created', 'timestamp', ARGV[7])
return {'created', 'STARTING', ARGV[8]}
"""

# KEYS: record lifecycle output prompt input spec heartbeat usage (the gateway's metering)
#       workspace (the wrapper's last summary)
# ARGV: to reason timestamp allowed_from lifecycle_maxlen output_maxlen live_prefix retention
#       owner_live_prefix suspended_prefix presence_prefix [field value ...]
# presence_prefix (not ''): only if the owning manager's presence key and the worker's heartbeat
# are both gone, checked here so that an owner back in between is never overruled (host_lost).
_TRANSITION = """
local cur = redis.call('HMGET', KEYS[1], 'status', 'manager_id', 'worker_id', 'owner')
local from = cur[1]
if not from then return {0, ''} end
local to = ARGV[1]
if from == to then return {0, from} end
if ARGV[4] ~= '' and not string.find(' ' .. ARGV[4] .. ' ', ' ' .. from .. ' ', 1, true) then
  return {0, from}
end
if ARGV[11] ~= '' and (redis.call('EXISTS', ARGV[11] .. (cur[2] or '')) == 1
    or redis.call('EXISTS', KEYS[7]) == 1) then
  return {0, from}
end
redis.call('HSET', KEYS[1], 'status', to)
if from == 'STARTING' then redis.call('HDEL', KEYS[1], 'progress') end
if #ARGV >= 12 then redis.call('HSET', KEYS[1], unpack(ARGV, 12)) end
local terminal = (to == 'STOPPED' or to == 'FAILED')
if terminal then
  redis.call('HSET', KEYS[1], 'reason', ARGV[2], 'stopped_at', ARGV[3])
  redis.call('SREM', ARGV[7] .. (cur[2] or ''), cur[3] or '')
  redis.call('SREM', ARGV[10] .. (cur[2] or ''), cur[3] or '')
  if cur[4] and cur[4] ~= '' then redis.call('SREM', ARGV[9] .. cur[4], cur[3] or '') end
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'worker_id', cur[3] or '',
  'from', from, 'to', to, 'reason', ARGV[2], 'timestamp', ARGV[3])
-- A key the worker (or an orchestrator) writes may be poisoned: a wrong type, or a stream whose
-- last id is the largest possible. A failed call in a script does not undo what came before it,
-- so calls on such keys are pcall'ed: their failure costs the worker its status event or its
-- first prompt, never a half-applied transition. DEL and EXPIRE cannot fail on a key's type;
-- the EXPIREs come last, so a stream the XADD creates gets its expiry too.
redis.pcall('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'type', 'status',
  'content', cjson.encode({worker_status = to, reason = ARGV[2]}),
  'timestamp', ARGV[3], 'input_id', '')
if to == 'RUNNING' then
  local prompt = redis.call('GET', KEYS[4])
  if prompt then
    local added = redis.pcall('XADD', KEYS[5], '*', 'type', 'prompt', 'content', prompt)
    if type(added) ~= 'table' or not added.err then redis.call('DEL', KEYS[4]) end
  end
end
if terminal then
  local keep = tonumber(ARGV[8])
  redis.call('DEL', KEYS[4], KEYS[6], KEYS[7], KEYS[9])
  redis.call('EXPIRE', KEYS[1], keep)
  redis.call('EXPIRE', KEYS[3], keep)
  redis.call('EXPIRE', KEYS[5], keep)
  redis.call('EXPIRE', KEYS[8], keep)
end
return {1, from}
"""

# What a STARTING worker is doing: on its record, and as a manager status event on its output.
# KEYS: record output   ARGV: progress content output_maxlen timestamp
_PROGRESS = """
if redis.call('HGET', KEYS[1], 'status') ~= 'STARTING' then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[1])
redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'type', 'status', 'content', ARGV[2],
  'timestamp', ARGV[4], 'input_id', '')
return 1
"""

# RUNNING -> SUSPENDED (SPEC §8): off the live set (no capacity), onto the suspended set when
# there is room, the heartbeat gone (a resume must not mistake the old one for a new one).
# KEYS: record lifecycle output heartbeat live suspended owner_live_prefix
# ARGV: reason timestamp lifecycle_maxlen output_maxlen max_suspended
_SUSPEND = """
local cur = redis.call('HMGET', KEYS[1], 'status', 'worker_id', 'owner')
if cur[1] ~= 'RUNNING' then return {'status', cur[1] or ''} end
-- KEYS[8..]: this manager's suspended sets in the other namespaces it serves (their volumes
-- are on the same host: WM_MAX_SUSPENDED is the host's).
local suspended = redis.call('SCARD', KEYS[6])
for i = 8, #KEYS do suspended = suspended + redis.call('SCARD', KEYS[i]) end
if suspended >= tonumber(ARGV[5]) then return {'capacity', cur[1]} end
redis.call('HSET', KEYS[1], 'status', 'SUSPENDED', 'reason', ARGV[1], 'suspended_at', ARGV[2])
redis.call('HDEL', KEYS[1], 'pool', 'ip_address')
redis.call('SREM', KEYS[5], cur[2])
redis.call('SADD', KEYS[6], cur[2])
if cur[3] and cur[3] ~= '' then redis.call('SREM', KEYS[7] .. cur[3], cur[2]) end
redis.call('DEL', KEYS[4])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'worker_id', cur[2], 'from', 'RUNNING',
  'to', 'SUSPENDED', 'reason', ARGV[1], 'timestamp', ARGV[2])
redis.pcall('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'type', 'status',
  'content', cjson.encode({worker_status = 'SUSPENDED', reason = ARGV[1]}),
  'timestamp', ARGV[2], 'input_id', '')
return {'suspended', 'RUNNING'}
"""

# SUSPENDED -> STARTING: back onto the live set when there is room (as a create claims it), the
# heartbeat gone: the suspended wrapper may have beaten once more while it stopped, after the
# suspend deleted it, and that beat must not pass for the new container's first.
# KEYS: record lifecycle output live suspended owner_live_prefix heartbeat
# ARGV: reason timestamp lifecycle_maxlen output_maxlen max_live
#       peers tenant_limit
# KEYS[8 .. 7+peers]: this manager's live sets in the other namespaces it serves (the host's
# capacity); the rest: the tenant's live sets on every manager (its max_workers, SPEC §11).
_RESUME = """
local cur = redis.call('HMGET', KEYS[1], 'status', 'worker_id', 'owner')
if cur[1] ~= 'SUSPENDED' then return {'status', cur[1] or ''} end
local limit = tonumber(ARGV[5])
local peers = tonumber(ARGV[6])
if limit > 0 then
  local live = redis.call('SCARD', KEYS[4])
  for i = 8, 7 + peers do live = live + redis.call('SCARD', KEYS[i]) end
  if live >= limit then return {'capacity', cur[1]} end
end
local tenant_limit = tonumber(ARGV[7])
if tenant_limit > 0 then
  local live = 0
  for i = 8 + peers, #KEYS do live = live + redis.call('SCARD', KEYS[i]) end
  if live >= tenant_limit then return {'quota', cur[1]} end
end
redis.call('HSET', KEYS[1], 'status', 'STARTING')
redis.call('HDEL', KEYS[1], 'reason', 'started_at', 'container_id', 'suspended_at')
redis.call('SREM', KEYS[5], cur[2])
redis.call('SADD', KEYS[4], cur[2])
if cur[3] and cur[3] ~= '' then redis.call('SADD', KEYS[6] .. cur[3], cur[2]) end
redis.call('DEL', KEYS[7])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'worker_id', cur[2], 'from',
  'SUSPENDED', 'to', 'STARTING', 'reason', ARGV[1], 'timestamp', ARGV[2])
redis.pcall('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'type', 'status',
  'content', cjson.encode({worker_status = 'STARTING', reason = ARGV[1]}),
  'timestamp', ARGV[2], 'input_id', '')
return {'resumed', 'SUSPENDED'}
"""

_UPDATE_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# A service's state in the record's ``services`` (JSON name -> state, SPEC §9), and, when the
# service ended while its worker ran, an ``error`` event on the worker's output naming it.
# KEYS: record output   ARGV: state status_required expected_state error output_maxlen timestamp
#   names...   (status_required / expected_state: '' for any; error: '' for no event)
_SERVICES = """
local cur = redis.call('HMGET', KEYS[1], 'status', 'services')
if not cur[1] then return 0 end
if ARGV[2] ~= '' and cur[1] ~= ARGV[2] then return 0 end
local states = {}
if cur[2] then
  local ok, decoded = pcall(cjson.decode, cur[2])
  if ok and type(decoded) == 'table' then states = decoded end
end
local changed = 0
for i = 7, #ARGV do
  local name = ARGV[i]
  if ARGV[3] == '' or states[name] == ARGV[3] then
    states[name] = ARGV[1]
    changed = changed + 1
  end
end
if changed == 0 then return 0 end
if next(states) == nil then
  redis.call('HSET', KEYS[1], 'services', '{}')
else
  redis.call('HSET', KEYS[1], 'services', cjson.encode(states))
end
if ARGV[4] ~= '' then
  redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'type', 'error', 'content', ARGV[4],
    'timestamp', ARGV[6], 'input_id', '')
end
return changed
"""


class CreateResult(StrEnum):
    """What the create script did."""

    CREATED = "created"
    EXISTS = "exists"  # a record with this id was there: nothing written
    CAPACITY = "capacity"  # a limit is reached: nothing written
    ELSEWHERE = "elsewhere"  # the id is a worker's in another namespace: nothing written


class Limit(StrEnum):
    """Which limit refused a create."""

    MANAGER = "manager"  # WM_MAX_WORKERS of this manager
    OWNER = "owner"  # WM_MAX_WORKERS_PER_OWNER of its metadata.owner
    TENANT = "tenant"  # its tenant's max_workers (SPEC §11)


@dataclass(frozen=True, slots=True)
class CreateOutcome:
    result: CreateResult
    #: CREATED: STARTING; EXISTS: the record's status (None if it is not one a manager writes).
    status: WorkerStatus | None = None
    #: EXISTS: the request that created it; CREATED: this one.
    request_id: str = ""
    #: CAPACITY: which limit.
    limit: Limit | None = None

    @classmethod
    def parse(cls, reply: Sequence[object]) -> CreateOutcome:
        """The create script's ``{result, status or limit, request_id}``."""
        result = CreateResult(_text(reply[0]))
        if result is CreateResult.CAPACITY:
            return cls(result, limit=Limit(_text(reply[1])))
        return cls(result, _status(reply[1]), _text(reply[2]))


class SleepResult(StrEnum):
    """What the suspend or resume script did."""

    SUSPENDED = "suspended"
    RESUMED = "resumed"
    CAPACITY = "capacity"  # no room (WM_MAX_SUSPENDED, or WM_MAX_WORKERS for a resume)
    QUOTA = "quota"  # a resume past its tenant's max_workers (SPEC §11)
    WRONG_STATUS = "status"  # not in the status it must be in: ``status`` says which it is


@dataclass(frozen=True, slots=True)
class SleepOutcome:
    result: SleepResult
    #: The status it was in (None: no record).
    status: WorkerStatus | None

    @classmethod
    def parse(cls, reply: Sequence[object]) -> SleepOutcome:
        """The suspend or resume script's ``{result, status}``."""
        return cls(SleepResult(_text(reply[0])), _status(reply[1]))


@dataclass(frozen=True, slots=True)
class Transition:
    changed: bool
    #: The status it was in (None: no record, or one a manager does not write).
    previous: WorkerStatus | None

    @classmethod
    def parse(cls, reply: Sequence[object]) -> Transition:
        """The transition script's ``{1 or 0, previous status}``."""
        return cls(int(_text(reply[0])) == 1, _status(reply[1]))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _status(value: object) -> WorkerStatus | None:
    text = _text(value) if value is not None else ""
    return WorkerStatus(text) if text in WorkerStatus._value2member_map_ else None


class WorkerStore:
    """Reads and writes worker records; the only code that changes a worker's status."""

    def __init__(
        self,
        redis: Redis,
        settings: Settings,
        *,
        tenant: Tenant | None = None,
        others: Callable[[], Sequence[Keys]] = tuple,
    ) -> None:
        """``tenant``: the namespace's tenant, whose ``max_workers`` a create counts across
        managers (SPEC §11); ``others``: the keys of the other namespaces this manager serves:
        its capacity (``WM_MAX_WORKERS``, ``WM_MAX_SUSPENDED``) is the host's whichever tenant
        fills it, and a new worker's id must not be in use in any of them."""
        self._redis = redis
        self._settings = settings
        self._keys = settings.keys
        self._others = others
        self.tenant = tenant
        self._salt: str | None = None
        self._create = redis.register_script(_CREATE)
        self._transition = redis.register_script(_TRANSITION)
        self._update = redis.register_script(_UPDATE_IF_EXISTS)
        self._progress = redis.register_script(_PROGRESS)
        self._suspend = redis.register_script(_SUSPEND)
        self._resume = redis.register_script(_RESUME)
        self._services = redis.register_script(_SERVICES)

    @property
    def live_key(self) -> str:
        return self._keys.live(self._settings.manager_id)

    @property
    def suspended_key(self) -> str:
        return self._keys.suspended(self._settings.manager_id)

    async def id_seed(self, request_id: str) -> str:
        """What a worker id is derived from (``uuid5``) when a create names none: the
        ``request_id`` in the default namespace, as always; in a tenant's, the tenant's salt
        and the ``request_id``, so that two tenants using one ``request_id`` get two workers
        and no tenant can compute another's ids (ids are the fleet's: ``create``).

        The salt is set once (``SET NX``) and read back on every use with the same command, so
        two managers creating it at once agree, and one lost with Redis's data is put back as
        this manager knew it rather than replaced (a redelivered create keeps its id)."""
        if not self._keys.fleet:
            return request_id
        mine = self._salt or secrets.token_hex(16)
        before = await self._redis.execute_command("SET", self._keys.id_salt, mine, "NX", "GET")
        self._salt = before if isinstance(before, str) and before else mine
        return f"{self._salt}\n{request_id}"

    def peer_live_sets(self) -> list[str]:
        """This manager's live sets in the other namespaces it serves."""
        return [keys.live(self._settings.manager_id) for keys in self._others()]

    async def host_live(self) -> int:
        """This manager's live workers in every namespace: what ``WM_MAX_WORKERS`` counts."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in (self.live_key, *self.peer_live_sets()):
                pipe.scard(key)
            counts = await pipe.execute()
        return sum(int(count) for count in counts)

    async def suspend(self, worker_id: str, reason: Slept) -> SleepOutcome:
        """RUNNING -> SUSPENDED, within ``WM_MAX_SUSPENDED``; the container is the caller's to
        remove (``Lifecycle.suspend``)."""
        keys = self._keys
        result = await self._suspend(
            keys=[
                keys.worker(worker_id),
                keys.lifecycle,
                keys.output(worker_id),
                keys.heartbeat(worker_id),
                self.live_key,
                self.suspended_key,
                keys.owner_live(""),
                *(other.suspended(self._settings.manager_id) for other in self._others()),
            ],
            args=[
                str(reason),
                iso_now(),
                self._settings.lifecycle_maxlen,
                self._settings.output_maxlen,
                self._settings.max_suspended,
            ],
        )
        return SleepOutcome.parse(result)

    async def resume(self, worker_id: str, reason: Moved) -> SleepOutcome:
        """SUSPENDED -> STARTING within ``WM_MAX_WORKERS`` and its tenant's ``max_workers``;
        the provisioner then starts it."""
        keys = self._keys
        peers = self.peer_live_sets()
        tenant_limit, tenant_sets = await self._tenant_sets()
        result = await self._resume(
            keys=[
                keys.worker(worker_id),
                keys.lifecycle,
                keys.output(worker_id),
                self.live_key,
                self.suspended_key,
                keys.owner_live(""),
                keys.heartbeat(worker_id),
                *peers,
                *tenant_sets,
            ],
            args=[
                str(reason),
                iso_now(),
                self._settings.lifecycle_maxlen,
                self._settings.output_maxlen,
                self._settings.max_workers,
                len(peers),
                tenant_limit,
            ],
        )
        return SleepOutcome.parse(result)

    async def exists(self, key: str) -> bool:
        return bool(await self._redis.exists(key))

    async def suspended_ids(self) -> list[str]:
        members: set[str] = await self._redis.smembers(self.suspended_key)
        return sorted(members)

    async def create(
        self,
        worker_id: str,
        *,
        request_id: str,
        fields: dict[str, str],
        spec: dict[str, Any],
        prompt: str | None,
        max_live: int,
        owner: str = "",
        max_per_owner: int | None = None,
    ) -> CreateOutcome:
        """Claim a capacity slot and write the record in one step, so concurrent creates never
        overshoot ``max_live`` (this manager) or ``max_per_owner`` (one ``metadata.owner``)."""
        now = time.time()
        timestamp = iso_now()
        record = {
            "worker_id": worker_id,
            "status": WorkerStatus.STARTING.value,
            "created_at": timestamp,
            "manager_id": self._settings.manager_id,
            "request_id": request_id,
            **({"owner": owner} if owner else {}),
            **fields,
        }
        flat = [item for pair in record.items() for item in pair]
        keys = self._keys
        # -1: no owner to count; 0: counted without a limit; n: at most n live.
        owner_limit = -1 if not owner else (max_per_owner or 0)
        peers = self.peer_live_sets()
        tenant_limit, tenant_sets = await self._tenant_sets()
        elsewhere = [keys.worker(worker_id) for keys in self._others()]
        result = await self._create(
            keys=[
                keys.worker(worker_id),
                keys.index,
                self.live_key,
                keys.lifecycle,
                keys.spec(worker_id),
                keys.prompt(worker_id),
                keys.input(worker_id),
                keys.owner_live(owner),
                *peers,
                *tenant_sets,
                *elsewhere,
            ],
            args=[
                worker_id,
                int(now * 1000),
                max_live,
                self._settings.lifecycle_maxlen,
                json.dumps(spec, separators=(",", ":")),
                prompt or "",
                timestamp,
                request_id,
                owner_limit,
                len(peers),
                tenant_limit,
                len(tenant_sets),
                len(elsewhere),
                *flat,
            ],
        )
        return CreateOutcome.parse(result)

    async def _tenant_sets(self) -> tuple[int, list[str]]:
        """The tenant's ``max_workers`` (0: none) and its live sets on every announced manager
        (a manager that announces itself meanwhile has no worker of it yet)."""
        quota = self.tenant.quota.max_workers if self.tenant is not None else None
        if not quota:
            return 0, []
        managers: set[str] = await self._redis.smembers(self._keys.managers)
        ids = sorted(managers | {self._settings.manager_id})
        return quota, [self._keys.live(manager_id) for manager_id in ids]

    async def transition(
        self,
        worker_id: str,
        to: WorkerStatus,
        reason: Reason,
        *,
        allowed_from: Sequence[WorkerStatus] = LIVE_STATUSES,
        fields: Mapping[str, str] | None = None,
        only_if_owner_gone: bool = False,
    ) -> Transition:
        """Move the worker to ``to`` if its status is one of ``allowed_from``. Only
        :class:`~worker_manager.workers.transitions.lifecycle.Lifecycle` ends workers; the watcher
        moves STARTING to RUNNING.

        ``only_if_owner_gone``: and only while neither its manager's presence key nor its
        heartbeat exists, both checked in the same script (another manager's verdict).

        ``reason`` must be one that leads to ``to`` (``contract.reasons``): the record, the
        lifecycle entry and the evidence then agree on what happened and who did it."""
        if not is_reason(reason):
            raise TypeError(f"a reason of contract.reasons, not {reason!r}")
        if reason.status is not to:
            raise ValueError(f"reason {str(reason)!r} leads to {reason.status}, not {to}")
        keys = self._keys
        flat = [item for pair in (fields or {}).items() for item in pair]
        result = await self._transition(
            keys=[
                keys.worker(worker_id),
                keys.lifecycle,
                keys.output(worker_id),
                keys.prompt(worker_id),
                keys.input(worker_id),
                keys.spec(worker_id),
                keys.heartbeat(worker_id),
                keys.usage(worker_id),
                keys.workspace(worker_id),
            ],
            args=[
                to.value,
                str(reason),
                iso_now(),
                " ".join(allowed_from),
                self._settings.lifecycle_maxlen,
                self._settings.output_maxlen,
                keys.live(""),
                self._settings.retention_seconds,
                keys.owner_live(""),
                keys.suspended(""),
                keys.manager("") if only_if_owner_gone else "",
                *flat,
            ],
        )
        return Transition.parse(result)

    async def update(self, worker_id: str, fields: dict[str, str]) -> bool:
        """Set fields on an existing record; never resurrects a record that expired."""
        if not fields:
            return True
        flat = [item for pair in fields.items() for item in pair]
        return bool(await self._update(keys=[self._keys.worker(worker_id)], args=flat))

    async def progress(self, worker_id: str, text: str) -> bool:
        """Say what a STARTING worker is doing (``building 3/9``): in its record's ``progress``
        and as a ``status`` event on its output; nothing once it is no longer STARTING."""
        content = json.dumps({"worker_status": "STARTING", "progress": text})
        keys = [self._keys.worker(worker_id), self._keys.output(worker_id)]
        args = [text, content, self._settings.output_maxlen, iso_now()]
        return bool(await self._progress(keys=keys, args=args))

    async def service_states(
        self,
        worker_id: str,
        names: list[str],
        state: str,
        *,
        only_while: WorkerStatus | None = None,
        only_from: str = "",
        error: str = "",
    ) -> bool:
        """Set the state of some of the worker's services in its record's ``services``;
        ``only_while`` its status is that, ``only_from`` each one's state was that; ``error``:
        also say so on its output (an ``error`` event). False when nothing was written."""
        if not names:
            return False
        keys = [self._keys.worker(worker_id), self._keys.output(worker_id)]
        args = [
            state,
            only_while.value if only_while is not None else "",
            only_from,
            error,
            self._settings.output_maxlen,
            iso_now(),
            *names,
        ]
        return bool(await self._services(keys=keys, args=args))

    async def field(self, worker_id: str, name: str) -> str | None:
        value: str | None = await self._redis.hget(self._keys.worker(worker_id), name)
        return value

    async def get(self, worker_id: str) -> WorkerRecord | None:
        values: dict[str, str] = await self._redis.hgetall(self._keys.worker(worker_id))
        return WorkerRecord.from_hash(worker_id, values)

    async def get_many(self, ids: list[str]) -> dict[str, WorkerRecord | None]:
        """Several records in one round trip."""
        if not ids:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for worker_id in ids:
                pipe.hgetall(self._keys.worker(worker_id))
            values: list[dict[str, str]] = await pipe.execute()
        return {w: WorkerRecord.from_hash(w, v) for w, v in zip(ids, values, strict=True)}

    async def spec(self, worker_id: str) -> dict[str, Any] | None:
        text = await self._redis.get(self._keys.spec(worker_id))
        return json.loads(text) if text else None

    async def list_page(
        self, cursor: tuple[int, str] | None, limit: int
    ) -> tuple[list[WorkerRecord], tuple[int, str] | None]:
        """Newest first: up to ``limit`` records after ``cursor`` (creation time in ms and
        worker id of the previous page's last one), and the next page's cursor (None: this was
        the last). Index entries whose record expired are pruned on the way."""
        index = self._keys.index
        found: list[tuple[str, int]] = []
        offset = 0
        top: int | str = "+inf" if cursor is None else cursor[0]
        while len(found) <= limit:
            want = limit + 1 - len(found) + 16
            rows = await self._redis.zrevrangebyscore(
                index, top, "-inf", start=offset, num=want, withscores=True
            )
            offset += len(rows)
            for member, score in rows:
                # Equal scores come in reverse order of id: those up to the cursor were shown.
                if cursor is not None and int(score) == cursor[0] and member >= cursor[1]:
                    continue
                found.append((member, int(score)))
            if len(rows) < want:
                break
        more = len(found) > limit
        found = found[:limit]
        if not found:
            return [], None
        async with self._redis.pipeline(transaction=False) as pipe:
            for worker_id, _score in found:
                pipe.hgetall(self._keys.worker(worker_id))
            records: list[dict[str, str]] = await pipe.execute()
        gone = [wid for (wid, _s), rec in zip(found, records, strict=True) if not rec]
        if gone:
            await self._redis.zrem(index, *gone)
        last_id, last_score = found[-1]
        page = [
            WorkerRecord.from_hash(worker_id, values)
            for (worker_id, _score), values in zip(found, records, strict=True)
        ]
        return [rec for rec in page if rec is not None], (last_score, last_id) if more else None

    async def live_ids(self) -> list[str]:
        members: set[str] = await self._redis.smembers(self.live_key)
        return sorted(members)
