"""What the client gives back: worker records, output events, runs and lifecycle changes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from worker_base.events import EventType
from worker_manager.contract.kinds import LIVE_STATUSES, WorkerStatus
from worker_manager.contract.reasons import EndReason, parse_end_reason
from worker_manager.contract.reply import Reply


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker's record as ``status`` and ``list`` answer it (SPEC §3)."""

    worker_id: str
    status: str
    reason: str = ""
    exit_code: int | None = None
    agent_type: str = ""
    modules: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    started_at: str = ""
    stopped_at: str = ""
    last_activity_at: str = ""
    cost_usd: float | None = None
    progress: str = ""
    manager_id: str = ""
    image: str = ""
    ip_address: str = ""
    #: The destinations the worker may reach (canonical); None when its record holds no grant.
    egress: list[str] | None = None
    #: The last workspace summary (SPEC §8: ``head``, ``branch``, ``changed``, ``untracked``,
    #: ``conflicts``); None before the first one.
    workspace: dict[str, Any] | None = None
    suspended_at: str = ""
    #: Its environment (SPEC §9): the catalogue's name, or ``sha256:<hex>`` of an ad hoc spec;
    #: "" without one.
    environment: str = ""
    #: Its services (SPEC §9): name -> state (``starting``, ``running``, ``stopped`` while it
    #: is suspended, ``exited with code N``, ``removed``); empty without any.
    services: dict[str, str] = field(default_factory=dict)

    @property
    def is_live(self) -> bool:
        return self.status in LIVE_STATUSES

    @property
    def ending(self) -> EndReason | None:
        """Why it ended, typed (``contract.reasons``: its ``status`` and the ``source`` that
        gives it); None while it is not STOPPED or FAILED, or for a reason this client does not
        know (a deployment may add its own)."""
        if self.status not in (WorkerStatus.STOPPED, WorkerStatus.FAILED):
            return None
        return parse_end_reason(self.reason)

    @classmethod
    def from_reply(cls, reply: Reply) -> WorkerInfo:
        details = dict(reply.details or {})
        return cls.from_fields(
            {
                **details,
                "worker_id": reply.worker_id or "",
                "status": reply.status or "",
                "ip_address": reply.ip_address or "",
            }
        )

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> WorkerInfo:
        """From a list entry (JSON values) or a status reply's details (strings)."""

        def as_json(name: str, empty: Any) -> Any:
            value = fields.get(name)
            if isinstance(value, str):
                try:
                    value = json.loads(value) if value else empty
                except ValueError:
                    return empty
            return value if isinstance(value, type(empty)) else empty

        exit_code = fields.get("exit_code")
        cost = fields.get("cost_usd")
        egress = as_json("egress", []) if fields.get("egress") not in (None, "") else None
        workspace = as_json("workspace", {}) if fields.get("workspace") not in (None, "") else None
        return cls(
            worker_id=str(fields.get("worker_id") or ""),
            status=str(fields.get("status") or ""),
            reason=str(fields.get("reason") or ""),
            exit_code=int(str(exit_code)) if str(exit_code or "").lstrip("-").isdigit() else None,
            agent_type=str(fields.get("agent_type") or ""),
            modules=as_json("modules", []),
            metadata=as_json("metadata", {}),
            created_at=str(fields.get("created_at") or ""),
            started_at=str(fields.get("started_at") or ""),
            stopped_at=str(fields.get("stopped_at") or ""),
            last_activity_at=str(fields.get("last_activity_at") or ""),
            cost_usd=float(cost) if cost not in (None, "") else None,
            progress=str(fields.get("progress") or ""),
            manager_id=str(fields.get("manager_id") or ""),
            image=str(fields.get("image") or ""),
            ip_address=str(fields.get("ip_address") or ""),
            egress=[str(entry) for entry in egress] if egress is not None else None,
            workspace=workspace,
            suspended_at=str(fields.get("suspended_at") or ""),
            environment=str(fields.get("environment") or ""),
            services={str(k): str(v) for k, v in as_json("services", {}).items()},
        )


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of a worker's output stream (SPEC §4)."""

    id: str
    type: str
    content: str
    timestamp: str
    input_id: str

    def json(self) -> Any:
        """``content`` parsed (``result``, ``tool_use``, ``tool_result``, ``status``)."""
        return json.loads(self.content)


@dataclass(frozen=True, slots=True)
class Diff:
    """A worker's ``diff`` answer (SPEC §8): the patch against the commit it started from."""

    base: str
    patch: str
    truncated: bool
    size: int

    @classmethod
    def from_json(cls, data: Any) -> Diff:
        data = data if isinstance(data, dict) else {}
        return cls(
            base=str(data.get("base", "")),
            patch=str(data.get("patch", "")),
            truncated=bool(data.get("truncated")),
            size=int(data.get("size") or 0),
        )


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One entry of a ``list`` answer: its name, ``file``, ``directory``, ``symlink`` or
    ``other``, and its size in bytes."""

    name: str
    type: str
    size: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileEntry:
        return cls(str(data.get("name", "")), str(data.get("type", "")), int(data.get("size") or 0))


@dataclass(frozen=True, slots=True)
class RunResult:
    """What one input produced, from its first event to its ``done``."""

    input_id: str
    exit_code: int
    events: list[Event]

    @property
    def text(self) -> str:
        """The agent's answer: its ``assistant`` messages, or its ``stdout`` lines when it
        sent none (a CUSTOM agent), joined by newlines."""
        said = [e.content for e in self.events if e.type == EventType.ASSISTANT]
        if not said:
            said = [e.content for e in self.events if e.type == EventType.STDOUT]
        return "\n".join(said)

    @property
    def result(self) -> dict[str, Any] | None:
        """The agent's ``result`` payload (CLAUDE, FACTORY), if it printed one."""
        found = [e for e in self.events if e.type == EventType.RESULT]
        return found[-1].json() if found else None

    @property
    def errors(self) -> list[str]:
        return [e.content for e in self.events if e.type == EventType.ERROR]


@dataclass(frozen=True, slots=True)
class LifecycleEvent:
    """One status change from ``<prefix>:lifecycle``."""

    id: str
    worker_id: str
    from_status: str
    to_status: str
    reason: str
    timestamp: str


def event(entry_id: str, fields: dict[str, str]) -> Event:
    return Event(
        entry_id,
        fields.get("type", ""),
        fields.get("content", ""),
        fields.get("timestamp", ""),
        fields.get("input_id", ""),
    )


def ended(event: Event) -> bool:
    """A ``status`` event the manager wrote when the worker stopped or failed."""
    try:
        payload = event.json()
    except ValueError:
        return False
    return isinstance(payload, dict) and payload.get("worker_status") in ("STOPPED", "FAILED")
