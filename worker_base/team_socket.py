"""The local socket through which the agent's ``wm-team`` reaches the team's board (SPEC §12).

The agent never holds Redis credentials: it asks its own wrapper, over a Unix stream socket in
the wrapper's directory (root's, 0755: the agent may connect to the socket, 0666, but not
replace it), one JSON request line, one JSON response line. The wrapper decides who is
speaking: every entry it writes is this worker's, whatever the request says (a ``sender`` in it
is ignored like any other unknown field).

Ops: ``post``, ``status``, ``read``, ``who`` (SPEC §12) and ``notices``: the notices pending for
the agent, TAKEN (``worker_base.team_notices``), as the hook an agent runs between tool calls
asks for them (Claude Code's ``PostToolUse``: ``wm-team notices --hook``). It touches no Redis
and answers from the wrapper's memory, so it is neither rate-limited nor slow; what it answers
was written by the wrapper from the board, so the agent can take its own notices early, never
make them say anything.

An agent can misbehave here without hurting anyone else: a request line is at most
:data:`MAX_REQUEST` bytes and must arrive within :data:`REQUEST_TIMEOUT`; at most
:data:`MAX_CONNECTIONS` are served at once (more are answered "busy" and closed); writes and
reads each draw from a token bucket, so a flood of posts costs Redis one XADD per few seconds;
and any failure, Redis' included, is an ``{"ok": false, "error": ...}`` answer, never an
exception out of the server (the wrapper keeps running whatever its agent sends).

Unix socket paths are limited to 107 bytes; a longer one (a deep test directory) is bound and
reached through ``/proc/self/fd/<dir>/<name>``, which ``wm-team`` does the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from worker_base.redis_client import REDIS_ERRORS
from worker_base.team_board import (
    POST,
    STATUS,
    STREAM_ID,
    TeamBoard,
    post_problem,
    status_problem,
)
from worker_base.team_notices import TeamNotices

log = logging.getLogger("worker_base")

MAX_REQUEST = 64 * 1024
REQUEST_TIMEOUT = 5.0
MAX_CONNECTIONS = 16
#: Writes (post, status): a burst of 10, then one per 3 s.
WRITE_BURST = 10
WRITE_REFILL_SECONDS = 3.0
#: Reads (read, who): a burst of 30, then 5 a second.
READ_BURST = 30
READ_REFILL_SECONDS = 0.2
#: The longest path ``bind``/``connect`` take (``sun_path`` is 108 bytes with its NUL).
SUN_PATH_MAX = 107

Response = dict[str, Any]


class TokenBucket:
    """``burst`` tokens, one more every ``refill_seconds``."""

    def __init__(self, burst: int, refill_seconds: float) -> None:
        self._burst = float(burst)
        self._refill = refill_seconds
        self._tokens = float(burst)
        self._at = time.monotonic()

    def take(self) -> float:
        """0 when a token was taken; otherwise the seconds until one is there."""
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._at) / self._refill)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) * self._refill


def refused(error: str) -> Response:
    return {"ok": False, "error": error}


class TeamRequests:
    """The protocol: one request (already parsed) in, one response out. No socket here, so it
    is tested without one."""

    def __init__(self, board: TeamBoard, team: str, notices: TeamNotices | None = None) -> None:
        self._board = board
        self._team = team
        self._notices = notices
        self._writes = TokenBucket(WRITE_BURST, WRITE_REFILL_SECONDS)
        self._reads = TokenBucket(READ_BURST, READ_REFILL_SECONDS)

    async def answer_line(self, line: bytes) -> Response:
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return refused("the request is not a JSON object on one line")
        if not isinstance(request, dict):
            return refused("the request is not a JSON object on one line")
        return await self.answer(request)

    async def answer(self, request: dict[str, Any]) -> Response:
        op = request.get("op")
        if op == "notices":
            return self._take_notices()
        if op in ("post", "status"):
            problem = self._problem(op, request)
            if problem is not None:
                return refused(problem)
            wait = self._writes.take()
            if wait:
                return refused(
                    f"rate limited: at most {WRITE_BURST} posts and statuses at once, then one "
                    f"every {WRITE_REFILL_SECONDS:g} s; try again in {wait:.1f} s"
                )
        elif op in ("read", "who"):
            if op == "read" and not _valid_since(request.get("since")):
                return refused("since must be a board entry id such as 1700000000000-0")
            wait = self._reads.take()
            if wait:
                return refused(f"rate limited: too many reads; try again in {wait:.1f} s")
        else:
            return refused("unknown op: use post, status, read, who or notices")
        try:
            return await self._perform(op, request)
        except REDIS_ERRORS as exc:
            log.warning("team board %s failed: %s", op, exc)
            return refused(f"the team board is not reachable right now ({type(exc).__name__})")

    def _take_notices(self) -> Response:
        """``{"ok": true, "team", "text", "entries"}``: ``text`` the notice block ("" when
        nothing is pending), ``entries`` how many board entries it tells of."""
        taken = self._notices.take(during_turn=True) if self._notices is not None else None
        if taken is None:
            return {"ok": True, "team": self._team, "text": "", "entries": 0}
        entries = len(taken.lines) + taken.dropped
        log.info("told the agent %d team notice(s) during its turn", entries)
        return {"ok": True, "team": self._team, "text": taken.text, "entries": entries}

    @staticmethod
    def _problem(op: str, request: dict[str, Any]) -> str | None:
        if op == "post":
            return post_problem(request.get("text"))
        return status_problem(request.get("status"), request.get("note"))

    async def _perform(self, op: str, request: dict[str, Any]) -> Response:
        board = self._board
        if op == "post":
            entry_id = await board.append(POST, str(request["text"]))
            return {"ok": True, "id": entry_id}
        if op == "status":
            note = request.get("note") or ""
            entry_id = await board.append(STATUS, str(request["status"]), note)
            return {"ok": True, "id": entry_id}
        if op == "read":
            entries, more = await board.since(request.get("since"))
            return {
                "ok": True,
                "team": self._team,
                "entries": [entry.as_dict() for entry in entries],
                "more": more,
            }
        return {"ok": True, "team": self._team, "members": await board.members()}


def _valid_since(since: object) -> bool:
    return since is None or (isinstance(since, str) and STREAM_ID.fullmatch(since) is not None)


class TeamSocket:
    """Serves :class:`TeamRequests` on a Unix socket at ``path`` until cancelled."""

    def __init__(self, requests: TeamRequests, path: Path) -> None:
        self._requests = requests
        self.path = path
        self._open = 0

    async def serve(self) -> None:
        """Binds, then serves until cancelled; a socket it cannot bind is logged (the agent's
        ``wm-team`` then says the board is unreachable), never fatal to the wrapper."""
        try:
            sock = bind_socket(self.path)
        except OSError as exc:
            log.error(
                "team socket %s could not be bound: %s; wm-team will not work", self.path, exc
            )
            return
        server = await asyncio.start_unix_server(self._serve_one, sock=sock, limit=MAX_REQUEST + 1)
        log.info("team socket listening at %s", self.path)
        try:
            await asyncio.Future()  # until cancelled
        finally:
            server.close()
            with contextlib.suppress(OSError):
                self.path.unlink()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open += 1
        try:
            if self._open > MAX_CONNECTIONS:
                response = refused("busy: too many wm-team requests at once; try again")
            else:
                response = await self._respond(reader)
            writer.write(json.dumps(response).encode() + b"\n")
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await writer.drain()
        except Exception as exc:  # the agent's end: a reset, a reader that never reads
            log.debug("team socket connection ended: %r", exc)
        finally:
            self._open -= 1
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> Response:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                line = await reader.readuntil(b"\n")
        except TimeoutError:
            return refused(f"no complete request line within {REQUEST_TIMEOUT:g} s")
        except asyncio.LimitOverrunError:
            return refused(f"the request line is longer than {MAX_REQUEST} bytes")
        except asyncio.IncompleteReadError as exc:
            line = exc.partial  # no newline before EOF: take what was sent
        if len(line) > MAX_REQUEST:
            return refused(f"the request line is longer than {MAX_REQUEST} bytes")
        try:
            return await self._requests.answer_line(line)
        except Exception:
            log.exception("team request failed")
            return refused("the wrapper failed to answer this request")


def bind_socket(path: Path) -> socket.socket:
    """A listening Unix socket at ``path`` (its directory made root's 0755, the socket 0666),
    replacing the one a previous run of the wrapper left."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    os.chmod(path.parent, 0o755)  # noqa: S103  # the agent may enter, never add or replace
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with socket_address(path) as address:
            sock.bind(address)
        os.chmod(path, 0o666)  # noqa: S103  # the agent's uid must connect
        sock.listen(64)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@contextlib.contextmanager
def socket_address(path: Path) -> Any:
    """``path``, or when it is too long for ``sun_path`` the same file through a descriptor of
    its directory (held open while the address is used)."""
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)
