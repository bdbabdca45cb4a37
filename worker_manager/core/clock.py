"""Time in the one format the contract uses: ISO 8601 UTC with milliseconds and a ``Z``.

Formatting is the wrapper's (:mod:`worker_base.clock`), so manager and workers stamp times
identically; the wrapper cannot import the manager, the manager can import the wrapper.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from worker_base.clock import iso_from_unix, iso_now

__all__ = ["iso_from_unix", "iso_now", "unix_from_iso", "unix_or_none", "utc_day"]


def unix_from_iso(text: str) -> float:
    """Parse a contract timestamp back to Unix seconds (accepts any ISO 8601 with offset)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def unix_or_none(text: str | None) -> float | None:
    """A record's time, or None when it is missing or unreadable: a corrupt field is one
    worker's problem, never an exception in a loop that judges them all."""
    if not text:
        return None
    try:
        return unix_from_iso(text)
    except ValueError:
        return None


def utc_day(unix: float | None = None) -> str:
    """The UTC day (``YYYY-MM-DD``) a time falls on: a day's spend is counted under it."""
    return datetime.fromtimestamp(time.time() if unix is None else unix, UTC).strftime("%Y-%m-%d")
