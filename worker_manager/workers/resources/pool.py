"""Warm pools (``WM_WARM_POOL``): containers started before any create asks for them.

Each shape (``CUSTOM``, ``CLAUDE+GIT``, ``CLAUDE+GIT@node20`` with an environment of the
catalogue) may keep some started, unassigned workers on this manager. A pooled container runs a
wrapper that waits for its assignment (``worker_base.assignment``): it has no Redis user, no
agent command, no instructions, and does nothing until a create takes it.

- **Take.** A create of a pooled shape that names no ``worker_id`` takes one: a Lua script pops
  an id from ``<prefix>:pool:<manager>:<shape>`` (a set: two creates never get the same one) and
  remembers it under the create's ``request_id``, so a redelivered create takes the same one.
  The worker's id is the pooled container's (its labels, name and environment carry it from the
  start). If the create is refused (capacity), the id goes back.
- **Hand-over** (the provisioner's, when the taken worker's create runs): the worker's Redis
  user is created, its instructions copied in, then its assignment (the create's whole wrapper
  environment, the create's ``env`` in it as data for the agent: the pooled wrapper, started
  isolated before any create, never makes it a variable of its own); from there it is a worker
  like any other: STARTING, then RUNNING at its first heartbeat.
- **Refill and repair** (``round``, supervised): the pool's containers are listed from Docker
  (label ``worker-manager.pool``); running unassigned ones missing from the set are adopted (a
  restarted manager, a Redis that lost its data), dead ones are removed, and each shape is
  filled back up to its count, at most ``WM_WARM_POOL_MAX`` pooled containers in all. A take
  wakes the round at once.

Pooled containers have no record, so they are never judged idle or lost, never in ``list``
or ``lifecycle``; the images they run are in use, so GC keeps them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

from redis.asyncio import Redis

from worker_manager.contract.kinds import Shape
from worker_manager.contract.labels import LABEL_POOL, LABEL_WORKER
from worker_manager.core.logs import get_logger
from worker_manager.core.outages import OUTAGE_ERRORS
from worker_manager.images.service import ImageService
from worker_manager.settings import Settings
from worker_manager.workers.resources.containers import ContainerRuntime, LaunchSpec
from worker_manager.workers.resources.containment import Containment, docker_socket
from worker_manager.workers.resources.environment import pool_env

log = get_logger(__name__)

#: How long a create's take is remembered (its redelivery takes the same worker).
TAKE_TTL_SECONDS = 86_400

# KEYS: pool take claimed-prefix   ARGV: ttl
_TAKE = """
local taken = redis.call('GET', KEYS[2])
if taken then return taken end
local id = redis.call('SPOP', KEYS[1])
if not id then return false end
redis.call('SET', KEYS[2], id, 'EX', ARGV[1])
redis.call('SET', KEYS[3] .. id, '1', 'EX', ARGV[1])
return id
"""

# Adopt running, unassigned containers into the set, atomically with the take's claim: an id
# taken between the round's look at Docker and this write must not go back into the pool.
# KEYS: pool   ARGV: claimed-prefix record-prefix id...
_ADOPT = """
local added = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  if redis.call('EXISTS', ARGV[1] .. id) == 0 and redis.call('EXISTS', ARGV[2] .. id) == 0 then
    added = added + redis.call('SADD', KEYS[1], id)
  end
