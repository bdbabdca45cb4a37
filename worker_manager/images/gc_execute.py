"""The image collector: carries out a plan (``gc_plan``) under the cluster-wide GC lock.

Removals go children first, by image ID, never forced; an image used again while the run goes
(its ``last_used_at`` moved) is kept. Records: ``<prefix>:images`` (hash → last use) and
``<prefix>:image:<hash>``. A labelled image of ours with no record (Redis flushed, or built by a
manager that lost its record) is adopted with its creation time as last use; a record whose
image is gone is dropped. ``serve`` runs :func:`gc_loop`; ``worker-manager gc`` one run.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

import docker.errors
from docker import DockerClient
from redis.asyncio import Redis

from worker_manager.core import docker_client
from worker_manager.core.clock import iso_from_unix, iso_now
from worker_manager.core.keys import Keys
from worker_manager.core.locks import RenewedLock
from worker_manager.core.logs import get_logger
from worker_manager.images.gc_plan import Report, Row, plan_rows, read_engine, real_tags
from worker_manager.settings import Settings

log = get_logger(__name__)

#: Drop a record (and its image hash) only if no create touched it since the plan was made.
_FORGET = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) > tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
"""


class Collector:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        docker: DockerClient,
        *,
        prune_build_cache: bool | None = None,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._docker = docker
        self._keys = settings.keys
        self._prune_build_cache = (
            settings.gc_prune_build_cache if prune_build_cache is None else prune_build_cache
        )

    @property
    def last_run_key(self) -> str:
        return self._keys.gc_last_run

    async def plan(
        self, *, max_age_seconds: float | None = None, budget_bytes: int | None = None
    ) -> Report:
        max_age = max_age_seconds or self._settings.image_max_age_days * 86_400
        budget = (
            budget_bytes if budget_bytes is not None else self._settings.image_disk_budget_bytes
        )
        started = time.monotonic()
        records = {
            str(h): float(s)
            for h, s in await self._redis.zrange(self._keys.images, 0, -1, withscores=True)
        }
        # An image a snapshot needs counts as used now: a create from it runs that image.
        now = time.time()
        for image_hash in await self._snapshot_images():
            records[image_hash] = now
        engine = await docker_client.call(read_engine, self._docker)
        rows = plan_rows(
            records,
            engine,
            prefix=self._keys.fleet_prefix,
            max_age=max_age,
            budget=budget,
            now=time.time(),
        )
        report = Report(rows=rows, dry_run=True, max_age_seconds=max_age, budget_bytes=budget)
        report.prunes_build_cache = self._prune_build_cache
        report.seconds = time.monotonic() - started
        return report

    async def _snapshot_images(self) -> set[str]:
        """The images the snapshots' workers ran (``snapshots.store``: ``image_hash``), in
        the default namespace and every tenant's (``WM_TENANTS`` and the registry's names)."""
        tenants = set(self._settings.tenants) | {
            str(name) for name in await self._redis.hkeys(self._keys.tenants)
        }
        images: set[str] = set()
        fleet = Keys(self._keys.fleet_prefix)
        for keys in [fleet, *(fleet.for_tenant(t) for t in sorted(tenants))]:
            names = await self._redis.zrange(keys.snapshots, 0, -1)
            if not names:
                continue
            async with self._redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hget(keys.snapshot(str(name)), "image_hash")
                found = await pipe.execute()
            images |= {str(h) for h in found if h}
        return images

    async def run(
        self,
        *,
        dry_run: bool = False,
        max_age_seconds: float | None = None,
        budget_bytes: int | None = None,
    ) -> Report:
        """Plan, then (unless ``dry_run``) execute while holding the cluster-wide GC lock."""
        started = time.monotonic()
        if dry_run:
            report = await self.plan(max_age_seconds=max_age_seconds, budget_bytes=budget_bytes)
            report.seconds = time.monotonic() - started
            return report
        lock = RenewedLock(
            self._redis,
            self._keys.gc_lock,
            ttl_seconds=self._settings.gc_lock_ttl_seconds,
            owner=self._settings.manager_id,
        )
        if not await lock.acquire():
            busy = Report([], dry_run=False, max_age_seconds=0, budget_bytes=budget_bytes)
            busy.skipped = f"another collector holds the lock ({await lock.holder()})"
            return busy
        try:
            report = await self.plan(max_age_seconds=max_age_seconds, budget_bytes=budget_bytes)
            report.dry_run = False
            await self._execute(report, lock)
            await self._redis.set(self.last_run_key, str(time.time()))
        finally:
            await lock.release()
        report.seconds = time.monotonic() - started
        log.info(
            "image gc done",
            removed=len(report.removed),
            freed_bytes=report.freed_bytes,
            build_cache_bytes=report.build_cache_bytes,
            errors=len(report.errors),
            seconds=round(report.seconds, 2),
        )
        return report

    async def _execute(self, report: Report, lock: RenewedLock) -> None:
        engine_depth: dict[str, int] = {}
        parents = await docker_client.call(self._docker.api.images, all=True)
        parent_of = {str(i["Id"]): str(i.get("ParentId") or "") for i in parents}

        def depth(image_id: str) -> int:
            if image_id not in engine_depth:
                parent = parent_of.get(image_id, "")
                engine_depth[image_id] = 1 + depth(parent) if parent else 0
            return engine_depth[image_id]

        for row in report.rows:
            if row.adopted and row.action == "keep":
                await self._adopt(row)
        removals = [r for r in report.rows if r.action in ("remove", "untag")]
        removals.sort(key=lambda r: -depth(str(r.image_id)))  # children before parents
        for row in removals:
            if lock.lost.is_set():
                report.errors.append("gc lock lost: stopped before finishing")
                return
            if row.tag != "<none>":
                score = await self._redis.zscore(self._keys.images, row.hash)
                if score is not None and row.last_used is not None and score > row.last_used:
                    row.action, row.reason = "keep", "used again while gc ran"
                    continue
            try:
                if row.action == "untag":
                    await docker_client.call(self._docker.api.remove_image, row.tag)
                else:
                    await docker_client.call(self._remove_by_id, str(row.image_id))
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                row.action = "keep"
                row.reason = f"docker refused removal: {exc.explanation or exc}"
                report.errors.append(f"{row.tag}: {row.reason}")
                continue
            if row.action == "remove":
                report.freed_bytes += row.size
                report.removed.append(row.image_id or row.tag)
            if row.tag != "<none>":
                await self._forget(row)
        for row in report.rows:
            if row.action == "forget" and not await self._exists(row.tag):
                await self._forget(row)
        if self._prune_build_cache:
            report.build_cache_bytes = await self._prune_cache(report.max_age_seconds, report)

    def _remove_by_id(self, image_id: str) -> None:
        """Every tag goes: extra tags are removed first, so the removal by ID need not force."""
        image: dict[str, Any] = self._docker.images.get(image_id).attrs
        tags = real_tags(image)
        for tag in tags[1:]:
            self._docker.api.remove_image(tag)
        self._docker.api.remove_image(image_id, force=False, noprune=False)

    async def _exists(self, tag: str) -> bool:
        try:
            await docker_client.call(self._docker.api.inspect_image, tag)
        except docker.errors.ImageNotFound:
            return False
        return True

    async def _forget(self, row: Row) -> None:
        await self._redis.eval(
            _FORGET,
            2,
            self._keys.images,
            self._keys.image(row.hash),
            row.hash,
            str(row.last_used if row.last_used is not None else time.time()),
        )

    async def _adopt(self, row: Row) -> None:
        created = row.created or time.time()
        added = await self._redis.zadd(self._keys.images, {row.hash: int(created)}, nx=True)
        if added:
            await self._redis.hset(
                self._keys.image(row.hash),
                mapping={
                    "hash": row.hash,
                    "tag": row.tag,
                    "image_id": str(row.image_id),
                    "size": str(row.size),
                    "built_at": iso_from_unix(created),
                    "adopted_at": iso_now(),
                    "adopted_by": self._settings.manager_id,
                },
            )
            log.info("image adopted", tag=row.tag, created=iso_from_unix(created))

    async def _prune_cache(self, max_age: float, report: Report) -> int | None:
        """Build cache unused for longer than the maximum age (engines without it: skipped)."""
        try:
            result = await docker_client.call(
                self._docker.api.prune_builds, filters={"until": f"{int(max_age)}s"}
            )
        except (docker.errors.APIError, docker.errors.InvalidVersion) as exc:
            report.errors.append(f"build cache prune: {exc}")
            return None
        return int((result or {}).get("SpaceReclaimed") or 0)


