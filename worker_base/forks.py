"""A worker that starts as a copy of another (SPEC §10: a fork, or a create from a snapshot).

The manager copies the source's home and workspace into the new worker's volumes and leaves,
among the wrapper's private files, :data:`MARKER` (``{"forked_from": "<id>"}``). The wrapper
settles it once, at its start, before any input:

* the spend starts over: the copy's budget is its own (the manager gives it what the source had
  left), so the ledger's total is set to 0, while the agent sessions' last reported totals are
  kept, so that a copied session's earlier turns are not counted again;
* the agent's session is forked at its first resume: :data:`SESSION_FORK` tells the driver (Claude
  Code: ``--resume <id> --fork-session``, a new session id, so the copies' threads are distinct
  even where their transcripts are the same file); drivers without a fork of their own resume
  their copy of the thread, which lives in the copy's own home;
* then the marker goes, so a restart or a resume of the copy does none of this again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from worker_base.identity import write_atomic
from worker_base.ledger import LEDGER_NAME

log = logging.getLogger("worker_base")

#: Left by the manager in the copy's private directory.
MARKER = "forked.json"
#: Left by :func:`settle` for the driver: fork the session at its next resume.
SESSION_FORK = "session-fork"


def settle(private: Path) -> str | None:
    """Settle a copy's first start (see the module docstring); the source's id, or None when this
    worker is not a fresh copy."""
    marker = private / MARKER
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("the fork marker %s is unreadable (%s); settling it anyway", marker, exc)
        data = {}
    source = data.get("forked_from") if isinstance(data, dict) else None
    ledger = private / LEDGER_NAME
    try:
        kept = json.loads(ledger.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        kept = {}
    sessions = kept.get("sessions") if isinstance(kept, dict) else None
    write_atomic(
        ledger,
        json.dumps(
            {"total_usd": 0.0, "sessions": sessions if isinstance(sessions, dict) else {}}
        ).encode("utf-8"),
    )
    write_atomic(private / SESSION_FORK, b"1")
    marker.unlink(missing_ok=True)
    log.info("started as a copy of worker %s: its spend starts over", source or "?")
    return str(source) if isinstance(source, str) else ""


def fork_pending(private: Path) -> bool:
    """Whether the agent's session is to be forked at its next resume."""
    return (private / SESSION_FORK).exists()


def forked(private: Path) -> None:
    """The session was forked (the driver saw its new id): nothing more to do."""
    (private / SESSION_FORK).unlink(missing_ok=True)
