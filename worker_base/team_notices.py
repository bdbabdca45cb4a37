"""What the team says, told to the agent without its asking (SPEC §12).

A follower reads the board as it grows (XREAD BLOCK). Each entry another sender wrote becomes,
at once, a ``team`` event on the worker's output (the orchestrator sees what the agent will),
and a pending notice: the next prompt the agent runs starts with the notices gathered since the
last one (:meth:`TeamNotices.block`), bounded so that a chatty team cannot crowd the prompt out.

The follower's cursor and the pending notices are kept in the wrapper's private directory and
rewritten atomically whenever they change: a restarted wrapper goes on from where it was,
telling nothing twice and losing nothing it had not yet told. A worker that has never followed
the board (a fresh one, or a late joiner) starts at the board's beginning, so it learns what the
team said before it came (bounded like any other notice).

An agent that supports hooks between tool calls (Claude Code's ``PostToolUse``,
``worker_base.agents.claude``) is also told during a long turn: its hook asks the wrapper over the
team socket (``{"op": "notices"}``), which TAKES the pending notices as the next prompt would
(:meth:`TeamNotices.take` with ``during_turn``), so a notice told mid-turn is not told again in
front of the next prompt. So that the hook, which runs after every tool call, costs nearly
nothing while nothing is new, the wrapper keeps a *pending flag*: a file in its own directory
(root's: the agent can read it, never create or remove it) that exists exactly while notices are
pending. The hook tests for it in the shell and only then starts ``wm-team``. The flag is a hint,
never the truth: the socket answers with whatever is pending when it is asked.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from worker_base.identity import write_atomic
from worker_base.redis_client import REDIS_ERRORS, Backoff
from worker_base.team_board import JOINED, LEFT, POST, STATUS, BoardEntry, TeamBoard

log = logging.getLogger("worker_base")

#: At most this many entries in front of one prompt; older ones are counted, not shown.
MAX_NOTICES = 20
#: Each notice line is cut to this many characters.
MAX_NOTICE_CHARS = 500
#: The whole block (header and footer included) stays under this many bytes (UTF-8).
MAX_BLOCK_BYTES = 8 * 1024
#: Entries taken per XREAD.
FOLLOW_COUNT = 100
START = "0-0"
#: The most a prompt waits for :meth:`TeamNotices.catch_up`.
CATCH_UP_TIMEOUT = 1.0

#: Called with each entry from another sender (the wrapper makes it a ``team`` event).
Announce = Callable[[BoardEntry], None]


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return (-1, -1)


def notice_line(entry: BoardEntry) -> str:
    """One line for the agent: who said what, on one line, bounded."""
    sender = entry.sender or "someone"
    content = " ".join(entry.content.split())
    note = " ".join(entry.note.split())
    if entry.kind == POST:
        line = f"- {sender} posted: {content}"
    elif entry.kind == STATUS and content == JOINED:
        line = f"- {sender} joined the team"
    elif entry.kind == STATUS and content == LEFT:
        line = f"- {sender} left the team"
    elif entry.kind == STATUS:
        line = f"- {sender} is {content}" + (f": {note}" if note else "")
    else:
        line = f"- {sender} ({entry.kind or 'entry'}): {content}"
    if len(line) > MAX_NOTICE_CHARS:
        line = line[: MAX_NOTICE_CHARS - 1] + "…"
    return line


@dataclass(frozen=True, slots=True)
class Taken:
    """A notice block put in front of a prompt, and what it was made of."""

    text: str
    lines: list[str]
    dropped: int


@dataclass
class NoticeState:
    """What survives a restart: the last entry followed, and the lines not yet told."""

    cursor: str = START
    pending: list[str] | None = None
    #: Entries followed but no longer kept as lines (beyond :data:`MAX_NOTICES`).
    dropped: int = 0

    def lines(self) -> list[str]:
        if self.pending is None:
            self.pending = []
        return self.pending

    def to_json(self) -> bytes:
        return json.dumps(
            {"cursor": self.cursor, "pending": self.lines(), "dropped": self.dropped}
        ).encode()

    @classmethod
    def load(cls, path: Path) -> NoticeState:
        try:
            data = json.loads(path.read_bytes())
            cursor = str(data["cursor"])
            pending = [str(line) for line in data["pending"]][-MAX_NOTICES:]
            dropped = max(0, int(data["dropped"]))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("team notice state %s unreadable (%s); following from the start", path, exc)
            return cls()
        return cls(cursor, pending, dropped)


class TeamNotices:
    def __init__(
        self,
        board: TeamBoard,
        team: str,
        state_path: Path,
        announce: Announce,
        *,
        block_ms: int,
        pending_flag: Path | None = None,
    ) -> None:
        self._board = board
        self._team = team
        self._path = state_path
        self._announce = announce
        self._block_ms = block_ms
        self._flag = pending_flag
        self._state = NoticeState.load(state_path)
        self._mark_pending()  # a restarted wrapper's notices are pending again, or none are

    @property
    def cursor(self) -> str:
        return self._state.cursor

    async def follow(self) -> None:
        """Follows the board until cancelled; Redis failures are waited out, and anything else
        is logged and retried: notices are a courtesy, the worker stays up without them."""
        backoff = Backoff(f"following the team board {self._board.key}")
        while True:
            try:
                entries = await self._board.follow(self.cursor, self._block_ms, FOLLOW_COUNT)
            except REDIS_ERRORS as exc:
                await backoff.wait(exc)
                continue
            except Exception as exc:
                log.exception("following the team board failed")
                await backoff.wait(exc)
                continue
            backoff.succeeded()
            if entries:
                self.take_in(entries)

    async def catch_up(self) -> None:
        """Takes in what the board has beyond the cursor now, without waiting: a prompt that
        starts right after a teammate posted (or right after a fresh start, before the
        follower's first read) still carries it. Failures leave it to the follower."""
        try:
            async with asyncio.timeout(CATCH_UP_TIMEOUT):
                entries, _more = await self._board.since(self.cursor, FOLLOW_COUNT)
        except REDIS_ERRORS as exc:  # TimeoutError among them
            log.warning("team board not read before the prompt: %s", exc)
            return
        if entries:
            self.take_in(entries)

    def take_in(self, entries: list[BoardEntry]) -> None:
        """Announces each entry of another sender, keeps its notice line, moves the cursor.
        Entries at or before the cursor were taken in already (by the follower or by
        :meth:`catch_up`, whichever read them first) and are skipped."""
        state = self._state
        lines = state.lines()
        for entry in entries:
            if _order(entry.id) <= _order(state.cursor):
                continue
            state.cursor = entry.id
            if entry.sender == self._board.worker_id:
                continue
            try:
                self._announce(entry)
            except Exception:
                log.exception("announcing a team board entry failed")
            lines.append(notice_line(entry))
        if len(lines) > MAX_NOTICES:
            state.dropped += len(lines) - MAX_NOTICES
            del lines[: len(lines) - MAX_NOTICES]
        self._save()

    def take(self, *, during_turn: bool = False) -> Taken | None:
        """The notice block for the next prompt, and the pending notices forgotten (None when
        nothing is pending). A prompt that does not reach its end :meth:`give_back` them.
        ``during_turn``: for the agent's hook between two tool calls of a turn (its header says
        so); taken all the same, so the next prompt does not repeat them."""
        state = self._state
        lines = list(state.lines())
        dropped = state.dropped
        if not lines and not dropped:
            return None
        taken = Taken(self._render(lines, dropped, during_turn), lines, dropped)
        state.pending, state.dropped = [], 0
        self._save()
        return taken

    def give_back(self, taken: Taken) -> None:
        """Notices taken for a prompt that was interrupted (the worker stopping): pending
        again, in front of any that came since, so the prompt's next run carries them."""
        state = self._state
        lines = [*taken.lines, *state.lines()]
        state.dropped += taken.dropped
        if len(lines) > MAX_NOTICES:
            state.dropped += len(lines) - MAX_NOTICES
            lines = lines[len(lines) - MAX_NOTICES :]
        state.pending = lines
        self._save()

    def _render(self, lines: list[str], dropped: int, during_turn: bool = False) -> str:
        total = len(lines) + dropped
        noun = "entry" if total == 1 else "entries"
        since = "while you were working" if during_turn else "since your last prompt"
        header = f'[Team board "{self._team}": {total} new {noun} {since}]'
        footer = "[End of team board. Reply on it with `wm-team post TEXT`.]"
        shown = list(lines)
        while True:
            body = list(shown)
            hidden = total - len(shown)
            if hidden:
                body.append(f"- …and {hidden} more (earlier): run `wm-team read` to see them")
            text = "\n".join([header, *body, footer]) + "\n\n"
            if len(text.encode()) <= MAX_BLOCK_BYTES or not shown:
                return text
            shown.pop(0)

    @property
    def pending(self) -> bool:
        return bool(self._state.lines() or self._state.dropped)

    def _save(self) -> None:
        try:
            write_atomic(self._path, self._state.to_json())
        except OSError as exc:
            log.warning("team notice state %s not saved: %s", self._path, exc)
        self._mark_pending()

    def _mark_pending(self) -> None:
        """The pending flag exists exactly while notices are pending (see the module's doc)."""
        flag = self._flag
        if flag is None:
            return
        try:
            if self.pending:
                if not flag.exists():
                    flag.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
                    write_atomic(flag, b"", 0o644)  # the agent's hook reads it, never writes
            else:
                flag.unlink(missing_ok=True)
        except OSError as exc:  # the hook then asks in vain or not at all; prompts still tell
            log.warning("team pending flag %s not updated: %s", flag, exc)
