"""Every ending explained: what is kept when a worker ends, after its container is gone.

``<prefix>:<id>:evidence`` (a hash, kept ``WM_EVIDENCE_DAYS``) is written in two steps by the
one code that ends workers (``workers.transitions.lifecycle``):

1. the verdict, when the record changes: ``status``, ``reason``, ``ended_by`` (the delete's
   request id and producer, or the loop that judged it), ``ended_at``, ``manager_id`` and
   ``last_output_id`` (the newest entry of the worker's output then);
2. the container's last words, when its own manager removes it: ``exit_code``, ``oom``,
   ``finished_at`` and ``log_tail``, the last lines of the container's log (bounded, with every
   secret the manager knows of, and anything shaped like credentials in a URL, replaced).

A worker judged on another host (``host_lost``) has a verdict and no last words: nobody can
reach its container; if its manager returns, the fenced container's last words are added then.
The rules (who ended it by default, how a log is bounded and scrubbed) are plain functions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from redis.asyncio import Redis

from worker_base.config import hide_url_credentials
from worker_manager.core.clock import iso_now
from worker_manager.settings import Settings

#: The container log's last lines kept, each cut at this many characters.
LOG_LINES = 50
LINE_CHARS = 500
#: Secrets shorter than this are not searched for (a one-letter "secret" would shred a log).
_MIN_SECRET = 8

#: The loop that gives each reason, when the caller names nobody.
_LOOPS = (
    ("deleted", "delete"),
    ("idle", "evictor (idle timeout)"),
    ("ttl", "evictor (lifetime)"),
    ("budget_exceeded", "watcher (budget: the metered or reported cost)"),
    ("heartbeat_lost", "watcher (heartbeats)"),
    ("heartbeat_invalid", "watcher (heartbeats)"),
    ("output_overflow", "output guard"),
    ("disk_exceeded", "disk guard"),
    ("container_lost", "reconciler"),
    ("host_lost", "lost-hosts judge"),
    ("oom", "docker events (OOM kill)"),
    ("exited", "docker events (exit)"),
    ("build_failed", "create (build)"),
    ("start failed", "create (start)"),
    ("workspace_failed", "create (workspace)"),
)


@dataclass(frozen=True, slots=True)
class LastWords:
    """What a stopped container says about itself (read before it is removed)."""

    exit_code: int | None
    oom: bool
    log: bytes


def ended_by_default(reason: str) -> str:
    """Which loop ends a worker for ``reason`` (SPEC §3), when the caller names nobody."""
    for prefix, loop in _LOOPS:
        if reason.startswith(prefix):
            return loop
    return "manager"


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each known secret and every ``user:secret@`` in a URL replaced."""
    for secret in sorted({s for s in secrets if len(s) >= _MIN_SECRET}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return hide_url_credentials(text)


def log_tail(raw: bytes, secrets: Iterable[str]) -> str:
    """The last :data:`LOG_LINES` lines of a container log, each cut, scrubbed: bounded text
    whatever the container wrote (invalid UTF-8 replaced, no line longer than it may be)."""
    lines = raw.decode("utf-8", errors="replace").splitlines()[-LOG_LINES:]
    cut = [line if len(line) <= LINE_CHARS else line[:LINE_CHARS] + "…" for line in lines]
    return scrub("\n".join(cut), secrets)


def operator_secrets(settings: Settings) -> list[str]:
    """The secrets of the manager's configuration, which no evidence may show."""
    values = [settings.worker_secret.get_secret_value()]
    for secret in (
        settings.anthropic_api_key,
        settings.claude_code_oauth_token,
        settings.factory_api_key,
    ):
        if secret is not None:
            values.append(secret.get_secret_value())
    if settings.git_credentials is not None:
        raw = settings.git_credentials.get_secret_value()
        values.append(raw)
        values += _json_strings(raw)
    return values


def _json_strings(raw: str) -> list[str]:
    try:
        data = json.loads(raw)
    except ValueError:
        return []
    found: list[str] = []
    stack: list[object] = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, Mapping):
            stack += list(item.values())
        elif isinstance(item, list):
            stack += item
    return found


class EvidenceBook:
    """Writes and reads ``<prefix>:<id>:evidence``."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings
        self._keys = settings.keys
        self._ttl = settings.evidence_days * 86_400
        self._secrets = operator_secrets(settings)

    async def verdict(
        self, worker_id: str, status: str, reason: str, exit_code: int | None, ended_by: str
    ) -> None:
        newest = await self._redis.xrevrange(self._keys.output(worker_id), count=1)
        fields = {
            "status": status,
            "reason": reason,
            "ended_by": ended_by,
            "ended_at": iso_now(),
            "manager_id": self._settings.manager_id,
            "last_output_id": newest[0][0] if newest else "",
        }
        if exit_code is not None:
            fields["exit_code"] = str(exit_code)
        await self._write(worker_id, fields)

    async def last_words(self, worker_id: str, words: LastWords, secrets: Iterable[str]) -> None:
        """The container's exit and log; only for a worker that has a record (an orphan's
        container has no one to explain it to)."""
        if not await self._redis.exists(self._keys.worker(worker_id)):
            return
        fields = {
            "oom": "true" if words.oom else "false",
            "finished_at": iso_now(),
            "log_tail": log_tail(words.log, [*self._secrets, *secrets]),
        }
        if words.exit_code is not None:
            fields["exit_code"] = str(words.exit_code)
        await self._write(worker_id, fields)

    async def get(self, worker_id: str) -> dict[str, str]:
        found: dict[str, str] = await self._redis.hgetall(self._keys.evidence(worker_id))
        return found

    async def _write(self, worker_id: str, fields: dict[str, str]) -> None:
        key = self._keys.evidence(worker_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, self._ttl)
            await pipe.execute()
