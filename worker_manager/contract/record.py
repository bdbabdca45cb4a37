"""The worker record of SPEC §3 as the manager reads it: its fields, and its public view.

Records are Redis hashes whose fields are all strings; :class:`WorkerRecord` is one read once
at the Redis boundary (``WorkerStore.get``) and typed, so the code past it asks
``record.status.is_live`` instead of comparing strings in a dict.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from worker_manager.contract.kinds import WorkerStatus
from worker_manager.core.clock import unix_or_none

#: The fields SPEC §3 names, in the order status replies and tables show them.
RECORD_FIELDS = (
    "worker_id",
    "status",
    "agent_type",
    "modules",
    "image",
    "image_hash",
    "container_id",
    "ip_address",
    "created_at",
    "started_at",
    "stopped_at",
    "last_activity_at",
    "exit_code",
    "reason",
    "metadata",
    "cost_usd",
    "progress",
    "egress",
    "workspace",
    "suspended_at",
    "environment",
    "services",
    "team",
)


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """A worker's record, typed once where it is read from Redis.

    Every field is as forgiving as the code that judges it needs: a time that does not parse is
    None and an unknown status is None (a corrupt record is that worker's problem, never an
    exception in a loop over all of them). ``fields`` keeps the stored strings, which replies
    and ``list`` show verbatim.
    """

    worker_id: str
    status: WorkerStatus | None
    manager_id: str = ""
    created_at: float | None = None
    started_at: float | None = None
    last_activity_at: float | None = None
    #: As the record holds it (a decimal string), to compare with what a heartbeat reports.
    cost_usd: str = ""
    exit_code: int | None = None
    container_id: str = ""
    ip_address: str = ""
    idle_timeout_seconds: float | None = None
    #: The warm-pool shape this worker was taken from ("" when it was started for its create).
    pool: str = ""
    fields: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_hash(cls, worker_id: str, values: Mapping[str, str]) -> WorkerRecord | None:
        """The record of one ``HGETALL`` (or ``HMGET`` of some fields); None when it is empty."""
        if not values:
            return None
        return cls(
            worker_id=values.get("worker_id") or worker_id,
            status=_status(values.get("status")),
            manager_id=values.get("manager_id", ""),
            created_at=unix_or_none(values.get("created_at")),
            started_at=unix_or_none(values.get("started_at")),
            last_activity_at=unix_or_none(values.get("last_activity_at")),
            cost_usd=values.get("cost_usd", ""),
            exit_code=_integer(values.get("exit_code")),
            container_id=values.get("container_id", ""),
            ip_address=values.get("ip_address", ""),
            idle_timeout_seconds=_number(values.get("idle_timeout_seconds")),
            pool=values.get("pool", ""),
            fields=dict(values),
        )

    @property
    def is_live(self) -> bool:
        return self.status is not None and self.status.is_live

    def text(self, name: str) -> str:
        """A stored field as it is stored ("" when unset)."""
        return str(self.fields.get(name, ""))

    def public(self) -> dict[str, Any]:
        return public_view(self.fields)


def _status(value: str | None) -> WorkerStatus | None:
    if value is None or value not in WorkerStatus.__members__:
        return None
    return WorkerStatus(value)


def _integer(value: str | None) -> int | None:
    return int(value) if value and value.lstrip("-").isdigit() else None


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def public_view(record: Mapping[str, str]) -> dict[str, Any]:
    """A record as a JSON worker object: SPEC §3 fields, JSON fields decoded."""
    view: dict[str, Any] = {}
    for name in (*RECORD_FIELDS, "manager_id"):
        value = record.get(name, "")
        if name in ("modules", "metadata"):
            view[name] = _json_field(value, list if name == "modules" else dict)
        elif name == "workspace":
            view[name] = _json_field(value, dict) if value else None
        elif name == "egress":
            # null when the record holds no grant (one written before grants were kept),
            # which is not the same as [] (granted nothing).
            view[name] = _json_field(value, list) if value else None
        elif name == "exit_code":
            view[name] = int(value) if value.lstrip("-").isdigit() else None
        else:
            view[name] = value
    return view


def _json_field(value: str, kind: type[list[Any]] | type[dict[str, Any]]) -> Any:
    """A JSON field of a record; one that is not JSON of the right shape reads as empty (a
    corrupt record must not make every ``list`` fail)."""
    try:
        parsed = json.loads(value) if value else kind()
    except ValueError:
        return kind()
    return parsed if isinstance(parsed, kind) else kind()
