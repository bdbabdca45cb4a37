"""The manager's Prometheus metrics, in a registry of its own.

A private :class:`CollectorRegistry` (not the process-global one) lets several managers live in
one test process without their series colliding. Counters and histograms are fed by the code that
sees the event (:meth:`Metrics.observe_command`, :meth:`image_build`, :meth:`gc_removed`,
:meth:`eviction`); the gauges that describe shared state (workers by status, the command group's
pending count and lag) are read from Redis when scraped, at most once per ``cache_seconds``, so a
scrape storm cannot become a Redis storm.

Label values that come from outside (a command's ``command`` field) are folded into a fixed set:
a producer must not be able to create unbounded time series.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from worker_manager.contract.kinds import WorkerStatus
from worker_manager.core.keys import MANAGER_GROUP, Keys
from worker_manager.core.logs import get_logger
from worker_manager.tenants.quotas import spent_today

log = get_logger(__name__)

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_COMMANDS = frozenset({"create", "delete", "status", "list"})
_BUILD_RESULTS = frozenset({"hit", "miss", "failure"})
#: Creates are answered before any build, so commands are fast; the tail shows Redis trouble.
_COMMAND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: Image builds take from seconds (cached layers) to many minutes (agent installs).
_BUILD_BUCKETS = (1, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800)
#: How many worker records one pipeline reads at a time when counting by status.
_CHUNK = 1000


class Metrics:
    def __init__(self, *, cache_seconds: float = 2.0) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.commands = Counter(
            "wm_commands",
            "Commands handled, by command and result.",
            ["command", "result"],
            registry=r,
        )
        self.command_seconds = Histogram(
            "wm_command_seconds",
            "Time from taking a command to its reply.",
            ["command"],
            buckets=_COMMAND_BUCKETS,
            registry=r,
        )
        self.workers = Gauge(
            "wm_workers",
            "Worker records under this key prefix, by status.",
            ["status"],
            registry=r,
        )
        self.tenant_workers = Gauge(
            "wm_tenant_workers",
            "Worker records of each tenant (SPEC §11), by status.",
            ["tenant", "status"],
            registry=r,
        )
        self.tenant_spend = Gauge(
            "wm_tenant_spend_usd_today",
            "What each tenant's workers spent through the LLM gateway this UTC day, in USD.",
            ["tenant"],
            registry=r,
        )
        self.consumer_pending = Gauge(
            "wm_consumer_pending",
            "Commands delivered to the manager group and not yet acknowledged.",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "wm_consumer_lag",
            "Commands in the stream not yet delivered to the manager group.",
            registry=r,
        )
        self.redis_up = Gauge(
            "wm_redis_up",
            "1 when the last scrape could read Redis; 0 when it could not.",
            registry=r,
        )
        self.in_flight = Gauge(
            "wm_commands_in_flight", "Commands this manager is handling now.", registry=r
        )
        self.creates_in_progress = Gauge(
            "wm_creates_in_progress",
            "Creates this manager is provisioning (image, container).",
            registry=r,
        )
        self.draining = Gauge(
            "wm_draining", "1 when this manager has stopped taking commands.", registry=r
        )
        self.image_builds = Counter(
            "wm_image_builds",
            "Image lookups: hit (image existed), miss (this manager built it), failure.",
            ["result"],
            registry=r,
        )
        self.image_build_seconds = Histogram(
            "wm_image_build_seconds",
            "Duration of image builds this manager ran.",
            buckets=_BUILD_BUCKETS,
            registry=r,
        )
        self.gc_removed_images = Counter(
            "wm_gc_removed_images", "Worker images removed by garbage collection.", registry=r
        )
        self.gc_freed_bytes = Counter(
            "wm_gc_freed_bytes", "Bytes freed by removing worker images.", registry=r
        )
        self.evictions = Counter(
            "wm_evictions", "Workers stopped by the manager, by reason.", ["reason"], registry=r
        )
        self.loop_restarts = Counter(
            "wm_loop_restarts",
            "Background loops restarted after an unexpected error, by loop.",
            ["loop"],
            registry=r,
        )
        self.worker_writes_dropped = Counter(
            "wm_worker_writes_dropped",
            "What workers wrote and the manager refused or trimmed: output entries past the "
            "cap (output), heartbeats it could not accept (heartbeat).",
            ["kind"],
            registry=r,
        )
        for kind in ("output", "heartbeat"):
            self.worker_writes_dropped.labels(kind)
        self.pool_ready = Gauge(
            "wm_pool_ready", "Warm-pool workers ready to be taken, by shape.", ["shape"], registry=r
        )
        self.pool_takes = Counter(
            "wm_pool_takes",
            "Creates that took a warm-pool worker, by shape.",
            ["shape"],
            registry=r,
        )
        self.pool_misses = Counter(
            "wm_pool_misses",
            "Creates of a pooled shape that found its pool empty, by shape.",
            ["shape"],
            registry=r,
        )
        for status in WorkerStatus:
            self.workers.labels(status.value)
        for result in sorted(_BUILD_RESULTS):
            self.image_builds.labels(result)
        self._cache_seconds = cache_seconds
        self._refreshed_at: float | None = None

    # --- events (called by the code that sees them) ----------------------------------------
    def observe_command(self, command: str, result: str, seconds: float) -> None:
        """The ``Dispatcher`` observer: one call per answered (or dead-lettered) command."""
        name = command if command in _COMMANDS else "unknown"
        self.commands.labels(name, result).inc()
        self.command_seconds.labels(name).observe(seconds)

    def image_build(self, result: str, seconds: float | None = None) -> None:
        if result not in _BUILD_RESULTS:
            raise ValueError(f"image build result must be one of {sorted(_BUILD_RESULTS)}")
        self.image_builds.labels(result).inc()
        if seconds is not None:
            self.image_build_seconds.observe(seconds)

    def gc_removed(self, count: int, freed_bytes: int) -> None:
        self.gc_removed_images.inc(count)
        self.gc_freed_bytes.inc(freed_bytes)

    def eviction(self, reason: str) -> None:
        self.evictions.labels(reason).inc()

    def pool(self, shape: str, what: str) -> None:
        (self.pool_takes if what == "take" else self.pool_misses).labels(shape).inc()

    def loop_restart(self, loop: str) -> None:
        self.loop_restarts.labels(loop).inc()

    def dropped(self, kind: str, count: int = 1) -> None:
        self.worker_writes_dropped.labels(kind).inc(count)

    # --- scrape ----------------------------------------------------------------------------
    async def refresh(
        self, redis: Redis, keys: Keys, *, tenants: Sequence[str] = (), force: bool = False
    ) -> None:
        """Read the Redis-backed gauges, unless they were read less than ``cache_seconds`` ago.

        When Redis cannot be read the gauges are dropped rather than left at stale values, and
        ``wm_redis_up`` says why they are missing.
        """
        now = time.monotonic()
        if (
            not force
            and self._refreshed_at is not None
            and now - self._refreshed_at < self._cache_seconds
        ):
            return
        self._refreshed_at = now
        try:
            counts = await count_workers(redis, keys)
            pending, lag = await group_backlog(redis, keys)
            usage = await tenant_usage(redis, keys, tenants)
        except (RedisError, OSError, TimeoutError) as exc:
            log.debug("metrics: redis unreadable", error=str(exc))
            self.redis_up.set(0)
            self.workers.clear()
            self.tenant_workers.clear()
            self.tenant_spend.clear()
            self.consumer_pending.set(float("nan"))
            self.consumer_lag.set(float("nan"))
            return
        self.redis_up.set(1)
        for status in WorkerStatus:
            self.workers.labels(status.value).set(counts.pop(status.value, 0))
        for other, count in counts.items():  # a status newer than this code: still counted
            self.workers.labels(other).set(count)
        for row in usage:
            for status in WorkerStatus:
                self.tenant_workers.labels(row.tenant, status.value).set(
                    row.counts.pop(status.value, 0)
                )
            for other, count in row.counts.items():
                self.tenant_workers.labels(row.tenant, other).set(count)
            self.tenant_spend.labels(row.tenant).set(row.spent_today_usd)
        self.consumer_pending.set(pending)
        self.consumer_lag.set(float("nan") if lag is None else lag)

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(frozen=True, slots=True)
class TenantUsage:
    tenant: str
    #: Its worker records by status (as ``count_workers``).
    counts: dict[str, int]
    spent_today_usd: float


async def tenant_usage(redis: Redis, keys: Keys, tenants: Sequence[str]) -> list[TenantUsage]:
    """Each tenant's workers by status and its spend of the UTC day: what ``/metrics`` and the
    operator's ``top`` show of tenants."""
    fleet = Keys(keys.fleet_prefix)
    rows = []
    for name in tenants:
        space = fleet.for_tenant(name)
        rows.append(
            TenantUsage(name, await count_workers(redis, space), await spent_today(redis, space))
        )
    return rows


