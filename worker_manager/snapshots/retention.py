"""Snapshots kept only while they are used (SPEC §10 ``WM_SNAPSHOT_RETENTION_DAYS``): a plain
function. A snapshot of this manager's host not used (taken, or a create started from it) for
that long is removed, its record first, then its volumes; another host's snapshots are that
host's to remove."""

from __future__ import annotations

from collections.abc import Sequence

from worker_manager.snapshots.store import Snapshot


def expired(
    snapshots: Sequence[Snapshot], *, manager_id: str, now: float, retention_days: float
) -> list[Snapshot]:
    cutoff = now - retention_days * 86_400
    return [s for s in snapshots if s.manager_id == manager_id and s.last_used < cutoff]
