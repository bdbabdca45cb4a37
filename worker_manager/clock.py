"""Time in the one format the contract uses: ISO 8601 UTC with milliseconds and a ``Z``."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def iso_now() -> str:
    """The current time as ``2026-11-22T10:00:00.123Z``."""
    return iso_from_unix(time.time())


def iso_from_unix(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def unix_from_iso(text: str) -> float:
    """Parse a contract timestamp back to Unix seconds (accepts any ISO 8601 with offset)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
