"""What a wrapper runs for a worker of a team (SPEC §12, ``WM_TEAM``), in one place.

* the board (:mod:`worker_base.team_board`): entries written as this worker, never as whoever
  the agent claims to be;
* the socket (:mod:`worker_base.team_socket`) through which the agent's ``wm-team`` reaches it;
* the notices (:mod:`worker_base.team_notices`): teammates' entries as ``team`` events at once
  and in front of the agent's next prompt;
* ``wm-team`` itself (:mod:`worker_base.wm_team`), copied at start into the wrapper's directory
  (root's: the agent runs it and cannot change it) and put first on every agent run's ``PATH``
  (:func:`agent_env`). With ``allowed_commands`` the shims keep it allowed
  (``worker_base.allowlist``): it only ever talks to the wrapper.

A worker of no team gets none of this: no socket, no follower, no ``wm-team``.

Layout, under the wrapper's directory: ``team/socket`` (0666, in the 0755 ``team/``),
``team/bin/wm-team`` (0755), ``team/pending`` (0644, there while notices are pending: the
agent's hook between tool calls, ``worker_base.agents.claude``, asks only then) and
``private/team-notices.json`` (the follower's cursor and the notices not yet told, which a
restart keeps).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol

from redis.asyncio import Redis

from worker_base.config import WrapperConfig
from worker_base.identity import private_dir
from worker_base.team_board import BoardEntry, TeamBoard
from worker_base.team_notices import Taken, TeamNotices
from worker_base.team_socket import TeamRequests, TeamSocket

TEAM_DIR = "team"
SOCKET_NAME = "socket"
COMMAND = "wm-team"
NOTICE_STATE = "team-notices.json"
PENDING_NAME = "pending"

log = logging.getLogger("worker_base")

#: Starts a background task of the wrapper (``Wrapper._spawn``).
Spawn = Callable[[Coroutine[Any, Any, None], str], None]
#: Writes one ``team`` event (its JSON content) on the worker's output.
Emit = Callable[[str], None]


class Layout(Protocol):
    """Where the team's files are: the wrapper's configuration, or a driver's view of it."""

    @property
    def wrapper_dir(self) -> Path: ...


def socket_path(config: Layout) -> Path:
    return config.wrapper_dir / TEAM_DIR / SOCKET_NAME


def bin_dir(config: Layout) -> Path:
    return config.wrapper_dir / TEAM_DIR / "bin"


def command_path(config: Layout) -> Path:
    """The installed ``wm-team`` (:func:`install_command`)."""
    return bin_dir(config) / COMMAND


def pending_flag(config: Layout) -> Path:
    """There exactly while notices are pending (``worker_base.team_notices``)."""
    return config.wrapper_dir / TEAM_DIR / PENDING_NAME


def agent_env(config: WrapperConfig, env: dict[str, str]) -> dict[str, str]:
    """The agent's environment with ``wm-team`` on its ``PATH`` and the socket it speaks to
    (a worker of no team: unchanged). Before the allowlist hook, which keeps it allowed."""
    if not config.team:
        return env
    result = dict(env)
    path = result.get("PATH") or os.defpath
    result["PATH"] = os.pathsep.join([str(bin_dir(config)), path])
    result["WM_TEAM"] = config.team
    result["WM_TEAM_SOCKET"] = str(socket_path(config))
    return result


def install_command(config: WrapperConfig) -> Path:
    """Writes ``wm-team`` (this package's ``wm_team.py`` run by this interpreter, isolated)
    into :func:`bin_dir`; returns its path. Rewritten at each start: an upgraded wrapper brings
    its own."""
    source = Path(__file__).with_name("wm_team.py").read_text(encoding="utf-8")
    if source.startswith("#!"):
        source = source.split("\n", 1)[1]
    if any(ch.isspace() for ch in sys.executable):
        raise RuntimeError(f"cannot install wm-team: interpreter path {sys.executable!r}")
    directory = bin_dir(config)
    directory.mkdir(parents=True, exist_ok=True, mode=0o755)
    # Root's, readable and searchable by the agent (it runs wm-team), writable by none but root.
    os.chmod(directory.parent, 0o755)  # noqa: S103
    os.chmod(directory, 0o755)  # noqa: S103
    target = directory / COMMAND
    scratch = directory / f".{COMMAND}.tmp"
    scratch.unlink(missing_ok=True)
    # -I: nothing of the agent's environment or directory is imported; -S: no site-packages
    # (it needs none, and ``site`` is a good part of an interpreter's start).
    # (One word: a kernel passes everything after the interpreter as a single argument.)
    scratch.write_text(f"#!{sys.executable} -IS\n{source}", encoding="utf-8")
    scratch.chmod(0o755)
    os.replace(scratch, target)
    return target


def event_content(entry: BoardEntry) -> str:
    """A ``team`` event's content: the entry as JSON, its stream ``id`` included."""
    return json.dumps(entry.as_dict(), ensure_ascii=False, sort_keys=True)


class TeamSide:
    """The team's part of one wrapper: started with the wrapper, cancelled with its tasks."""

    def __init__(self, config: WrapperConfig, redis: Redis, emit: Emit) -> None:
        self._config = config
        board = TeamBoard(redis, config.team_board_key, config.worker_id, config.team_changes_key)
        self.board = board
        self.notices = TeamNotices(
            board,
            config.team,
            private_dir(config) / NOTICE_STATE,
            lambda entry: emit(event_content(entry)),
            block_ms=config.block_ms,
            pending_flag=pending_flag(config),
        )
        # ``notices``: the agent's hook between tool calls takes them through the socket.
        self.socket = TeamSocket(
            TeamRequests(board, config.team, self.notices), socket_path(config)
        )

    def start(self, spawn: Spawn) -> None:
        """Installs ``wm-team``, then serves the socket and follows the board in the
        background. Neither task ever raises: without them the agent still works."""
        try:
            install_command(self._config)
        except (OSError, RuntimeError) as exc:
            log.error("wm-team could not be installed: %s", exc)
        spawn(self.socket.serve(), "team-socket")
        spawn(self.notices.follow(), "team-notices")

    async def take_notices(self) -> Taken | None:
        """The notices for the prompt about to start, the board's latest entries included."""
        await self.notices.catch_up()
        return self.notices.take()

    def give_back(self, taken: Taken) -> None:
        self.notices.give_back(taken)