end
return added
"""

Observe = Callable[[str, str], None]  # (shape, "take" | "miss")


class WarmPool:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        images: ImageService,
        containers: ContainerRuntime,
        containment: Containment,
        observe: Observe = lambda _shape, _what: None,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._images = images
        self._containers = containers
        self._containment = containment
        self._keys = settings.keys
        self._take = redis.register_script(_TAKE)
        self._adopt = redis.register_script(_ADOPT)
        self._starting: dict[str, int] = {}
        #: Containers this process is creating or starting right now: not dead, only young.
        self._launching: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Set by a take: the next round comes at once and starts the replacement.
        self.wake = asyncio.Event()
        #: Told of each take and miss (the manager passes its metrics').
        self._observe = observe
        self.ready: dict[str, int] = {}

    @property
    def enabled(self) -> bool:
        return any(count > 0 for count in self._settings.warm_pool.values())

    def _claimed(self) -> str:
        return f"{self._keys.prefix}:pool-claimed:{self._settings.manager_id}:"

    async def take(self, shape: Shape, request_id: str) -> str | None:
        """A ready worker of ``shape`` for this create, or None (no pool, or empty)."""
        name = str(shape)
        if self._settings.warm_pool.get(name, 0) <= 0:
            return None
        taken = await self._take(
            keys=[
                self._keys.pool(self._settings.manager_id, name),
                self._keys.pool_take(request_id),
                self._claimed(),
            ],
            args=[TAKE_TTL_SECONDS],
        )
        self._observe(name, "take" if taken else "miss")
        self.wake.set()
        return str(taken) if taken else None

    async def give_back(self, shape: Shape, worker_id: str, request_id: str) -> None:
        """A taken worker the create could not use (refused for capacity): ready again."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.sadd(self._keys.pool(self._settings.manager_id, str(shape)), worker_id)
            pipe.delete(self._keys.pool_take(request_id), self._claimed() + worker_id)
            await pipe.execute()

    async def round(self) -> None:
        """Repair and refill every pool once (the supervisor runs one per interval)."""
        if not self.enabled:
            return
        try:
            await self._repair_and_refill()
        except OUTAGE_ERRORS as exc:
            log.warning("warm pool round failed; retrying next round", error=str(exc))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _repair_and_refill(self) -> None:
        s, keys = self._settings, self._keys
        found = await self._containers.pooled()
        ids = [c["Labels"][LABEL_WORKER] for c in found]
        async with self._redis.pipeline(transaction=False) as pipe:
            for worker_id in ids:
                pipe.exists(keys.worker(worker_id))
                pipe.exists(self._claimed() + worker_id)
            flags = await pipe.execute()
        unassigned: dict[str, list[str]] = {}
        for i, container in enumerate(found):
            worker_id, shape = ids[i], container["Labels"].get(LABEL_POOL, "")
            if flags[2 * i] or flags[2 * i + 1] or worker_id in self._launching:
                continue  # taken (a worker like any other now), or still being started
            if container.get("State") != "running" or shape not in s.warm_pool:
                log.info("removing a pooled container", worker_id=worker_id, shape=shape)
                await self._containers.remove(worker_id)
                await self._containment.release(worker_id)
                await self._redis.srem(keys.pool(s.manager_id, shape), worker_id)
                continue
            unassigned.setdefault(shape, []).append(worker_id)
        total = sum(len(v) for v in unassigned.values()) + sum(self._starting.values())
        for shape, count in s.warm_pool.items():
            members = unassigned.get(shape, [])
            pool_key = keys.pool(s.manager_id, shape)
            # The set is exactly the running, unassigned containers (adopted after a restart or
            # a Redis that lost its data; dead ones dropped).
            listed: set[str] = await self._redis.smembers(pool_key)
            stale = [m for m in listed if m not in members]
            fresh = [m for m in members if m not in listed]
            if stale:
                await self._redis.srem(pool_key, *stale)
            if fresh:
                record_prefix = keys.worker("")
                await self._adopt(keys=[pool_key], args=[self._claimed(), record_prefix, *fresh])
            self.ready[shape] = len(members)
            missing = count - len(members) - self._starting.get(shape, 0)
            while missing > 0 and total < s.warm_pool_max:
                missing -= 1
                total += 1
                self._spawn(shape)

    def _spawn(self, shape: str) -> None:
        self._starting[shape] = self._starting.get(shape, 0) + 1
        task = asyncio.create_task(self._start_one(Shape.parse(shape)), name=f"pool-{shape}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_one(self, shape: Shape) -> None:
        name = str(shape)
        worker_id = str(uuid.uuid4())
        self._launching.add(worker_id)
        try:
            image = await self._images.ensure_shape(shape)
            sockets = await self._containment.admit(worker_id, None)
            await self._containers.launch(
                LaunchSpec(
                    worker_id=worker_id,
                    image_tag=image.tag,
                    image_hash=image.hash,
                    env=pool_env(self._settings, shape, worker_id),
                    files={},
                    docker_socket=docker_socket(self._settings, shape.modules),
                    extra_labels=((LABEL_POOL, name),),
                    sockets=sockets,
                )
            )
            await self._adopt(
                keys=[self._keys.pool(self._settings.manager_id, name)],
                args=[self._claimed(), self._keys.worker(""), worker_id],
            )
            log.info("pooled worker ready", shape=name, worker_id=worker_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next round tries again
            log.warning("starting a pooled worker failed", shape=name, error=str(exc)[:300])
        finally:
            self._starting[name] -= 1
            self._launching.discard(worker_id)
