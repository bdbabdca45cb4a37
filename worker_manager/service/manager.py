"""``worker-manager serve``: the consumer, the status watcher and the background loops, wired.

:class:`Manager` owns every long-lived object and their order of start and stop. SIGTERM stops
reading commands, lets in-flight ones finish within the grace period (the rest stay pending for
another manager) and exits 0; worker containers are left running: they are not our processes.
SIGUSR1 drains without exiting (planned maintenance): commands are left to other managers while
creates in progress finish and this manager's workers stay watched, until SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable

from docker import DockerClient
from redis.asyncio import Redis

from worker_manager.commands.audit import AuditLog
from worker_manager.commands.consumer import CommandConsumer, Gate
from worker_manager.commands.dispatcher import Dispatcher
from worker_manager.commands.forks import Forks
from worker_manager.commands.handlers import Handlers
from worker_manager.commands.replies import ReplyBook
from worker_manager.commands.routing import Router
from worker_manager.core import docker_client
from worker_manager.core.connections import connect
from worker_manager.core.logs import get_logger, redact_url
from worker_manager.core.outages import ride_out
from worker_manager.core.supervisor import Supervisor
from worker_manager.egress.control import wm_families
from worker_manager.environments.build_network import EgressBuildNetwork
from worker_manager.images.gc_execute import gc_loop
from worker_manager.images.service import ImageService
from worker_manager.service.http import HttpServer
from worker_manager.service.metrics import Metrics
from worker_manager.services.engine import EngineStarter
from worker_manager.services.runtime import ServiceRuntime
from worker_manager.services.starter import ServiceStarter
from worker_manager.settings import Settings
from worker_manager.snapshots.copies import StateCopier
from worker_manager.snapshots.retention import expired
from worker_manager.snapshots.store import SnapshotStore
from worker_manager.teams.board import TeamBoards
from worker_manager.teams.follower import TeamFollower
from worker_manager.typing import CommandObserver, Load
from worker_manager.workers.fleet.lost_hosts import LostHosts
from worker_manager.workers.fleet.placement import Placement
from worker_manager.workers.fleet.presence import Presence
from worker_manager.workers.resources.acl import WorkerAcl
from worker_manager.workers.resources.containers import ContainerRuntime
from worker_manager.workers.resources.containment import Containment
from worker_manager.workers.resources.grants import WorkerGrants
from worker_manager.workers.resources.pool import WarmPool
from worker_manager.workers.resources.tasks import WorkerTasks
from worker_manager.workers.state.evidence import EvidenceBook
from worker_manager.workers.state.records import WorkerStore
from worker_manager.workers.state.summaries import Summaries
from worker_manager.workers.transitions.lifecycle import Lifecycle
from worker_manager.workers.transitions.provisioner import Provisioner
from worker_manager.workers.transitions.sleep import Sleep
from worker_manager.workers.watching.disk_guard import DiskGuard
from worker_manager.workers.watching.eviction import Evictor
from worker_manager.workers.watching.output_guard import OutputGuard
from worker_manager.workers.watching.reconciler import Reconciler
from worker_manager.workers.watching.watcher import StatusWatcher
from worker_manager.workspaces.checkout import Checkout

log = get_logger(__name__)

#: How often grants past their time are looked for: a grant outlives its ``ttl_seconds`` by at
#: most this.
GRANT_EXPIRY_SECONDS = 2.0


class Manager:
    """Builds every component once, in dependency order, handing each its collaborators."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis: Redis | None = None,
        docker: DockerClient | None = None,
        observe: CommandObserver | None = None,
        http: bool = False,
    ) -> None:
        self.settings = s = settings
        # --- connections ---------------------------------------------------------------------
        self.redis = redis or connect(s, name="main")
        # What producers and workers wrote is read as bytes and judged before it is text.
        self.raw_redis = connect(s, name="raw", decode=False)
        self.docker = docker or docker_client.connect()
        self.metrics = Metrics()
        self.stop = asyncio.Event()
        self.ready = asyncio.Event()
        #: Set by SIGUSR1 (and by ``stop``): no more commands are taken; everything else runs.
        self.draining = asyncio.Event()
        # --- the worker lifecycle ------------------------------------------------------------
        self.store = WorkerStore(self.redis, s)
        self.acl = WorkerAcl(self.redis, s)
        self.containment = Containment(s)
        #: An environment's build reaches only WM_BUILD_EGRESS, through the egress service.
        self.build_network = (
            EgressBuildNetwork(s, self.docker, self.containment.client)
            if self.containment.enabled
            else None
        )
        self.images = ImageService(
            s, self.redis, self.docker, self.metrics.image_build, build_network=self.build_network
        )
        self.containers = ContainerRuntime(s, self.docker)
        self.services = ServiceRuntime(s, self.docker)
        creates = WorkerTasks("provision")
        self.evidence = EvidenceBook(self.redis, s)
        self.grants = WorkerGrants(self.redis, s.keys)
        self.team_boards = TeamBoards(self.redis, s)
        self.team_follower = TeamFollower(self.redis, s, self.team_boards)
        self.lifecycle = Lifecycle(
            self.store,
            self.containers,
            self.acl,
            creates,
            self.containment,
            self.evidence,
            services=self.services,
            grants=self.grants,
        )
        #: Set when a container has started: the watcher looks for its first heartbeat at once.
        heartbeat_soon = asyncio.Event()
        self.provisioner = Provisioner(
            s,
            self.store,
            self.images,
            self.containers,
            self.acl,
            self.lifecycle,
            creates,
            self.containment,
            Checkout(
                s,
                self.docker,
                self.redis,
                self.containers.volumes,
                self.containment.client if self.containment.enabled else None,
            ),
            services=ServiceStarter(s, self.services, self.images),
            engine=EngineStarter(s, self.docker, self.images, self.services),
            on_started=lambda _worker_id: heartbeat_soon.set(),
        )
        self.pool = WarmPool(
            s,
            self.redis,
            self.images,
            self.containers,
            self.containment,
            observe=self.metrics.pool,
        )
        self.placement = Placement(
            s, self.redis, self.store, pooled=lambda: sum(self.pool.ready.values())
        )
        self.presence = Presence(s, self.redis, offer=self.placement.offer)
        self.reconciler = Reconciler(
            s,
            self.store,
            self.docker,
            self.containers,
            self.provisioner,
            self.lifecycle,
            self.acl,
            self._ensure_groups,
            self.containment,
            services=self.services,
        )
        self.watcher = StatusWatcher(
            s,
            self.redis,
            self.raw_redis,
            self.store,
            self.docker,
            self.lifecycle,
            wake=heartbeat_soon,
            on_redis_restart=self.reconciler.after_redis_restart,
            dropped=self.metrics.dropped,
            data_path_started=self.containment.client.started_at
            if self.containment.enabled
            else None,
            summaries=Summaries(s, self.redis, self.raw_redis, self.store),
        )
        self.lost_hosts = LostHosts(
            s, self.redis, self.raw_redis, self.lifecycle, observe=self.metrics.eviction
        )
        self.sleep = Sleep(s, self.redis, self.store, self.lifecycle, self.provisioner)
        self.evictor = Evictor(
            s,
            self.raw_redis,
            self.store,
            self.lifecycle,
            observe=self.metrics.eviction,
            suspend=self.sleep.suspend,
        )
        self.output_guard = OutputGuard(
            s, self.redis, self.store, self.lifecycle, self.metrics.dropped
        )
        self.disk_guard = DiskGuard(s, self.docker, self.containers, self.store, self.lifecycle)
        # --- the command path ----------------------------------------------------------------
        self.book = ReplyBook(self.redis, s)
        self.forks = Forks(
            s,
            self.redis,
            self.store,
            SnapshotStore(self.redis, s.keys),
            StateCopier(s, self.docker),
            self.containers.volumes,
            self.provisioner,
            self.lifecycle,
            Router(s, self.redis),
        )
        self.handlers = Handlers(
            s,
            self.store,
            self.provisioner,
            self.lifecycle,
            Router(s, self.redis),
            pool=self.pool,
            sleep=self.sleep,
            forks=self.forks,
            grants=self.grants,
            teams=self.team_boards,
        )
        observer = _observers(self.metrics.observe_command, observe)
        self._readers: list[Redis] = []
        self.consumer = self._consumer(
            "consumer", s.keys.commands, self.book, observer, gate=self.placement.should_take
        )
        # Commands routed to this manager by the others (deletes of workers on this host).
        own_stream = s.keys.manager_commands(s.manager_id)
        self.own_consumer = self._consumer(
            "consumer-own",
            own_stream,
            ReplyBook(self.redis, s, commands_stream=own_stream),
            observer,
        )
        # Registered producers: one command stream each, whose sender the manager knows.
        self.producer_consumers = {
            producer: self._consumer(
                f"producer-{producer}",
                s.keys.producer_commands(producer),
                ReplyBook(self.redis, s, commands_stream=s.keys.producer_commands(producer)),
                observer,
                producer=producer,
            )
            for producer in s.producers
        }
        # --- the service's own -------------------------------------------------------------
        self.http = (
            HttpServer(s, s, self, self.metrics, image_max_age_days=s.image_max_age_days)
            if http
            else None
        )
        #: Every background loop but the command consumer runs under this one supervisor.
        self.supervisor = Supervisor(self.stop, on_restart=self.metrics.loop_restart)
        self._gc_loop = gc_loop(s, self.redis, self.docker, self.metrics.gc_removed)

    def _consumer(
        self,
        name: str,
        stream: str,
        book: ReplyBook,
        observer: CommandObserver,
        *,
        producer: str | None = None,
        gate: Gate | None = None,
    ) -> CommandConsumer:
        """A consumer of one command stream, with a blocking Redis client of its own."""
        reader = connect(self.settings, blocking=True, name=name, decode=False)
        self._readers.append(reader)
        dispatcher = Dispatcher(
            self.settings,
            self.redis,
            book,
            self.handlers,
            observe=observer,
            producer=producer,
            audit=AuditLog(self.redis, self.settings),
        )
        return CommandConsumer(
            self.settings, self.redis, reader, dispatcher, stream=stream, gate=gate
        )

    async def _expire_grants(self) -> None:
        """Grants whose time is up (SPEC §11): their Redis users go."""
        await self.grants.expire()

    async def _expire_snapshots(self) -> None:
        """Snapshots of this host unused for ``WM_SNAPSHOT_RETENTION_DAYS`` (SPEC §10)."""
        for snapshot in expired(
            await self.forks.snapshots.all(),
            manager_id=self.settings.manager_id,
            now=time.time(),
            retention_days=self.settings.snapshot_retention_days,
        ):
            await self.forks.remove(snapshot)

    # --- HealthSource: what /readyz and /metrics see -------------------------------------------
    def intake(self) -> str:
        if self.stop.is_set() or self.draining.is_set():
            return "draining: not taking commands"
        return "ok" if self.ready.is_set() else "starting"

    def loop_problems(self) -> dict[str, str]:
        return self.supervisor.problems()

    def ping_docker(self) -> object:
        return self.docker.ping()

    def load(self) -> Load:
        return Load(
            commands_in_flight=self.consumer.in_flight,
            creates_in_progress=self.provisioner.in_progress,
            draining=self.draining.is_set() or self.stop.is_set(),
            pool_ready=dict(self.pool.ready),
        )

    async def extra_metrics(self) -> str:
        if not self.containment.enabled:
            return ""
        return wm_families(await self.containment.client.metrics())

    def _start_loops(self) -> None:
        """The background loops, each restarted with back-off if it fails (``/readyz`` names
        one that keeps failing or stops finishing rounds)."""
        s, sup = self.settings, self.supervisor
        sup.every(
            "heartbeats",
            self.watcher.heartbeat_round,
            s.watch_interval_seconds,
            wake=self.watcher.wake,
        )
        sup.forever("docker-events", self.watcher.docker_events)
        sup.every("lost-hosts", self.lost_hosts.round, s.watch_interval_seconds, wait_first=True)
        sup.every("eviction", self.evictor.sweep, s.eviction_interval_seconds)
        sup.every("output-trim", self.output_guard.round, s.output_trim_interval_seconds)
        sup.every("disk", self.disk_guard.round, s.disk_check_interval_seconds, wait_first=True)
        sup.every("sleepers", self.sleep.round, s.watch_interval_seconds, wait_first=True)
        sup.every("snapshots", self._expire_snapshots, 3600, wait_first=True)
        sup.every("grants", self._expire_grants, GRANT_EXPIRY_SECONDS, wait_first=True)
        sup.every(
            "reconcile", self.reconciler.periodic, s.reconcile_interval_seconds, wait_first=True
        )
        sup.every("presence", self.presence.refresh, self.presence.interval, wait_first=True)
        sup.every(
            "consumer-upkeep", self.consumer.upkeep, self.consumer.upkeep_interval, wait_first=True
        )
        sup.every(
            "own-consumer-upkeep",
            self.own_consumer.upkeep,
            self.own_consumer.upkeep_interval,
            wait_first=True,
        )
        sup.forever("own-consumer", self._run_own_consumer)
        for producer, consumer in self.producer_consumers.items():
            sup.forever(f"producer-{producer}", self._taking_commands(consumer))
            sup.every(
                f"producer-{producer}-upkeep",
                consumer.upkeep,
                consumer.upkeep_interval,
                wait_first=True,
            )
        sup.forever("teams", self.team_follower.follow)
        sup.every("dead-letters", self.book.age_out_dead_letters, 60.0, wait_first=True)
        sup.forever("image-gc", self._gc_loop)
        sup.every("warm-pool", self.pool.round, s.warm_pool_interval_seconds, wake=self.pool.wake)
        if self.containment.enabled:
            sup.every("egress-service", self._keep_egress_running, 5.0, wait_first=True)

    async def start_up(self) -> None:
        """Checks that must pass before commands are taken, then finish interrupted creates."""
        await self.redis.ping()
        await self.acl.check_admin()
        if self.containment.enabled:
            await self.containment.client.ensure_running()
        if self.build_network is not None:
            await self.build_network.sweep()  # what a crashed build left
        await self._ensure_groups()
        await self.presence.beat()
        await self.reconciler.reconcile()

    async def _keep_egress_running(self) -> None:
        """The egress service is supervised from here: started again if it died (its grants
        are on disk, so it serves the same workers again)."""
        await self.containment.client.ensure_running()

    async def _ensure_groups(self) -> None:
        await self.consumer.ensure_group()
        await self.own_consumer.ensure_group()
        await self.team_follower.ensure_group()
        for consumer in self.producer_consumers.values():
            await consumer.ensure_group()

    async def _start_up_when_possible(self) -> bool:
        """Redis or Docker down at start: alive but not ready, retrying, until they answer
        (True) or the manager is told to stop (False)."""
        attempt = asyncio.create_task(
            ride_out(self.start_up, what="start-up", max_seconds=float("inf"))
        )
        stopper = asyncio.create_task(self.stop.wait())
        await asyncio.wait({attempt, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not attempt.done():
            attempt.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await attempt
            return False
        attempt.result()
        return True

    def _taking_commands(
        self, consumer: CommandConsumer
    ) -> Callable[[asyncio.Event], Awaitable[None]]:
        """A registered producer's stream is read like the shared one: until draining."""

        async def run(_stop: asyncio.Event) -> None:
            await consumer.run(self.draining, grace=5.0)
            await self.stop.wait()  # drained: nothing more to take until the service stops

        return run

    async def _run_own_consumer(self, stop: asyncio.Event) -> None:
        """Until the very end, also while draining: only this manager can act on its host."""
        await self.own_consumer.run(stop, grace=5.0)

    async def run(self, *, grace: float = 10.0) -> None:
        """HTTP is up for the whole life: "alive, not ready" during start-up and the drain."""
        if self.http is None:
            return await self._run(grace=grace)
        await self.http.start()
        try:
            await self._run(grace=grace)
        finally:
            await self.http.stop()

    async def _run(self, *, grace: float) -> None:
        log.info(
            "worker-manager starting",
            manager_id=self.settings.manager_id,
            redis=redact_url(self.settings.redis_url),
            key_prefix=self.settings.key_prefix,
        )
        if not await self._start_up_when_possible():
            return
        self.ready.set()
        self._start_loops()
        prebuild = asyncio.create_task(
            self.images.prebuild(self.settings.prebuild), name="prebuild"
        )
        drain = asyncio.create_task(self._drain_on_stop(), name="drain-on-stop")
        try:
            await self.consumer.run(self.draining, grace=grace)
            if not self.stop.is_set():
                log.info(
                    "drained: taking no commands; workers are still watched; SIGTERM to exit",
                    creates_in_progress=self.provisioner.in_progress,
                )
                await self.stop.wait()
        finally:
            self.stop.set()
            await self.provisioner.close()
            await self.lifecycle.close()
            await self.supervisor.close()
            await self.pool.close()
            drain.cancel()
            prebuild.cancel()
            await asyncio.gather(drain, prebuild, return_exceptions=True)
            await self.presence.leave()
            log.info("worker-manager stopped")

    async def close(self) -> None:
        await self.containment.close()
        await self.redis.aclose()
        await self.raw_redis.aclose()
        for reader in self._readers:
            await reader.aclose()
        with contextlib.suppress(Exception):
            self.docker.close()

    async def _drain_on_stop(self) -> None:
        await self.stop.wait()
        self.draining.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGUSR1, self._on_drain_signal)

    def _on_drain_signal(self) -> None:
        """Planned maintenance: other managers take the commands; this one finishes its work."""
        log.info("draining: no new commands; in-flight ones finish, workers stay watched")
        self.draining.set()

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("stopping: no new commands; finishing those in flight", signal=sig.name)
        self.stop.set()


async def serve(settings: Settings, *, grace: float = 10.0) -> None:
    manager = Manager(settings, http=True)
    manager.install_signal_handlers()
    try:
        await manager.run(grace=grace)
    finally:
        await manager.close()


def _observers(*observers: CommandObserver | None) -> CommandObserver:
    """One observer that calls each given one (the metrics' and, say, a test's)."""
    chosen = [fn for fn in observers if fn is not None]

    def observe(command: str, result: str, seconds: float) -> None:
        for fn in chosen:
            fn(command, result, seconds)

    return observe
