"""Workspace requests (SPEC §8), answered by the wrapper itself and never by the agent.

``diff``, ``read`` and ``list`` are answered at once, even while a prompt runs (the input loop
spawns :meth:`WorkspaceRequests.answer`); ``write`` and ``exec`` wait their turn like prompts
(the loop calls :meth:`WorkspaceRequests.write` and :meth:`WorkspaceRequests.exec_run`). After
each input that ran something, in a workspace that is a git repository,
:meth:`WorkspaceRequests.publish_summary` writes the ``workspace`` event and publishes the same
summary in ``worker:<id>:workspace``, its digest going into the heartbeat (``ws=…``) so the
manager copies it into the record without reading the data plane.

What the files are and how they are reached (as the agent, inside the workspace, git made safe)
is :mod:`worker_base.workspace`'s; this module turns entries into events and ``done`` codes. A
request the workspace refuses costs one ``error`` and ``done`` 2; a bug here costs one answer
(``done`` 70, logged), never the worker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from redis.asyncio import Redis

from worker_base.agents.exec import ExecDriver, exec_invocation, exec_timeout
from worker_base.config import WrapperConfig
from worker_base.events import INVALID_INPUT, WRAPPER_FAILED, EventType
from worker_base.identity import AgentIdentity
from worker_base.inputs import InputEntry, InputType
from worker_base.redis_client import REDIS_ERRORS
from worker_base.runner import AgentRun, Sink
from worker_base.workspace import Workspace, WorkspaceError, dumps, summary_digest

log = logging.getLogger("worker_base")

#: Queues one of the wrapper's own events: (type, content, input id).
Emit = Callable[[str, str, str], None]


class WorkspaceRequests:
    def __init__(self, config: WrapperConfig, redis: Redis, emit: Emit) -> None:
        self._config = config
        self._redis = redis
        self._emit = emit
        self.workspace = Workspace(
            config.workdir,
            AgentIdentity.of(config),
            base=config.workspace_base,
            max_file_bytes=config.workspace_max_bytes,
            home=str(config.agent_home_dir()),
        )
        #: The digest of the last summary published (``ws=`` in the heartbeat); empty: none.
        self.summary_digest = ""

    async def answer(self, entry: InputEntry) -> int:
        """``diff``, ``read`` or ``list``: its answer (or an ``error``) emitted; the ``done``
        code."""
        try:
            if entry.type == InputType.DIFF:
                text = dumps(await self.workspace.diff())
                kind = EventType.DIFF
            elif entry.type == InputType.READ:
                text = dumps(self.workspace.read(entry.fields["path"]))
                kind = EventType.FILE
            else:
                text = dumps(self.workspace.listing(entry.fields.get("path") or "."))
                kind = EventType.LISTING
        except WorkspaceError as exc:
            self._emit(EventType.ERROR, f"{entry.type}: {exc}", entry.id)
            return INVALID_INPUT
        except Exception as exc:  # a bug here must cost one answer, never the worker
            log.exception("answering %s %s failed", entry.type, entry.id)
            self._emit(EventType.ERROR, f"{entry.type}: the wrapper failed ({exc})", entry.id)
            return WRAPPER_FAILED
        self._emit(kind, text, entry.id)
        return 0

    def write(self, entry: InputEntry) -> int:
        """A ``write``: the file written (its ``file`` event) or an ``error``; the ``done``
        code."""
        try:
            written = self.workspace.write(entry.fields["path"], entry.fields.get("content") or "")
        except WorkspaceError as exc:
            self._emit(EventType.ERROR, f"write: {exc}", entry.id)
            return INVALID_INPUT
        except Exception as exc:  # a bug here must cost one answer, never the worker
            log.exception("writing for %s failed", entry.id)
            self._emit(EventType.ERROR, f"write: the wrapper failed ({exc})", entry.id)
            return WRAPPER_FAILED
        self._emit(EventType.FILE, dumps(written), entry.id)
        return 0

    def exec_run(self, entry: InputEntry, sink: Sink) -> AgentRun | int:
        """An ``exec``: the run to start (as the agent, in the workspace, under its own
        timeout), or the ``done`` code of an entry that asks for nothing runnable."""
        try:
            invocation = exec_invocation(entry.fields)
        except WorkspaceError as exc:
            self._emit(EventType.ERROR, f"exec: {exc}", entry.id)
            return INVALID_INPUT
        config = self._config
        timeout = exec_timeout(entry.fields)
        if timeout is not None:
            config = replace(config, input_timeout=timeout)
        return AgentRun(config, ExecDriver(invocation), entry.id, "", sink)

    async def publish_summary(self, input_id: str) -> None:
        """The ``workspace`` event and key, in a workspace that is a git repository."""
        try:
            if not await self.workspace.is_repository():
                return
            summary = await self.workspace.summary()
        except (WorkspaceError, OSError) as exc:
            log.warning("no workspace summary: %s", exc)
            return
        text = dumps(summary)
        self._emit(EventType.WORKSPACE, text, input_id)
        try:
            await self._redis.set(self._config.workspace_key, text)
        except REDIS_ERRORS as exc:
            log.warning("the workspace summary was not published: %s", exc)
            return
        self.summary_digest = summary_digest(text)