def gc_loop(
    settings: Settings,
    redis: Redis,
    docker: DockerClient,
    observe: Callable[[int, int], None] = lambda _count, _bytes: None,
) -> Callable[[asyncio.Event], Coroutine[Any, Any, None]]:
    """The ``serve`` schedule: first run jittered (never at start-up), then every interval.

    Every manager runs the schedule; the lock makes runs exclusive and the last-run time makes a
    manager skip its turn when another one collected recently, so N managers still collect about
    once per interval.
    """
    collector = Collector(settings, redis, docker)

    async def loop(stop: asyncio.Event) -> None:
        delay = settings.gc_initial_delay_seconds + random.uniform(0, settings.gc_jitter_seconds)
        while not await _wait(stop, delay):
            delay = settings.gc_interval_seconds + random.uniform(0, settings.gc_jitter_seconds)
            try:
                last = await redis.get(collector.last_run_key)
                if last and time.time() - float(last) < settings.gc_interval_seconds / 2:
                    continue
                report = await collector.run()
                observe(len(report.removed), report.freed_bytes)
                if report.skipped:
                    log.info("image gc skipped", why=report.skipped)
            except Exception:
                log.exception("image gc failed; retrying at the next interval")

    return loop


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """True if ``stop`` was set within ``seconds``."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    return stop.is_set()
