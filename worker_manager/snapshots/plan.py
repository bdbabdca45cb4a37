"""What a fork or a create from a snapshot makes, decided over data alone (SPEC §10).

* **may it be copied now**: a RUNNING source between inputs (no input pending or waiting in its
  stream: :func:`idle_inputs`), or a SUSPENDED one; anything else is a ``conflict``;
* **the copies' ids**: the caller's, or derived from the request id (a redelivered fork makes
  the same ids, so it is idempotent like a create);
* **a copy's spec**: the source's saved create as it is (shape, environment, grant, services'
  definitions, metadata, budgets), with its own id, and its budget what the source had left;
* **a copy's record**: what the source's record says of its shape, grant and workspace (the
  commit and mirror it was checked out from, so the copy never clones again), plus
  ``forked_from`` or ``snapshot``;
* **a create from a snapshot**: the snapshot's shape and workspace, the create's own ``egress``,
  ``env``, ``metadata``, budgets, timeouts, ``services`` and ``prompt``; an ``agent_type`` that
  differs is refused.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from worker_manager.contract.kinds import WorkerStatus
from worker_manager.contract.record import WorkerRecord

#: Record fields a copy takes from its source (its shape, grant and workspace).
COPIED_FIELDS = (
    "agent_type",
    "modules",
    "metadata",
    "egress",
    "environment",
    "workspace_base",
    "mirror",
    "repository_url",
)
#: Spec fields a create from a snapshot takes from its own command (SPEC §10).
CREATE_OWN = (
    "egress",
    "env",
    "metadata",
    "max_cost_usd",
    "max_turns",
    "input_timeout_seconds",
    "idle_timeout_seconds",
    "services",
)
_IDS = uuid.UUID("5b7c5d0e-8f0a-4c1e-9d6b-2a4f3e1c0b9d")


def copy_problem(status: WorkerStatus | None, busy: bool) -> str | None:
    """Why a worker cannot be copied now (a ``conflict``), or None."""
    if status is WorkerStatus.SUSPENDED:
        return None
    if status is not WorkerStatus.RUNNING:
        shown = status.value if status is not None else "gone"
        return f"is {shown}: only a RUNNING worker between inputs, or a SUSPENDED one, is copied"
    if busy:
        return "is busy with an input: retry after its done"
    return None


def idle_inputs(groups: list[dict[str, Any]], last_entry: str | None) -> bool:
    """Whether the wrapper has nothing in hand: no input delivered and not yet acknowledged
    (``XINFO GROUPS``' ``pending``), none waiting to be read (the stream's last entry is at or
    before the group's ``last-delivered-id``)."""
    group = next((g for g in groups if _text(g.get("name")) == "wrapper"), None)
    if group is None:
        return last_entry is None
    if int(group.get("pending") or 0) > 0:
        return False
    if last_entry is None:
        return True
    return _entry_id(last_entry) <= _entry_id(_text(group.get("last-delivered-id")) or "0-0")


def copy_ids(request_id: str, count: int, chosen: list[str] | None) -> list[str]:
    """The copies' ids: the caller's, or the same ones for every delivery of one request."""
    if chosen is not None:
        return list(chosen)
    return [str(uuid.uuid5(_IDS, f"{request_id}:{i}")) for i in range(count)]


def budget_left(max_cost_usd: float | None, spent: str) -> float | None:
    """A copy's budget: what the source had left (SPEC §10); None without one."""
    if max_cost_usd is None:
        return None
    try:
        used = float(Decimal(spent or "0"))
    except InvalidOperation:
        used = 0.0
    return max(max_cost_usd - used, 0.0)


def copy_spec(
    source: Mapping[str, Any], worker_id: str, request_id: str, budget: float | None
) -> dict[str, Any]:
    """A fork's saved create: the source's, with its own id and budget."""
    spec = dict(source)
    spec["worker_id"] = worker_id
    spec["request_id"] = request_id
    spec["max_cost_usd"] = budget
    return spec


def copy_fields(source: WorkerRecord, **more: str) -> dict[str, str]:
    """A copy's record fields (besides what every create writes)."""
    fields = {name: source.text(name) for name in COPIED_FIELDS if source.text(name)}
    services = _json_object(source.text("services"))
    if services:
        fields["services"] = json.dumps(
            {name: "starting" for name in services if name != "docker"}, separators=(",", ":")
        )
    fields.update(more)
    return fields


def snapshot_spec(
    saved: Mapping[str, Any], create: Mapping[str, Any], own: set[str], worker_id: str
) -> dict[str, Any]:
    """A create from a snapshot: the snapshot's saved create, overlaid with what the create set
    of its own (``own``: the fields it named, among :data:`CREATE_OWN`)."""
    spec = dict(saved)
    for name in CREATE_OWN:
        if name in own:
            spec[name] = create.get(name)
    spec["worker_id"] = worker_id
    spec["request_id"] = create.get("request_id")
    spec["reply_to"] = create.get("reply_to")
    spec["from_snapshot"] = None
    return spec


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value) if value is not None else ""


def _entry_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return 0, 0
