"""``worker-manager serve``: the consumer, the status watcher and the background loops, wired.

:class:`Manager` owns every long-lived object and their order of start and stop. SIGTERM stops
reading commands, lets in-flight ones finish within the grace period (the rest stay pending for
another manager) and exits 0; worker containers are left running: they are not our processes.
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
from worker_manager.handlers import Handlers
from worker_manager.images import ImageService
from worker_manager.logs import get_logger, redact_url
from worker_manager.models import WorkerStatus
from worker_manager.provisioner import Provisioner
from worker_manager.records import WorkerStore
from worker_manager.replies import ReplyBook
from worker_manager.watcher import StatusWatcher

log = get_logger(__name__)

BackgroundLoop = Callable[[asyncio.Event], Awaitable[None]]


class Manager:
    def __init__(
        self,
        settings: Settings,
        *,
        redis: Redis | None = None,
        docker: DockerClient | None = None,
        observe: Observer | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis or connect(settings, name="main")
        self.blocking_redis = connect(settings, blocking=True, name="consumer")
        self.docker = docker or docker_client.connect()
        self.store = WorkerStore(self.redis, settings)
        self.book = ReplyBook(self.redis, settings)
        self.acl = WorkerAcl(self.redis, settings)
        self.images = ImageService(settings, self.redis, self.docker)
        self.containers = ContainerRuntime(settings, self.docker)
        self.provisioner = Provisioner(settings, self.store, self.images, self.containers, self.acl)
        self.handlers = Handlers(settings, self.store, self.provisioner)
        kwargs = {"observe": observe} if observe else {}
        self.dispatcher = Dispatcher(settings, self.redis, self.book, self.handlers, **kwargs)
        self.consumer = CommandConsumer(settings, self.redis, self.blocking_redis, self.dispatcher)
        self.watcher = StatusWatcher(
            settings, self.redis, self.store, self.docker, self.provisioner.teardown
        )
        self.stop = asyncio.Event()
        self.ready = asyncio.Event()
        self._extra_loops: list[BackgroundLoop] = []

    def add_loop(self, loop: BackgroundLoop) -> None:
        """Run another background loop (HTTP, GC schedule, reconciler) for the service's life."""
        self._extra_loops.append(loop)

    async def start_up(self) -> None:
        """Checks that must pass before commands are taken, then finish interrupted creates."""
        await self.redis.ping()
        await self.acl.check_admin()
        await self.consumer.ensure_group()
        await self.resume_interrupted_creates()

    async def resume_interrupted_creates(self) -> None:
        """A STARTING worker of ours without a container was mid-create when we stopped."""
        for worker_id in await self.store.live_ids():
            record = await self.store.get(worker_id)
            if record and record.get("status") == WorkerStatus.STARTING and not record.get(
                "container_id"
            ):
                log.info("resuming an interrupted create", worker_id=worker_id)
                self.provisioner.start(worker_id)

    async def run(self, *, grace: float = 10.0) -> None:
        log.info(
            "worker-manager starting",
            manager_id=self.settings.manager_id,
            redis=redact_url(self.settings.redis_url),
            key_prefix=self.settings.key_prefix,
        )
        await self.start_up()
        self.ready.set()
        loops = [
            asyncio.create_task(self.watcher.run(self.stop), name="watcher"),
            *(asyncio.create_task(loop(self.stop)) for loop in self._extra_loops),
        ]
        try:
            await self.consumer.run(self.stop, grace=grace)
        finally:
            self.stop.set()
            await self.provisioner.close()
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            log.info("worker-manager stopped")

    async def close(self) -> None:
        await self.redis.aclose()
        await self.blocking_redis.aclose()
        with contextlib.suppress(Exception):
            self.docker.close()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("stopping: no new commands; finishing those in flight", signal=sig.name)
        self.stop.set()


async def serve(settings: Settings, *, grace: float = 10.0) -> None:
    manager = Manager(settings)
    manager.install_signal_handlers()
    try:
        await manager.run(grace=grace)
    finally:
        await manager.close()
