"""Fair shares of one manager's command path between its namespaces (SPEC §11).

Each namespace (the default one, each tenant) reads its own command stream with its own consumer,
so one tenant's flood never queues another's commands behind it. They still share one event loop
and the host's CPU: a tenant with ``WM_COMMAND_CONCURRENCY`` (64) commands in flight makes every
step of another's command wait behind up to 64 of its own (figure 18c measured a quiet tenant's
``status`` at 5.4 times its unloaded time). So while another namespace is busy (it started a
command within :data:`BUSY_SECONDS`), a consumer keeps at most ``WM_COMMAND_FAIR_SHARE`` of its
commands in flight; alone, it uses all of ``WM_COMMAND_CONCURRENCY``. :func:`limit` is the rule,
a plain function; :class:`FairShare` the state the consumers of one manager share.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

#: A namespace counts as busy this long after it last started a command.
BUSY_SECONDS = 1.0


def limit(
    who: str,
    concurrency: int,
    share: int,
    last_started: Mapping[str, float],
    now: float,
    busy_seconds: float = BUSY_SECONDS,
) -> int:
    """How many commands ``who``'s consumer may have in flight now."""
    contended = any(
        other != who and now - started < busy_seconds for other, started in last_started.items()
    )
    return min(concurrency, share) if contended else concurrency


class FairShare:
    """Shared by every consumer of one manager; each names its namespace (``who``)."""

    def __init__(self, share: int) -> None:
        self.share = share
        self._last_started: dict[str, float] = {}

    def started(self, who: str) -> None:
        self._last_started[who] = time.monotonic()

    def limit(self, who: str, concurrency: int) -> int:
        return limit(who, concurrency, self.share, self._last_started, time.monotonic())
