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
from collections.abc import Awaitable, Callable

from docker import DockerClient
from redis.asyncio import Redis

from worker_manager import docker_client
from worker_manager.acl import WorkerAcl
from worker_manager.config import Settings
from worker_manager.connections import connect
from worker_manager.consumer import CommandConsumer
from worker_manager.containers import ContainerRuntime
from worker_manager.dispatcher import Dispatcher, Observer
from worker_manager.eviction import Evictor
from worker_manager.gc import gc_loop
from worker_manager.handlers import Handlers
from worker_manager.http import HttpServer
from worker_manager.images import ImageService
from worker_manager.logs import get_logger, redact_url
from worker_manager.metrics import Metrics
from worker_manager.models import Shape
from worker_manager.outages import ride_out
from worker_manager.output_guard import OutputGuard
from worker_manager.placement import Placement
from worker_manager.pool import WarmPool
from worker_manager.provisioner import Provisioner
from worker_manager.reconciler import Reconciler
from worker_manager.records import WorkerStore
from worker_manager.replies import ReplyBook
from worker_manager.routing import Presence, Router
from worker_manager.supervisor import Supervisor
from worker_manager.watcher import StatusWatcher

log = get_logger(__name__)


class Manager:
    def __init__(
        self,
        settings: Settings,
        *,
        redis: Redis | None = None,
        docker: DockerClient | None = None,
        observe: Observer | None = None,
        http: bool = False,
    ) -> None:
        self.settings = settings
        self.redis = redis or connect(settings, name="main")
        # What producers and workers wrote is read as bytes and judged before it is text.
        self.raw_redis = connect(settings, name="raw", decode=False)
        self.blocking_redis = connect(settings, blocking=True, name="consumer", decode=False)
        self.docker = docker or docker_client.connect()
        self.store = WorkerStore(self.redis, settings)
        self.book = ReplyBook(self.redis, settings)
        self.acl = WorkerAcl(self.redis, settings)
        self.images = ImageService(settings, self.redis, self.docker)
        self.containers = ContainerRuntime(settings, self.docker)
        self.provisioner = Provisioner(settings, self.store, self.images, self.containers, self.acl)
        self.router = Router(settings, self.redis, self.store, self.acl)
        self.pool = WarmPool(
            settings, self.redis, self.images, self.containers, self.provisioner.pool_env
        )
        self.handlers = Handlers(
            settings, self.store, self.provisioner, self.router, pool=self.pool
        )
        self.metrics = Metrics()
        self.images.observe_build = self.metrics.image_build
        self.dispatcher = Dispatcher(
            settings,
            self.redis,
            self.book,
            self.handlers,
            observe=_observers(self.metrics.observe_command, observe),
        )
        self.placement = Placement(
            settings, self.redis, self.store, pooled=lambda: sum(self.pool.ready.values())
        )
        self.consumer = CommandConsumer(
            settings,
            self.redis,
            self.blocking_redis,
            self.dispatcher,
            gate=self.placement.should_take,
        )
        # Commands routed to this manager by the others (deletes of workers on this host).
        own_stream = settings.keys.manager_commands(settings.manager_id)
        self.own_consumer_book = ReplyBook(self.redis, settings, commands_stream=own_stream)
        self.own_blocking_redis = connect(
            settings, blocking=True, name="consumer-own", decode=False
        )
        self.own_consumer = CommandConsumer(
            settings,
            self.redis,
            self.own_blocking_redis,
            Dispatcher(
                settings,
                self.redis,
                self.own_consumer_book,
                self.handlers,
                observe=_observers(self.metrics.observe_command, observe),
            ),
            stream=own_stream,
        )
        # Registered producers: one command stream each, whose sender the manager knows.
        self.producer_consumers: dict[str, CommandConsumer] = {}
        self._producer_clients: list[Redis] = []
        for producer in settings.producers:
            stream = settings.keys.producer_commands(producer)
            reader = connect(settings, blocking=True, name=f"producer-{producer}", decode=False)
            self._producer_clients.append(reader)
            self.producer_consumers[producer] = CommandConsumer(
                settings,
                self.redis,
                reader,
                Dispatcher(
                    settings,
                    self.redis,
                    ReplyBook(self.redis, settings, commands_stream=stream),
                    self.handlers,
                    observe=_observers(self.metrics.observe_command, observe),
                    producer=producer,
                ),
                stream=stream,
            )
        self.watcher = StatusWatcher(
            settings, self.redis, self.raw_redis, self.store, self.docker, self.provisioner.end
        )
        self.evictor = Evictor(settings, self.raw_redis, self.store, self.provisioner.end)
        self.watcher.dropped = self.metrics.dropped
        self.pool.observe = self.metrics.pool
        self.provisioner.on_started = self.watcher.expect_heartbeat
        self.evictor.observe = self.metrics.eviction
        self.output_guard = OutputGuard(
            settings, self.redis, self.store, self.provisioner.end, self.metrics.dropped
        )
        self.reconciler = Reconciler(
            settings,
            self.store,
            self.docker,
            self.containers,
            self.provisioner,
            self.acl,
            self._ensure_groups,
        )
        self.watcher.on_redis_restart = self.reconciler.after_redis_restart
        self.presence = Presence(settings, self.redis, offer=self.placement.offer)
        self.stop = asyncio.Event()
        self.ready = asyncio.Event()
        #: Set by SIGUSR1 (and by ``stop``): no more commands are taken; everything else runs.
        self.draining = asyncio.Event()
        self.http = HttpServer(self) if http else None
        #: Every background loop but the command consumer runs under this one supervisor.
        self.supervisor = Supervisor(self.stop, on_restart=self.metrics.loop_restart)
        self._gc_loop = gc_loop(settings, self.redis, self.docker, self.metrics.gc_removed)

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
        sup.every("eviction", self.evictor.sweep, s.eviction_interval_seconds)
        sup.every("output-trim", self.output_guard.round, s.output_trim_interval_seconds)
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
        sup.every("dead-letters", self.book.age_out_dead_letters, 60.0, wait_first=True)
        sup.forever("image-gc", self._gc_loop)
        sup.every("warm-pool", self.pool.round, s.warm_pool_interval_seconds, wake=self.pool.wake)

    async def start_up(self) -> None:
        """Checks that must pass before commands are taken, then finish interrupted creates."""
        await self.redis.ping()
        await self.acl.check_admin()
        await self._ensure_groups()
        await self.presence.beat()
        await self.reconciler.reconcile()

    async def _prebuild(self) -> None:
        """Build ``WM_PREBUILD``'s shapes now, one after the other, so the first create of each
        finds its image (or joins its build). Readiness has not waited for this."""
        for text in self.settings.prebuild:
            shape = Shape.parse(text)
            try:
                image = await self.images.ensure(shape.agent_type, list(shape.modules))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a build failure is logged; the next shape still goes
                log.warning("prebuild failed", shape=text, error=str(exc)[:500])
            else:
                log.info("prebuilt", shape=text, tag=image.tag, built=image.built)

    async def _ensure_groups(self) -> None:
        await self.consumer.ensure_group()
        await self.own_consumer.ensure_group()
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
        prebuild = asyncio.create_task(self._prebuild(), name="prebuild")
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
            await self.supervisor.close()
            await self.pool.close()
            drain.cancel()
            prebuild.cancel()
            await asyncio.gather(drain, prebuild, return_exceptions=True)
            await self.presence.leave()
            log.info("worker-manager stopped")

    async def close(self) -> None:
        await self.redis.aclose()
        await self.raw_redis.aclose()
        await self.blocking_redis.aclose()
        await self.own_blocking_redis.aclose()
        for client in self._producer_clients:
            await client.aclose()
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


def _observers(*observers: Observer | None) -> Observer:
    """One observer that calls each given one (the metrics' and, say, a test's)."""
    chosen = [fn for fn in observers if fn is not None]

    def observe(command: str, result: str, seconds: float) -> None:
        for fn in chosen:
            fn(command, result, seconds)

    return observe
