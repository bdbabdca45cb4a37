"""Workspaces (SPEC §8): checkouts, what the wrapper answers about files, sleeping workers.

Which repositories a create may name is ``WM_WORKSPACE_SOURCES`` (``CommandLimits``: it is
checked where a command is).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from worker_manager.contract.limits import MIB


class WorkspaceSettings(BaseModel):
    checkout_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        description="A create's repository must be checked out within this (the fetch of a new "
        "mirror included); past it the worker is FAILED workspace_failed.",
    )
    workspace_max_file_bytes: int = Field(
        default=8 * MIB,
        ge=1024,
        description="The most a read, write or diff answered by the wrapper carries.",
    )
    idle_action: Literal["delete", "suspend"] = Field(
        default="delete",
        description="What an idle worker (WM_IDLE_TIMEOUT_SECONDS) becomes: STOPPED idle "
        "(delete), or SUSPENDED with its workspace and session kept (suspend).",
    )
    max_suspended: int = Field(
        default=100,
        ge=0,
        description="Suspended workers one manager keeps at most (they do not count against "
        "WM_MAX_WORKERS); a suspend past it is refused with capacity_exceeded.",
    )
    snapshot_retention_days: float = Field(
        default=30.0,
        gt=0,
        description="A snapshot nobody took or started a worker from for this long is removed "
        "(its record and volumes), by the manager whose host holds it.",
    )
    workspace_retention_days: float = Field(
        default=7.0,
        gt=0,
        description="A suspended worker is deleted (its volumes with it) this long after it was "
        "suspended; volumes and mirrors nobody owns any more are removed by GC.",
    )
