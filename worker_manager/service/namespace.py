"""One namespace's components, wired: the default one, or a tenant's (SPEC §11).

Everything that belongs to a namespace's workers is built here, once per namespace, from that
namespace's settings (``Settings.for_tenant``: the same settings with the tenant's keys): its
records, command streams, consumers, watchers, reconciler, grants, snapshots and teams. What
belongs to the fleet (the connections, the images and their GC, the egress service, presence
and placement, the warm pools, the HTTP server) is the manager's (``service.manager``) and handed
in, so N tenants cost N sets of these components on one manager, never N managers.

Each namespace reads its own command stream with its own consumer, blocking connection and
``WM_COMMAND_CONCURRENCY`` slots: a tenant flooding its stream fills its own slots and leaves
the others' to them, and while another namespace is busy it keeps to ``WM_COMMAND_FAIR_SHARE``
of them (``commands.fairness``: they share one event loop).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from docker import DockerClient
from redis.asyncio import Redis

from worker_manager.commands.audit import AuditLog
from worker_manager.commands.consumer import CommandConsumer, Gate
from worker_manager.commands.dispatcher import Dispatcher
from worker_manager.commands.fairness import FairShare
from worker_manager.commands.forks import Forks
from worker_manager.commands.handlers import Handlers
from worker_manager.commands.replies import ReplyBook
from worker_manager.commands.routing import Router
from worker_manager.contract.tenants import Tenant
from worker_manager.core.connections import connect
from worker_manager.core.keys import Keys
from worker_manager.core.supervisor import Supervisor
from worker_manager.egress.control import EgressClient
from worker_manager.images.service import ImageService
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
from worker_manager.tenants.quotas import Quotas
from worker_manager.typing import CommandObserver
from worker_manager.workers.fleet.lost_hosts import LostHosts
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

#: How often grants past their time are looked for: a grant outlives its ``ttl_seconds`` by at
#: most this.
GRANT_EXPIRY_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Shared:
    """What every namespace of one manager uses of the fleet's."""

    redis: Redis
    raw_redis: Redis
    docker: DockerClient
    metrics: Metrics
    images: ImageService
    egress: EgressClient
    observe: CommandObserver
    #: The keys of every namespace served (a dead manager is forgotten only when all are empty).
    namespaces: Callable[[], Sequence[Keys]]
    #: Blocking readers are the manager's to close.
    readers: list[Redis]
    #: The watcher of a namespace by its key prefix (None: not served here).
    watcher_of: Callable[[str], StatusWatcher | None]
    #: The namespaces' fair shares of the command path (``commands.fairness``).
    fair: FairShare


