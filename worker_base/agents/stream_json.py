"""What the Claude and Factory drivers share: a session that outlives the wrapper, and results.

Both CLIs print one JSON object per line and end with one final "result" line. Two rules hold
for both, and live here so they cannot drift apart:

- the session id is kept in a file among the wrapper's private files, so a restarted wrapper
  resumes the same conversation for the rest of the worker's life;
- a run is never reported as a success when the agent said ``is_error`` or exited non-zero: the
  result line is held until the process has exited, then emitted with ``is_error`` corrected (and
  an ``error`` event), and a run that printed no result gets a synthesised error result;
- a session that can no longer be resumed (its transcript is gone) is forgotten and the same
  input runs once more in a new session (``take_retry``), instead of every later input failing;
- money goes through the worker's :class:`~worker_base.ledger.CostLedger`: the result carries
  ``cost_usd`` (this input) and ``total_cost_usd`` (the worker so far), whatever shape the agent
  reported it in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from worker_base.agents.base import AgentDriver, Event
from worker_base.events import EventType
from worker_base.identity import write_atomic
from worker_base.ledger import CostLedger


class SessionStore:
    """One session id in one file; written atomically, since a crash may come at any point."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def load(self) -> str | None:
        try:
            value = self._path.read_text(encoding="utf-8").strip()
        except OSError:
            return None
        return value or None

    def save(self, session_id: str) -> None:
        write_atomic(self._path, session_id.encode("utf-8"))

    def clear(self) -> None:
        self._path.unlink(missing_ok=True)


def parse_line(line: str) -> dict[str, Any] | None:
    """The JSON object on ``line``, or None for anything else (text, truncated JSON, arrays)."""
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) and isinstance(value.get("type"), str) else None


def dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class StreamJsonDriver(AgentDriver):
    """Session and result bookkeeping; subclasses map their own line shapes to events."""

    agent_name = "agent"
    #: Result keys the subclass fills for the ledger: the session's running total, or this
    #: input's own cost. Both are removed from the payload before it is emitted.
    SESSION_TOTAL = "_session_total_usd"
    INPUT_COST = "_input_cost_usd"

    def __init__(self, sessions: SessionStore, ledger: CostLedger) -> None:
        self._sessions = sessions
        self._ledger = ledger
        self.ledger = ledger
        self._session_id = sessions.load()
        self._resumed_from: str | None = None
        self._saw_session = False
        self._pending_result: dict[str, Any] | None = None
        self._pending_errors: list[Event] = []
        #: Set by the subclass when the agent said the session to resume does not exist.
        self._session_missing = False
        self._retry: str | None = None

    @property
    def session_id(self) -> str | None:
        return self._session_id

    def _start_run(self) -> str | None:
        """Reset per-run state; returns the session to resume, if any."""
        self._session_id = self._sessions.load() or self._session_id
        self._resumed_from = self._session_id
        self._saw_session = False
        self._pending_result = None
        self._pending_errors = []
        self._session_missing = False
        self._retry = None
        return self._session_id

    def take_retry(self) -> str | None:
        retry, self._retry = self._retry, None
        return retry

    def _remember_session(self, value: object) -> None:
        if not isinstance(value, str) or not value:
            return
        self._saw_session = True
        if value != self._session_id:
            self._session_id = value
            self._sessions.save(value)

    def _hold_result(
        self, payload: dict[str, Any], errors: list[Event] | None = None
    ) -> list[Event]:
        """Keep ``payload`` (and the ``errors`` it carries) until exit: only then is it known
        whether they are this input's answer or a failed attempt's. A second result line
        flushes the first one as it is."""
        earlier, earlier_errors = self._pending_result, self._pending_errors
        self._pending_result, self._pending_errors = payload, list(errors or [])
        if earlier is None:
            return []
        self._account(earlier)
        return [*earlier_errors, Event(EventType.RESULT, dumps(earlier))]

    def on_exit(self, exit_code: int) -> list[Event]:
        events: list[Event] = []
        payload = self._pending_result
        held, self._pending_errors = self._pending_errors, []
        self._pending_result = None
        if self._session_missing and self._resumed_from is not None and exit_code != 0:
            lost = self._resumed_from
            self._sessions.clear()
            self._session_id = None
            self._retry = (
                f"session {lost} can no longer be resumed (its transcript is gone); this input "
                "runs again in a new session"
            )
            return []  # the failed attempt's result is not this input's result
        if payload is not None:
            self._account(payload)
        if payload is None:
            reason = f"{self.agent_name} exited with code {exit_code} without a result"
            if not self._saw_session and self._resumed_from is not None and exit_code != 0:
                # Most likely the session to resume is gone; the next input starts a new one
                # instead of failing the same way forever.
                reason += f"; session {self._resumed_from} will not be resumed again"
                self._sessions.clear()
                self._session_id = None
            events.append(Event(EventType.ERROR, reason))
            payload = {"is_error": True, "reason": reason, "exit_code": exit_code}
            if self._session_id is not None:
                payload["session_id"] = self._session_id
            events.append(Event(EventType.RESULT, dumps(payload)))
            return events
        if exit_code != 0:
            payload["exit_code"] = exit_code
            if not payload.get("is_error"):
                payload["is_error"] = True
                reason = (
                    f"{self.agent_name} exited with code {exit_code} although its result said "
                    "success"
                )
                payload["reason"] = reason
                events.append(Event(EventType.ERROR, reason))
        return [*held, Event(EventType.RESULT, dumps(payload)), *events]

    def _account(self, payload: dict[str, Any]) -> None:
        session_total = payload.pop(self.SESSION_TOTAL, None)
        input_cost = payload.pop(self.INPUT_COST, None)
        if session_total is not None:
            charge = self._ledger.charge_session_total(payload.get("session_id"), session_total)
        elif input_cost is not None:
            charge = self._ledger.charge(input_cost)
        else:
            return
        payload["cost_usd"] = round(charge.input_usd, 6)
        payload["total_cost_usd"] = round(charge.total_usd, 6)


def copy_number(source: dict[str, Any], key: str, target: dict[str, Any], name: str) -> None:
    value = source.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        target[name] = value
