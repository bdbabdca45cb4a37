"""Test helpers that drive the service through its real interfaces and wait on events."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

import docker
from redis.asyncio import Redis

from worker_manager.client.requests import CommandClient
from worker_manager.service.manager import Manager
from worker_manager.settings import Settings


class Harness:
    def __init__(
        self, settings: Settings, redis: Redis, docker_client: docker.DockerClient
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.docker = docker_client
        self.client = CommandClient(redis, settings.keys)
        self.keys = settings.keys
        self._running: list[tuple[Manager, asyncio.Task[None]]] = []

    def tenant(self, name: str) -> Harness:
        """The same Redis and Engine seen by a client of tenant ``name`` (SPEC §11): its keys,
        its command stream; managers are started (and stopped) by the harness it came from."""
        return Harness(self.settings.for_tenant(name), self.redis, self.docker)

    async def start(self, **overrides: Any) -> Manager:
        """A manager with these settings changed; ``http=True`` also serves its endpoints."""
        http = bool(overrides.pop("http", False))
        settings = self.settings.model_copy(update=overrides) if overrides else self.settings
        manager = Manager(settings, docker=self.docker, http=http)
        task = asyncio.create_task(manager.run(grace=5))
        ready = asyncio.create_task(manager.ready.wait())
        done, _ = await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # raises what stopped it
        assert ready in done, "manager did not become ready"
        self._running.append((manager, task))
        return manager

    async def stop(self, manager: Manager) -> None:
        for i, (m, task) in enumerate(self._running):
            if m is manager:
                manager.stop.set()
                await asyncio.wait_for(task, 30)
                await manager.close()
                del self._running[i]
                return

    async def close(self) -> None:
        for manager, _task in list(self._running):
            await self.stop(manager)

    async def wait_status(self, worker_id: str, *wanted: str, timeout: float = 120) -> str:
        """Follow the lifecycle stream until the worker reaches one of ``wanted``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = "0-0"
        while (left := deadline - loop.time()) > 0:
            record = await self.redis.hget(self.keys.worker(worker_id), "status")
            if record in wanted:
                return str(record)
            response = await self.redis.xread(
                {self.keys.lifecycle: last}, block=int(min(left, 1.0) * 1000), count=100
            )
            for _s, entries in response or []:
                for entry_id, fields in entries:
                    last = entry_id
                    if fields["worker_id"] == worker_id and fields["to"] in wanted:
                        return str(fields["to"])
        status = await self.redis.hget(self.keys.worker(worker_id), "status")
        raise AssertionError(f"worker {worker_id} is {status}, not {wanted}, after {timeout}s")

    async def events_until_done(
        self, worker_id: str, *, input_id: str | None = None, timeout: float = 60
    ) -> list[dict[str, str]]:
        """Output events (oldest first) up to and including the ``done`` of ``input_id``."""
        return await self.events_until(
            worker_id,
            lambda fields: (
                fields.get("type") == "done"
                and (input_id is None or fields.get("input_id") == input_id)
            ),
            timeout=timeout,
            what="done event",
        )

    async def events_until(
        self,
        worker_id: str,
        predicate: Callable[[dict[str, str]], bool],
        *,
        timeout: float = 60,
        what: str = "matching event",
    ) -> list[dict[str, str]]:
        """Output events (oldest first) up to and including the first that matches."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen: list[dict[str, str]] = []
        last = "0-0"
        stream = self.keys.output(worker_id)
        while (left := deadline - loop.time()) > 0:
            response = await self.redis.xread(
                {stream: last}, block=int(min(left, 1.0) * 1000), count=1000
            )
            for _s, entries in response or []:
                for entry_id, fields in entries:
                    last = entry_id
                    seen.append(fields)
                    if predicate(fields):
                        return seen
        raise AssertionError(f"no {what} within {timeout}s; saw {json.dumps(seen)[:2000]}")

    def container(self, worker_id: str) -> Any:
        with contextlib.suppress(docker.errors.NotFound):
            return self.docker.containers.get(self.keys.docker_name(worker_id))
        return None

    async def wait_container_gone(self, worker_id: str, timeout: float = 30) -> None:
        """Until Docker no longer knows the worker's container (polled: removal has no stream)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while await asyncio.to_thread(self.container, worker_id) is not None:
            assert loop.time() < deadline, f"container of {worker_id} still exists"
            await asyncio.sleep(0.1)
