"""One reply entry (SPEC §2) and the record fields a status reply carries."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict

#: The fields a dead letter adds to the command it keeps (``<prefix>:dead``): a replay strips
#: them before sending the command again.
DEAD_FIELD_PREFIX = "dead_"

#: The record fields a status reply carries besides ``status`` and ``ip_address`` (SPEC §2).
STATUS_DETAILS = (
    "reason",
    "exit_code",
    "agent_type",
    "modules",
    "created_at",
    "started_at",
    "stopped_at",
    "last_activity_at",
    "metadata",
    "cost_usd",
    "progress",
    "manager_id",
    "image",
    "egress",
    "workspace",
    "suspended_at",
    "environment",
    "services",
    "forked_from",
    "snapshot",
    "team",
)


class Reply(BaseModel):
    """One reply entry (SPEC §2); ``to_fields`` gives the flat stream entry."""

    model_config = ConfigDict(frozen=True)

    request_id: str
    command: str
    ok: bool
    worker_id: str | None = None
    status: str | None = None
    ip_address: str | None = None
    workers: list[dict[str, Any]] | None = None
    error: str | None = None
    message: str | None = None
    retry_after: float | None = None
    #: For status: the record's public fields (SPEC §2), as the record holds them.
    details: dict[str, str] | None = None
    #: For list: where the next page starts (absent on the last page).
    next_cursor: str | None = None
    #: For fork: the new workers' ids (SPEC §2).
    worker_ids: list[str] | None = None
    #: For snapshot: the snapshot kept; for list_snapshots: all of them (SPEC §2).
    snapshot: dict[str, Any] | None = None
    snapshots: list[dict[str, Any]] | None = None
    #: For grant: the credential (SPEC §11), and when it stops working.
    username: str | None = None
    password: str | None = None
    expires_at: str | None = None
    #: For team_post: the board entry's stream id.
    entry_id: str | None = None

    def to_fields(self) -> dict[str, str]:
        out: dict[str, str] = {
            "request_id": self.request_id,
            "command": self.command,
            "ok": "true" if self.ok else "false",
        }
        for name in (
            "worker_id",
            "status",
            "ip_address",
            "error",
            "message",
            "next_cursor",
            "username",
            "password",
            "expires_at",
            "entry_id",
        ):
            value = getattr(self, name)
            if value:
                out[name] = str(value)
        if self.workers is not None:
            out["workers"] = json.dumps(self.workers, separators=(",", ":"))
        for name in ("worker_ids", "snapshot", "snapshots"):
            value = getattr(self, name)
            if value is not None:
                out[name] = json.dumps(value, separators=(",", ":"))
        if self.retry_after is not None:
            out["retry_after"] = f"{self.retry_after:g}"
        for name, value in (self.details or {}).items():
            if value and name not in out:
                out[name] = value
        return out

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> Reply:
        workers = fields.get("workers")
        retry = fields.get("retry_after")
        parsed = {
            name: json.loads(fields[name])
            for name in ("worker_ids", "snapshot", "snapshots")
            if fields.get(name) and fields.get("command") != "status"
        }
        return cls(
            request_id=fields.get("request_id", ""),
            command=fields.get("command", ""),
            ok=fields.get("ok") == "true",
            worker_id=fields.get("worker_id"),
            status=fields.get("status"),
            ip_address=fields.get("ip_address"),
            workers=json.loads(workers) if workers else None,
            error=fields.get("error"),
            message=fields.get("message"),
            retry_after=float(retry) if retry else None,
            next_cursor=fields.get("next_cursor") or None,
            worker_ids=parsed.get("worker_ids"),
            snapshot=parsed.get("snapshot"),
            snapshots=parsed.get("snapshots"),
            username=fields.get("username") or None,
            password=fields.get("password") or None,
            expires_at=fields.get("expires_at") or None,
            entry_id=fields.get("entry_id") or None,
            details={k: v for k, v in fields.items() if k in STATUS_DETAILS} or None,
        )
