"""The client's typed errors: one class per ``error`` code of SPEC §2, and a worker's end."""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker_manager.contract.reply import Reply

if TYPE_CHECKING:
    from worker_manager.client.models import WorkerInfo


# --- errors ------------------------------------------------------------------------------------
class WorkerManagerError(Exception):
    """A command was answered with ``ok=false``."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.retry_after = retry_after


class InvalidCommandError(WorkerManagerError):
    code = "invalid_command"


class NotFoundError(WorkerManagerError):
    code = "not_found"


class CapacityExceededError(WorkerManagerError):
    """No room now: wait ``retry_after`` seconds and try again (maybe another manager)."""

    code = "capacity_exceeded"


class QuotaExceededError(WorkerManagerError):
    """The tenant's quota (``max_workers`` or ``max_cost_usd_per_day``) is used up (SPEC §11)."""

    code = "quota_exceeded"


class BuildFailedError(WorkerManagerError):
    code = "build_failed"


class ConflictError(WorkerManagerError):
    code = "conflict"


class InternalError(WorkerManagerError):
    code = "internal"


_ERRORS: dict[str, type[WorkerManagerError]] = {
    cls.code: cls
    for cls in (
        InvalidCommandError,
        NotFoundError,
        CapacityExceededError,
        QuotaExceededError,
        BuildFailedError,
        ConflictError,
        InternalError,
    )
}


class WorkerEnded(Exception):
    """The worker is STOPPED or FAILED (while waiting for it to run, or to answer)."""

    def __init__(self, info: WorkerInfo) -> None:
        reason = f": {info.reason}" if info.reason else ""
        super().__init__(f"worker {info.worker_id} is {info.status}{reason}")
        self.info = info
        self.status = info.status
        self.reason = info.reason


class WorkspaceRequestError(Exception):
    """A workspace request (SPEC §8: read, write, list, diff) was refused or failed; the
    message is the worker's ``error`` event."""


def raise_for(reply: Reply) -> Reply:
    if reply.ok:
        return reply
    code = reply.error or "internal"
    cls = _ERRORS.get(code, WorkerManagerError)
    raise cls(reply.message or code, code=code, retry_after=reply.retry_after)