async def count_workers(redis: Redis, keys: Keys) -> dict[str, int]:
    """Records in the index by status; entries whose record expired are not counted."""
    counts: dict[str, int] = {}
    start = 0
    while True:
        ids: list[str] = await redis.zrange(keys.index, start, start + _CHUNK - 1)
        if not ids:
            return counts
        async with redis.pipeline(transaction=False) as pipe:
            for worker_id in ids:
                pipe.hget(keys.worker(worker_id), "status")
            statuses: list[str | None] = await pipe.execute()
        for status in statuses:
            if status:
                counts[status] = counts.get(status, 0) + 1
        if len(ids) < _CHUNK:
            return counts
        start += _CHUNK


async def group_backlog(redis: Redis, keys: Keys) -> tuple[int, int | None]:
    """(pending, lag) of the manager group; lag is None when Redis cannot tell (Redis < 7)."""
    try:
        groups = await redis.xinfo_groups(keys.commands)
    except ResponseError as exc:  # no stream yet: nothing pending, nothing waiting
        if "no such key" in str(exc).lower():
            return 0, 0
        raise
    for group in groups:
        if str(group.get("name")) == MANAGER_GROUP:
            lag = group.get("lag")
            return int(group.get("pending") or 0), None if lag is None else int(lag)
    return 0, await redis.xlen(keys.commands)
