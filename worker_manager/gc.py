"""The image collector: keeps worker images and build cache within an age and a disk budget.

A run is a *plan* (one row per image with the action and why), then, unless it is a dry run,
its *execution* under a cluster-wide lock. The plan is computed from three Docker listings and
one Redis read, so it costs the same for ten images or a thousand records.

Whose images: a deployment (one key prefix) only ever removes images labelled with its prefix
(``worker-manager.key_prefix``; images built before that label existed count as the default
prefix's). Two deployments sharing one Docker Engine therefore never delete each other's images,
even when both use the same shape: the non-owner's use only shows in its own Redis. Any image a
container uses (running or stopped) is kept, whoever owns it, and removals are never forced.

Records: ``<prefix>:images`` (hash → last use) and ``<prefix>:image:<hash>``. A labelled image
of ours with no record (Redis flushed, or built by a manager that lost its record) is adopted
with its creation time as last use; a record whose image is gone is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import docker.errors
from docker import DockerClient
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from worker_manager import docker_client
from worker_manager.clock import iso_from_unix, iso_now
from worker_manager.config import Settings
from worker_manager.images import LABEL_HASH, LABEL_PREFIX
from worker_manager.locks import RenewedLock
from worker_manager.logs import get_logger

log = get_logger(__name__)

DEFAULT_PREFIX = "worker"
Action = Literal["keep", "remove", "untag", "forget"]

#: Drop a record (and its image hash) only if no create touched it since the plan was made.
_FORGET = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) > tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
"""


@dataclass(slots=True)
class Row:
    """One image (or one record without an image) and what the collector does with it."""

    hash: str
    tag: str
    image_id: str | None
    size: int  # bytes this image adds beyond the parent it shares with others
    last_used: float | None
    action: Action
    reason: str
    adopted: bool = False
    created: float | None = None

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["last_used_at"] = iso_from_unix(self.last_used) if self.last_used else None
        return data


@dataclass(slots=True)
class Report:
    rows: list[Row]
    dry_run: bool
    max_age_seconds: float
    budget_bytes: int | None
    started_at: str = field(default_factory=iso_now)
    seconds: float = 0.0
    skipped: str | None = None  # why nothing ran (another collector holds the lock)
    freed_bytes: int = 0
    removed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    build_cache_bytes: int | None = None
    prunes_build_cache: bool = False

    def planned_bytes(self) -> int:
        return sum(r.size for r in self.rows if r.action == "remove")

    def as_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "started_at": self.started_at,
            "seconds": round(self.seconds, 3),
            "skipped": self.skipped,
            "max_age_seconds": self.max_age_seconds,
            "budget_bytes": self.budget_bytes,
            "planned_bytes": self.planned_bytes(),
            "freed_bytes": self.freed_bytes,
            "build_cache_bytes": self.build_cache_bytes,
            "removed": self.removed,
            "errors": self.errors,
            "images": [r.as_json() for r in self.rows],
        }


def owned_by(labels: dict[str, str] | None, prefix: str) -> bool:
    label = (labels or {}).get(LABEL_PREFIX)
    return label == prefix if label is not None else prefix == DEFAULT_PREFIX


def _age(seconds: float) -> str:
    if seconds >= 86_400:
        return f"{seconds / 86_400:.1f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{max(seconds, 0) / 60:.0f} min"


@dataclass(slots=True)
class _Engine:
    """What Docker says, fetched once per plan."""

    labelled: list[dict[str, Any]]
    parents: dict[str, str]
    children: dict[str, int]
    sizes: dict[str, int]
    tagged: set[str]
    used_by: dict[str, list[str]]

    def unique_size(self, image_id: str, removing: set[str]) -> int:
        """Size minus that of the first ancestor that stays (a shared parent is not freed)."""
        parent = self.parents.get(image_id, "")
        while parent:
            stays = (
                parent not in removing
                and (parent in self.tagged or self.children.get(parent, 0) > 1)
            ) or parent in self.used_by
            if stays:
                return max(self.sizes.get(image_id, 0) - self.sizes.get(parent, 0), 0)
            parent = self.parents.get(parent, "")
        return self.sizes.get(image_id, 0)

    def ancestors(self, image_id: str) -> Iterable[str]:
        parent = self.parents.get(image_id, "")
        while parent:
            yield parent
            parent = self.parents.get(parent, "")


