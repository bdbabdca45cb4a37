"""What each command does (SPEC §1–§3). Reads answer from Redis alone; a create is answered as
soon as it is accepted and provisioned in the background; a delete answers once the container is
gone. Handlers raise :class:`CommandError` for answers with ``ok=false``.
"""

from __future__ import annotations

import json
import uuid

from worker_manager.config import Settings
from worker_manager.errors import CommandError, ErrorCode
from worker_manager.models import (
    CreateCommand,
    DeleteCommand,
    ListCommand,
    Reply,
    StatusCommand,
    WorkerStatus,
)
from worker_manager.provisioner import Provisioner
from worker_manager.records import WorkerStore, public_view

#: worker ids the manager chooses derive from the request id, so a create delivered twice (or
#: resumed after a crash) names the same worker instead of starting a second one.
WORKER_ID_NAMESPACE = uuid.UUID("6f1c2a4e-5b8d-4e0f-9a7c-3d2b1e0f4a59")


class Handlers:
    def __init__(self, settings: Settings, store: WorkerStore, provisioner: Provisioner) -> None:
        self._settings = settings
        self._store = store
        self._provisioner = provisioner

    async def create(self, cmd: CreateCommand) -> Reply:
        worker_id = cmd.worker_id or str(uuid.uuid5(WORKER_ID_NAMESPACE, cmd.request_id))
        spec = cmd.model_dump(mode="json", exclude={"prompt", "request_id", "reply_to"})
        outcome = await self._store.create(
            worker_id,
            request_id=cmd.request_id,
            fields={
                "agent_type": cmd.agent_type.value,
                "modules": json.dumps([m.value for m in cmd.modules]),
                "metadata": json.dumps(cmd.metadata, separators=(",", ":")),
            },
            spec=spec,
            prompt=cmd.prompt,
            max_live=self._settings.max_workers,
        )
        if outcome.result == "capacity":
            raise CommandError(
                ErrorCode.CAPACITY_EXCEEDED,
                f"this manager runs its maximum of {self._settings.max_workers} live workers; "
                "delete one or retry later",
                retry_after=self._settings.capacity_retry_after_seconds,
            )
        if outcome.result == "exists" and outcome.request_id != cmd.request_id:
            raise CommandError(
                ErrorCode.CONFLICT,
                f"worker {worker_id} already exists (created by another request); "
                "choose another worker_id or omit it",
            )
        if outcome.status == WorkerStatus.STARTING:
            self._provisioner.start(worker_id)
        return Reply(
            request_id=cmd.request_id,
            command="create",
            ok=True,
            worker_id=worker_id,
            status=outcome.status,
        )

    async def delete(self, cmd: DeleteCommand) -> Reply:
        record = await self._store.get(cmd.worker_id)
        if record is None:
            raise _not_found(cmd.worker_id)
        await self._store.transition(cmd.worker_id, WorkerStatus.STOPPED, "deleted")
        await self._provisioner.cancel(cmd.worker_id)
        exit_code = await self._provisioner.teardown(cmd.worker_id)
        if exit_code is not None:
            await self._store.update(cmd.worker_id, {"exit_code": str(exit_code)})
        record = await self._store.get(cmd.worker_id) or record
        return Reply(
            request_id=cmd.request_id,
            command="delete",
            ok=True,
            worker_id=cmd.worker_id,
            status=record.get("status", WorkerStatus.STOPPED.value),
        )

    async def status(self, cmd: StatusCommand) -> Reply:
        record = await self._store.get(cmd.worker_id)
        if record is None:
            raise _not_found(cmd.worker_id)
        return Reply(
            request_id=cmd.request_id,
            command="status",
            ok=True,
            worker_id=cmd.worker_id,
            status=record.get("status"),
            ip_address=record.get("ip_address") or None,
        )

    async def list(self, cmd: ListCommand) -> Reply:
        records = await self._store.list()
        return Reply(
            request_id=cmd.request_id,
            command="list",
            ok=True,
            workers=[public_view(record) for record in records],
        )


def _not_found(worker_id: str) -> CommandError:
    return CommandError(
        ErrorCode.NOT_FOUND,
        f"no worker {worker_id}: it never existed or its record expired after it stopped",
    )
