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

from worker_manager.commands.consumer import CommandConsumer
from worker_manager.commands.fairness import FairShare
from worker_manager.contract.tenants import Tenant
from worker_manager.core import docker_client
from worker_manager.core.connections import connect
from worker_manager.core.logs import get_logger, redact_url
from worker_manager.core.outages import ride_out
from worker_manager.core.supervisor import Supervisor
from worker_manager.egress.control import EgressClient, wm_families
from worker_manager.environments.build_network import EgressBuildNetwork
from worker_manager.images.gc_execute import gc_loop
from worker_manager.images.service import ImageService
from worker_manager.service.http import HttpServer
from worker_manager.service.metrics import Metrics
from worker_manager.service.namespace import Namespace, Shared
from worker_manager.settings import Settings
from worker_manager.tenants.registry import TenantRegistry
from worker_manager.typing import CommandObserver, Load
from worker_manager.workers.fleet.placement import Placement
from worker_manager.workers.fleet.presence import Presence
from worker_manager.workers.resources.containers import ContainerRuntime
from worker_manager.workers.resources.containment import Containment, contained
from worker_manager.workers.resources.pool import WarmPool
from worker_manager.workers.watching.watcher import StatusWatcher

log = get_logger(__name__)

#: How often the tenant registry is read: a tenant added with ``tenants add`` is served this soon.
TENANTS_REFRESH_SECONDS = 5.0