def _read_engine(client: DockerClient) -> _Engine:
    api = client.api
    labelled = api.images(filters={"label": LABEL_HASH})
    everything = api.images(all=True)
    parents = {str(i["Id"]): str(i.get("ParentId") or "") for i in everything}
    children: dict[str, int] = {}
    for parent in parents.values():
        if parent:
            children[parent] = children.get(parent, 0) + 1
    used_by: dict[str, list[str]] = {}
    for container in api.containers(all=True):
        names = container.get("Names") or [str(container.get("Id", ""))[:12]]
        used_by.setdefault(str(container.get("ImageID", "")), []).append(names[0].lstrip("/"))
    return _Engine(
        labelled=labelled,
        parents=parents,
        children=children,
        sizes={str(i["Id"]): int(i.get("Size") or 0) for i in everything},
        tagged={str(i["Id"]) for i in everything if _real_tags(i)},
        used_by=used_by,
    )


def _real_tags(image: dict[str, Any]) -> list[str]:
    return [t for t in image.get("RepoTags") or [] if t != "<none>:<none>"]


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
        engine = await docker_client.call(_read_engine, self._docker)
        rows = self._decide(records, engine, max_age, budget, now=time.time())
        report = Report(rows=rows, dry_run=True, max_age_seconds=max_age, budget_bytes=budget)
        report.prunes_build_cache = self._prune_build_cache
        report.seconds = time.monotonic() - started
        return report

    def _decide(
        self,
        records: dict[str, float],
        engine: _Engine,
        max_age: float,
        budget: int | None,
        *,
        now: float,
    ) -> list[Row]:
        prefix = self._keys.prefix
        cutoff = now - max_age
        by_tag: dict[str, dict[str, Any]] = {}
        dangling: list[dict[str, Any]] = []
        for labelled in engine.labelled:
            tags = _real_tags(labelled)
            if not tags:
                dangling.append(labelled)
            for tag in tags:
                by_tag[tag] = labelled
        rows: list[Row] = []
        hashes = set(records)
        for labelled in engine.labelled:
            image_hash = str((labelled.get("Labels") or {}).get(LABEL_HASH, ""))
            if owned_by(labelled.get("Labels"), prefix) and f"worker:{image_hash}" in by_tag:
                hashes.add(image_hash)
        for image_hash in sorted(hashes):
            tag = f"worker:{image_hash}"
            image = by_tag.get(tag)
            last_used = records.get(image_hash)
            if image is None:
                rows.append(
                    Row(
                        image_hash,
                        tag,
                        None,
                        0,
                        last_used,
                        "forget",
                        "image no longer exists: record dropped",
                    )
                )
                continue
            image_id = str(image["Id"])
            created = float(image.get("Created") or 0)
            adopted = last_used is None
            if last_used is None:
                last_used = created
            row = Row(image_hash, tag, image_id, 0, last_used, "keep", "", adopted, created)
            note = " (adopted: no record; last use = creation)" if adopted else ""
            if not owned_by(image.get("Labels"), prefix):
                owner = (image.get("Labels") or {}).get(LABEL_PREFIX, DEFAULT_PREFIX)
                row.reason = f"built by deployment {owner!r}: left to its collector"
                row.adopted = False
            elif image_id in engine.used_by:
                users = engine.used_by[image_id]
                row.reason = f"in use by {len(users)} container(s): {', '.join(users[:3])}" + note
            elif last_used < cutoff:
                row.action = "remove"
                row.reason = f"unused for {_age(now - last_used)} (> {_age(max_age)})" + note
            else:
                row.reason = f"used {_age(now - last_used)} ago" + note
            rows.append(row)
        for leftover in dangling:
            image_id = str(leftover["Id"])
            if not owned_by(leftover.get("Labels"), prefix):
                continue
            image_hash = str((leftover.get("Labels") or {}).get(LABEL_HASH, ""))
            created = float(leftover.get("Created") or 0)
            row = Row(
                image_hash,
                "<none>",
                image_id,
                0,
                None,
                "remove",
                "dangling (untagged) worker image",
                created=created,
            )
            if image_id in engine.used_by:
                row.action, row.reason = "keep", "dangling, but in use by a container"
            rows.append(row)
        self._share_images(rows)
        self._protect_parents(rows, engine)
        if budget is not None:
            self._apply_budget(rows, engine, budget)
        removing = {r.image_id for r in rows if r.action == "remove" and r.image_id}
        for row in rows:
            if row.image_id:
                row.size = engine.unique_size(row.image_id, removing)
        return rows

    @staticmethod
    def _share_images(rows: list[Row]) -> None:
        """An image removed by ID loses every tag: only when all of its hashes may go."""
        by_image: dict[str, list[Row]] = {}
        for row in rows:
            if row.image_id and row.tag != "<none>":
                by_image.setdefault(row.image_id, []).append(row)
        for group in by_image.values():
            kept = [r for r in group if r.action == "keep"]
            if not kept:
                continue
            for row in group:
                if row.action == "remove":
                    row.action = "untag"
                    row.reason += f"; image shared with kept {kept[0].tag[:19]}: tag removed"

    @staticmethod
    def _protect_parents(rows: list[Row], engine: _Engine) -> None:
        """An image some kept image (or container) builds on cannot go: keep it and say why."""
        removing = {r.image_id: r for r in rows if r.action == "remove" and r.image_id}
        if not removing:
            return
        stays = [i for i in engine.parents if i not in removing]
        for image_id in stays:
            for ancestor in engine.ancestors(image_id):
                row = removing.get(ancestor)
                if row is not None and row.action == "remove":
                    row.action = "keep"
                    row.reason += f"; but parent of kept image {image_id[7:19]}"

    @staticmethod
    def _apply_budget(rows: list[Row], engine: _Engine, budget: int) -> None:
        """Least recently used first, while the images we keep exceed the disk budget."""
        removing = {r.image_id for r in rows if r.action == "remove" and r.image_id}
        kept = [r for r in rows if r.action == "keep" and r.image_id and r.tag != "<none>"]
        total = sum(engine.unique_size(str(r.image_id), removing) for r in kept)
        candidates = sorted(
            (
                r
                for r in kept
                if r.image_id not in engine.used_by
                and not r.reason.startswith("built by")
                and "parent of" not in r.reason
            ),
            key=lambda r: r.last_used or 0,
        )
        for row in candidates:
            if total <= budget:
                break
            if sum(1 for r in rows if r.image_id == row.image_id) > 1:
                continue  # shared by several hashes: not worth the bookkeeping
            total -= engine.unique_size(str(row.image_id), removing)
            removing.add(str(row.image_id))
            row.action = "remove"
            row.reason += f"; over the disk budget of {_bytes(budget)} (least recently used)"

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
        tags = _real_tags(image)
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


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def human_bytes(n: int) -> str:
    return _bytes(n)


