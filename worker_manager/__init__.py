"""worker-manager: the control plane for fleets of coding-agent workers.

Commands arrive on the Redis stream ``<prefix>:commands``; each worker runs in a hardened Docker
container whose wrapper (:mod:`worker_base`) talks to Redis directly. See ``docs/contract.md`` for
the wire contract, ``README.md`` to start and ``docs/`` for operating the service.
"""

from worker_manager.client.api import (
    BuildFailedError,
    CapacityExceededError,
    Client,
    ConflictError,
    Diff,
    Event,
    FileEntry,
    InternalError,
    InvalidCommandError,
    LifecycleEvent,
    NotFoundError,
    ReplyTimeout,
    RunResult,
    Worker,
    WorkerEnded,
    WorkerInfo,
    WorkerManagerError,
    WorkspaceRequestError,
)
from worker_manager.contract.kinds import AgentType, Module, WorkerStatus
from worker_manager.contract.reply import Reply
from worker_manager.settings import Settings

__version__ = "0.1.0"

__all__ = [
    "AgentType",
    "BuildFailedError",
    "CapacityExceededError",
    "Client",
    "ConflictError",
    "Diff",
    "Event",
    "FileEntry",
    "InternalError",
    "InvalidCommandError",
    "LifecycleEvent",
    "Module",
    "NotFoundError",
    "Reply",
    "ReplyTimeout",
    "RunResult",
    "Settings",
    "Worker",
    "WorkerEnded",
    "WorkerInfo",
    "WorkerManagerError",
    "WorkerStatus",
    "WorkspaceRequestError",
]