class Manager:
    """Builds every component once, in dependency order, handing each its collaborators: the
    fleet's here, each namespace's (the default one and each tenant's) in a
    :class:`~worker_manager.service.namespace.Namespace`."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis: Redis | None = None,
        docker: DockerClient | None = None,
        observe: CommandObserver | None = None,
        http: bool = False,
    ) -> None:
        # WM_TENANT names a client's tenant; a manager serves the default namespace and each
        # tenant's, whatever a shared .env says.
        self.settings = s = settings.for_tenant(None) if settings.tenant else settings
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
        # --- the fleet's ---------------------------------------------------------------------
        egress = EgressClient(s)
        #: An environment's build reaches only WM_BUILD_EGRESS, through the egress service.
        self.build_network = EgressBuildNetwork(s, self.docker, egress) if contained(s) else None
        self.images = ImageService(
            s, self.redis, self.docker, self.metrics.image_build, build_network=self.build_network
        )
        self._readers: list[Redis] = []
        #: Every namespace served: "" (the default one) first, then each tenant's by name.
        self.namespaces: dict[str, Namespace] = {}
        self.tenants = TenantRegistry(self.redis, s)
        #: Tenants added at runtime whose start failed (retried every round), with why.
        self._tenant_problems: dict[str, str] = {}
        self._shared = Shared(
            redis=self.redis,
            raw_redis=self.raw_redis,
            docker=self.docker,
            metrics=self.metrics,
            images=self.images,
            egress=egress,
            observe=_observers(self.metrics.observe_command, observe),
            namespaces=lambda: [ns.keys for ns in self.namespaces.values()],
            readers=self._readers,
            watcher_of=self._watcher_of,
            fair=FairShare(s.command_fair_share),
        )
        containers = ContainerRuntime(s, self.docker)
        self.pool = WarmPool(
            s,
            self.redis,
            self.images,
            containers,
            Containment(s, egress),
            observe=self.metrics.pool,
        )
        self.placement = Placement(
            s,
            self.redis,
            # The default namespace's store counts every namespace's live set of this manager.
            live=lambda: self.store.host_live(),
            pooled=lambda: sum(self.pool.ready.values()),
        )
        self.presence = Presence(s, self.redis, offer=self.placement.offer)
        default = Namespace(s, self._shared, pool=self.pool, gate=self.placement.should_take)
        self.namespaces[""] = default
        for name, quota in s.tenants.items():
            self._add_tenant(Tenant(name, quota))
        # The default namespace's components, by the names the rest of the service (and its
        # tests) know them by.
        self.store = default.store
        self.acl = default.acl
        self.containment = default.containment
        self.containers = default.containers
        self.services = default.services
        self.lifecycle = default.lifecycle
        self.provisioner = default.provisioner
        self.reconciler = default.reconciler
        self.watcher = default.watcher
        self.evictor = default.evictor
        self.output_guard = default.output_guard
        self.disk_guard = default.disk_guard
        self.handlers = default.handlers
        self.consumer = default.consumer
        self.own_consumer = default.own_consumer
        # --- the service's own -------------------------------------------------------------
        self.http = (
            HttpServer(s, s, self, self.metrics, image_max_age_days=s.image_max_age_days)
            if http
            else None
        )
        #: Every background loop but the command consumer runs under this one supervisor.
        self.supervisor = Supervisor(self.stop, on_restart=self.metrics.loop_restart)
        self._gc_loop = gc_loop(s, self.redis, self.docker, self.metrics.gc_removed)

    def _watcher_of(self, prefix: str) -> StatusWatcher | None:
        for namespace in list(self.namespaces.values()):
            if namespace.keys.prefix == prefix:
                return namespace.watcher
        return None

    def _add_tenant(self, tenant: Tenant) -> None:
        self.namespaces[tenant.name] = self._tenant_namespace(tenant)

    def _tenant_namespace(self, tenant: Tenant) -> Namespace:
        return Namespace(
            self.settings.for_tenant(tenant.name),
            self._shared,
            tenant=tenant,
            gate=self.placement.should_take,
        )

    async def _refresh_tenants(self) -> None:
        """Tenants added (or given new quotas) with ``tenants add`` since the last look: a new
        one is started like those of ``WM_TENANTS`` were (groups, reconcile, loops), and only
        then counted as served, so a start that fails is tried again next round."""
        for name, quota in (await self.tenants.read()).items():
            known = self.namespaces.get(name)
            if known is not None and known.tenant is not None:
                known.tenant.quota = quota
                continue
            if self.stop.is_set():
                return
            namespace = self._tenant_namespace(Tenant(name, quota))
            try:
                await namespace.start_up()
            except asyncio.CancelledError:
                await self._discard(namespace)
                raise
            except Exception as exc:  # this one next round; the others now
                log.exception("a new tenant could not be started; trying again", tenant=name)
                self._tenant_problems[name] = f"could not be started ({exc}); trying again"
                await self._discard(namespace)
                continue
            self._tenant_problems.pop(name, None)
            if self.stop.is_set():  # stopping meanwhile: no loop may start now
                await self._discard(namespace)
                return
            self.namespaces[name] = namespace
            namespace.start_loops(self.supervisor, self._taking_commands, shared_stream=True)
            log.info("serving a new tenant", tenant=name)

    @staticmethod
    async def _discard(namespace: Namespace) -> None:
        """A namespace whose start did not finish: what its reconcile began is stopped (the
        next try reconciles again), its connections closed."""
        await namespace.close()
        await namespace.close_readers()

    # --- HealthSource: what /readyz and /metrics see -------------------------------------------
    def intake(self) -> str:
        if self.stop.is_set() or self.draining.is_set():
            return "draining: not taking commands"
        return "ok" if self.ready.is_set() else "starting"

    def loop_problems(self) -> dict[str, str]:
        """The supervisor's failing loops, and a tenant whose start keeps failing (its loops
        are not running: /readyz names it)."""
        tenants = {f"tenant {name}": why for name, why in self._tenant_problems.items()}
        return {**self.supervisor.problems(), **tenants}

    def ping_docker(self) -> object:
        return self.docker.ping()

    def load(self) -> Load:
        spaces = self.namespaces.values()
        return Load(
            commands_in_flight=sum(ns.consumer.in_flight for ns in spaces),
            creates_in_progress=sum(ns.provisioner.in_progress for ns in spaces),
            draining=self.draining.is_set() or self.stop.is_set(),
            pool_ready=dict(self.pool.ready),
            tenants=tuple(ns.tenant.name for ns in spaces if ns.tenant is not None),
        )

    async def extra_metrics(self) -> str:
        if not self.containment.enabled:
            return ""
        return wm_families(await self.containment.client.metrics())

    def _start_loops(self) -> None:
        """The background loops, each restarted with back-off if it fails (``/readyz`` names
        one that keeps failing or stops finishing rounds)."""
        s, sup = self.settings, self.supervisor
        for name, namespace in self.namespaces.items():
            namespace.start_loops(sup, self._taking_commands, shared_stream=bool(name))
        sup.every("presence", self.presence.refresh, self.presence.interval, wait_first=True)
        sup.every("tenants", self._refresh_tenants, TENANTS_REFRESH_SECONDS, wait_first=True)
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
        for name, quota in (await self.tenants.read()).items():
            if name not in self.namespaces:
                self._add_tenant(Tenant(name, quota))
        await self.presence.beat()
        for namespace in self.namespaces.values():
            await namespace.start_up()

    async def _keep_egress_running(self) -> None:
        """The egress service is supervised from here: started again if it died (its grants
        are on disk, so it serves the same workers again)."""
        await self.containment.client.ensure_running()

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
        """A tenant's or a registered producer's stream is read like the shared one: until
        draining."""

        async def run(_stop: asyncio.Event) -> None:
            await consumer.run(self.draining, grace=5.0)
            await self.stop.wait()  # drained: nothing more to take until the service stops

        return run

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
                    creates_in_progress=self.load().creates_in_progress,
                )
                await self.stop.wait()
        finally:
            self.stop.set()
            for namespace in list(self.namespaces.values()):
                await namespace.close()
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