def parse_duration(text: str) -> float:
    """``7d``, ``36h``, ``90m``, ``3600s``; a bare number is days (like WM_IMAGE_MAX_AGE_DAYS)."""
    units = {"d": 86_400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
    text = text.strip().lower()
    unit = units.get(text[-1:]) if text else None
    number = float(text[:-1] if unit else text)
    seconds = number * (unit or 86_400.0)
    if seconds <= 0:
        raise ValueError("a maximum age must be positive")
    return seconds


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


def print_report(report: Report, console: Console) -> None:
    """The operator's view: every image, why it stays or goes, and what was (or would be) freed."""
    now = time.time()
    table = Table("hash", "tag", "size", "last used", "action", "reason")
    order = {"remove": 0, "untag": 1, "forget": 2, "keep": 3}
    for row in sorted(report.rows, key=lambda r: (order[r.action], r.last_used or 0)):
        last = (
            f"{iso_from_unix(row.last_used)[:16]}Z ({_age(now - row.last_used)} ago)"
            if row.last_used
            else "-"
        )
        style = {"remove": "red", "untag": "yellow", "forget": "dim"}.get(row.action, "")
        table.add_row(
            row.hash[:12],
            row.tag if row.tag == "<none>" else row.tag[:19],
            _bytes(row.size),
            last,
            f"[{style}]{row.action}[/{style}]" if style else row.action,
            row.reason,
        )
    console.print(table)
    if report.skipped:
        console.print(f"[yellow]skipped:[/yellow] {report.skipped}")
        return
    counts = {a: sum(1 for r in report.rows if r.action == a) for a in order}
    summary = (
        f"{len(report.rows)} image record(s): {counts['remove']} to remove, "
        f"{counts['untag']} to untag, {counts['forget']} stale record(s), {counts['keep']} kept"
    )
    if report.dry_run:
        console.print(f"dry run: {summary}; would free about {_bytes(report.planned_bytes())}")
        if report.prunes_build_cache:
            console.print(f"build cache unused for > {_age(report.max_age_seconds)} would go too")
    else:
        cache = (
            f"; build cache: {_bytes(report.build_cache_bytes)} reclaimed"
            if report.build_cache_bytes is not None
            else ""
        )
        console.print(f"{summary}; freed about {_bytes(report.freed_bytes)}{cache}")
    for error in report.errors:
        console.print(f"[red]error:[/red] {error}")
    console.print(f"took {report.seconds:.2f}s")
