"""Contract timestamps (``2026-11-22T10:00:00.123Z``), cheap enough to stamp every output line.

The manager imports these too (``worker_manager.core.clock``): one format for both sides.
"""

from __future__ import annotations

import time
from functools import lru_cache


@lru_cache(maxsize=4)
def _second(seconds: int) -> str:
    # strftime is the expensive part; lines arrive thousands per second, seconds change rarely.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def iso_from_unix(moment: float) -> str:
    seconds = int(moment)
    millis = int((moment - seconds) * 1000)
    return f"{_second(seconds)}.{millis:03d}Z"


def iso_now() -> str:
    return iso_from_unix(time.time())