class Namespace:
    """One namespace's components and loops; ``tenant`` None is the default namespace."""

    def __init__(
        self,
        settings: Settings,
        shared: Shared,
        *,
        tenant: Tenant | None = None,
        pool: WarmPool | None = None,
        gate: Gate | None = None,
    ) -> None:
        self.settings = s = settings
        self.tenant = tenant
        self.keys = s.keys
        self._shared = shared
        #: This namespace's blocking readers (also in ``shared.readers``, which the manager
        #: closes at its end; :meth:`close_readers` closes them sooner, for a tenant whose
        #: start failed).
        self._readers: list[Redis] = []
        redis, docker = shared.redis, shared.docker
        #: In the supervisor's loop names: "" for the default namespace, "t:<tenant>:" else.
        self.label = f"t:{tenant.name}:" if tenant is not None else ""
        # --- the worker lifecycle ------------------------------------------------------------
        self.store = WorkerStore(
            redis,
            s,
            tenant=tenant,
            others=lambda: [k for k in shared.namespaces() if k.prefix != self.keys.prefix],
        )
        self.acl = WorkerAcl(redis, s)
        self.containment = Containment(s, shared.egress)
        self.containers = ContainerRuntime(s, docker)
        self.services = ServiceRuntime(s, docker)
        creates = WorkerTasks("provision")
        self.evidence = EvidenceBook(redis, s)
        self.grants = WorkerGrants(redis, s.keys)
        self.team_boards = TeamBoards(redis, s)
        self.team_follower = TeamFollower(redis, s, self.team_boards)
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
            shared.images,
            self.containers,
            self.acl,
            self.lifecycle,
            creates,
            self.containment,
            Checkout(
                s,
                docker,
                redis,
                self.containers.volumes,
                self.containment.client if self.containment.enabled else None,
            ),
            services=ServiceStarter(s, self.services, shared.images),
            engine=EngineStarter(s, docker, shared.images, self.services),
            on_started=lambda _worker_id: heartbeat_soon.set(),
        )
        self.reconciler = Reconciler(
            s,
            self.store,
            docker,
            self.containers,
            self.provisioner,
            self.lifecycle,
            self.acl,
            self.ensure_groups,
            self.containment,
            services=self.services,
        )
        self.watcher = StatusWatcher(
            s,
            redis,
            shared.raw_redis,
            self.store,
            docker,
            self.lifecycle,
            wake=heartbeat_soon,
            on_redis_restart=self.reconciler.after_redis_restart,
            dropped=shared.metrics.dropped,
            data_path_started=self.containment.client.started_at
            if self.containment.enabled
            else None,
            summaries=Summaries(s, redis, shared.raw_redis, self.store),
            # The default namespace's reads the Engine's events for every namespace.
            others=shared.watcher_of if tenant is None else None,
        )
        self.lost_hosts = LostHosts(
            s,
            redis,
            shared.raw_redis,
            self.lifecycle,
            observe=shared.metrics.eviction,
            namespaces=shared.namespaces,
        )
        self.sleep = Sleep(s, redis, self.store, self.lifecycle, self.provisioner)
        self.evictor = Evictor(
            s,
            shared.raw_redis,
            self.store,
            self.lifecycle,
            observe=shared.metrics.eviction,
            suspend=self.sleep.suspend,
        )
        self.output_guard = OutputGuard(
            s, redis, self.store, self.lifecycle, shared.metrics.dropped
        )
        self.disk_guard = DiskGuard(s, docker, self.containers, self.store, self.lifecycle)
        # --- the command path ----------------------------------------------------------------
        self.book = ReplyBook(redis, s)
        quotas = Quotas(redis, s.keys, tenant) if tenant is not None else None
        self.forks = Forks(
            s,
            redis,
            self.store,
            SnapshotStore(redis, s.keys),
            StateCopier(s, docker),
            self.containers.volumes,
            self.provisioner,
            self.lifecycle,
            Router(s, redis),
            quotas=quotas,
        )
        self.handlers = Handlers(
            s,
            self.store,
            self.provisioner,
            self.lifecycle,
            Router(s, redis),
            pool=pool,
            sleep=self.sleep,
            forks=self.forks,
            grants=self.grants,
            teams=self.team_boards,
            quotas=quotas,
        )
        self.consumer = self._consumer("consumer", s.keys.commands, self.book, gate=gate)
        # Commands routed to this manager by the others (deletes of workers on this host).
        own_stream = s.keys.manager_commands(s.manager_id)
        self.own_consumer = self._consumer(
            "consumer-own", own_stream, ReplyBook(redis, s, commands_stream=own_stream)
        )
        # Registered producers (the default namespace's): one command stream each, whose
        # sender the manager knows.
        self.producer_consumers = {
            producer: self._consumer(
                f"producer-{producer}",
                s.keys.producer_commands(producer),
                ReplyBook(redis, s, commands_stream=s.keys.producer_commands(producer)),
                producer=producer,
            )
            for producer in (s.producers if tenant is None else [])
        }

    def _consumer(
        self,
        name: str,
        stream: str,
        book: ReplyBook,
        *,
        producer: str | None = None,
        gate: Gate | None = None,
    ) -> CommandConsumer:
        """A consumer of one command stream, with a blocking Redis client of its own."""
        reader = connect(self.settings, blocking=True, name=f"{self.label}{name}", decode=False)
        self._shared.readers.append(reader)
        self._readers.append(reader)
        dispatcher = Dispatcher(
            self.settings,
            self._shared.redis,
            book,
            self.handlers,
            observe=self._shared.observe,
            producer=producer,
            audit=AuditLog(self._shared.redis, self.settings),
        )
        return CommandConsumer(
            self.settings,
            self._shared.redis,
            reader,
            dispatcher,
            stream=stream,
            gate=gate,
            fair=self._shared.fair,
            namespace=self.keys.prefix,
        )

    async def ensure_groups(self) -> None:
        await self.consumer.ensure_group()
        await self.own_consumer.ensure_group()
        await self.team_follower.ensure_group()
        for consumer in self.producer_consumers.values():
            await consumer.ensure_group()

    async def start_up(self) -> None:
        """Before its commands are taken: the groups, then the creates a crash interrupted."""
        await self.ensure_groups()
        await self.reconciler.reconcile()

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

    def start_loops(
        self,
        sup: Supervisor,
        taking: Callable[[CommandConsumer], Callable[[asyncio.Event], Awaitable[None]]],
        *,
        shared_stream: bool,
    ) -> None:
        """This namespace's loops under the manager's supervisor. ``shared_stream``: its shared
        command stream too (the default namespace's is read by the manager's own run)."""
        s, n = self.settings, self.label
        sup.every(
            f"{n}heartbeats",
            self.watcher.heartbeat_round,
            s.watch_interval_seconds,
            wake=self.watcher.wake,
        )
        if self.tenant is None:  # one events stream per host: the default watcher's
            sup.forever(f"{n}docker-events", self.watcher.docker_events)
        sup.every(
            f"{n}lost-hosts", self.lost_hosts.round, s.watch_interval_seconds, wait_first=True
        )
        sup.every(f"{n}eviction", self.evictor.sweep, s.eviction_interval_seconds)
        sup.every(f"{n}output-trim", self.output_guard.round, s.output_trim_interval_seconds)
        sup.every(f"{n}disk", self.disk_guard.round, s.disk_check_interval_seconds, wait_first=True)
        sup.every(f"{n}sleepers", self.sleep.round, s.watch_interval_seconds, wait_first=True)
        sup.every(f"{n}snapshots", self._expire_snapshots, 3600, wait_first=True)
        sup.every(f"{n}grants", self._expire_grants, GRANT_EXPIRY_SECONDS, wait_first=True)
        sup.every(
            f"{n}reconcile",
            self.reconciler.periodic,
            s.reconcile_interval_seconds,
            wait_first=True,
        )
        if shared_stream:
            sup.forever(f"{n}consumer", taking(self.consumer))
        sup.every(
            f"{n}consumer-upkeep",
            self.consumer.upkeep,
            self.consumer.upkeep_interval,
            wait_first=True,
        )
        sup.every(
            f"{n}own-consumer-upkeep",
            self.own_consumer.upkeep,
            self.own_consumer.upkeep_interval,
            wait_first=True,
        )
        sup.forever(f"{n}own-consumer", self._run_own_consumer)
        for producer, consumer in self.producer_consumers.items():
            sup.forever(f"{n}producer-{producer}", taking(consumer))
            sup.every(
                f"{n}producer-{producer}-upkeep",
                consumer.upkeep,
                consumer.upkeep_interval,
                wait_first=True,
            )
        sup.forever(f"{n}teams", self.team_follower.follow)
        sup.every(f"{n}dead-letters", self.book.age_out_dead_letters, 60.0, wait_first=True)

    async def _run_own_consumer(self, stop: asyncio.Event) -> None:
        """Until the very end, also while draining: only this manager can act on its host."""
        await self.own_consumer.run(stop, grace=5.0)

    async def close_readers(self) -> None:
        for reader in self._readers:
            self._shared.readers.remove(reader)
            await reader.aclose()
        self._readers.clear()

    async def close(self) -> None:
        """Creates in progress and the lifecycle's tasks end (the manager is stopping)."""
        await self.provisioner.close()
        await self.lifecycle.close()
