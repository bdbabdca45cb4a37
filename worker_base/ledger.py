"""The worker's spend: what each input cost, the total across inputs, and the budget.

Agents report money in different shapes. Claude Code's ``total_cost_usd`` is the running total of
its *session*, so a resumed session reports earlier inputs again; a new session (a lost
transcript, a fresh worker) starts from zero. The ledger turns whatever a driver saw into this
input's cost and the worker's total, and keeps both in ``cost.json`` among the wrapper's private
files (out of the agent's reach) so a restarted wrapper neither forgets the spend nor counts it
twice.

The total leaves the container only through the heartbeat's value (``heartbeat_value``), which
the manager already reads: it copies ``cost_usd`` into the record and stops a worker whose budget
is spent (``budget_exceeded``) without reading the data plane.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from worker_base.identity import write_atomic

log = logging.getLogger("worker_base")

LEDGER_NAME = "cost.json"
#: Sessions remembered for their last reported total (the newest are kept).
_MAX_SESSIONS = 64


@dataclass(frozen=True, slots=True)
class Charge:
    """One input's cost and the worker's total after it."""

    input_usd: float
    total_usd: float


class CostLedger:
    def __init__(self, directory: Path, max_cost_usd: float | None = None) -> None:
        self._path = directory / LEDGER_NAME
        self.max_cost_usd = max_cost_usd
        self.total_usd = 0.0
        #: session id -> the session total the agent last reported.
        self._sessions: dict[str, float] = {}
        self._load()

    @property
    def exhausted(self) -> bool:
        return self.max_cost_usd is not None and self.total_usd >= self.max_cost_usd

    @property
    def remaining_usd(self) -> float | None:
        if self.max_cost_usd is None:
            return None
        return max(0.0, self.max_cost_usd - self.total_usd)

    def charge_session_total(self, session_id: str | None, session_total: float) -> Charge:
        """An agent reported its session's running total (Claude Code's ``total_cost_usd``)."""
        if not _money(session_total):
            return Charge(0.0, self.total_usd)
        before = self._sessions.get(session_id, 0.0) if session_id else 0.0
        # A total below what we saw means the agent started the session over: all of it is new.
        spent = session_total - before if session_total >= before else session_total
        if session_id:
            self._sessions.pop(session_id, None)
            self._sessions[session_id] = session_total
            while len(self._sessions) > _MAX_SESSIONS:
                self._sessions.pop(next(iter(self._sessions)))
        return self._add(spent)

    def charge(self, input_usd: float) -> Charge:
        """An agent reported what this input alone cost."""
        return self._add(input_usd if _money(input_usd) else 0.0)

    def _add(self, spent: float) -> Charge:
        self.total_usd += spent
        self._save()
        return Charge(spent, self.total_usd)

    def heartbeat_suffix(self) -> str:
        """What the heartbeat carries after the activity time: ``cost=… [budget=exceeded]``."""
        parts = [f"cost={format_usd(self.total_usd)}"]
        if self.exhausted:
            parts.append("budget=exceeded")  # heartbeat.BUDGET_EXCEEDED
        return " ".join(parts)

    def _load(self) -> None:
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("the cost ledger %s is unreadable (%s); starting from 0", self._path, exc)
            return
        total = data.get("total_usd") if isinstance(data, dict) else None
        if _money(total):
            self.total_usd = float(total)  # type: ignore[arg-type]
        sessions = data.get("sessions") if isinstance(data, dict) else None
        if isinstance(sessions, dict):
            self._sessions = {str(k): float(v) for k, v in sessions.items() if _money(v)}

    def _save(self) -> None:
        data = json.dumps({"total_usd": self.total_usd, "sessions": self._sessions})
        write_atomic(self._path, data.encode("utf-8"))


def _money(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def format_usd(value: float) -> str:
    """A plain decimal string (no exponent), as the record's ``cost_usd`` holds it."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text or "0"
