"""Every ending explained: what is kept when a worker ends, after its container is gone.

``<prefix>:<id>:evidence`` (a hash, kept ``WM_EVIDENCE_DAYS``) is written in two steps by the
one code that ends workers (``workers.transitions.lifecycle``):

1. the verdict, when the record changes: ``status``, ``reason``, ``ended_by`` (the delete's
   request id and producer, or the part of the service that gives the reason: each reason of
   ``contract.reasons`` knows its own source), ``ended_at``, ``manager_id`` and
   ``last_output_id`` (the newest entry of the worker's output then);
2. the container's last words, when its own manager removes it: ``exit_code``, ``oom``,
   ``finished_at`` and ``log_tail``, the last lines of the container's log (bounded, with every
   secret the manager knows of, and anything shaped like credentials in a URL, replaced).

A worker judged on another host (``host_lost``) has a verdict and no last words: nobody can
reach its container; if its manager returns, the fenced container's last words are added then.
The rules (how a log is bounded and scrubbed) are plain functions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from redis.asyncio import Redis

from worker_base.config import hide_url_credentials
from worker_manager.contract.reasons import EndReason
from worker_manager.core.clock import iso_now
from worker_manager.settings import Settings

#: The container log's last lines kept, each cut at this many characters.
LOG_LINES = 50
LINE_CHARS = 500
#: Of a line, at most this many characters are scrubbed (plus the longest secret's length).
SCRUB_CHARS = 8192
#: Secrets shorter than this are not searched for (a one-letter "secret" would shred a log).
_MIN_SECRET = 8
#: What ends a word, for the URL a scrubbed window may end in.
_WORD_ENDS = (" ", "\t", '"', "'", "<", ">", "`")


@dataclass(frozen=True, slots=True)
class LastWords:
    """What a stopped container says about itself (read before it is removed)."""

    exit_code: int | None
    oom: bool
    log: bytes


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each known secret and every ``user:secret@`` in a URL replaced."""
    for secret in _searched(secrets):
        text = text.replace(secret, "***")
    return hide_url_credentials(text)


def log_tail(raw: bytes, secrets: Iterable[str]) -> str:
    """The last :data:`LOG_LINES` lines of a container log, each scrubbed, then cut: bounded
    text whatever the container wrote (invalid UTF-8 replaced, no line longer than it may be).

    Scrubbed before it is cut: a secret or a URL's password that the cut runs through would
    otherwise keep its first part, which no search for the whole finds."""
    searched = _searched(secrets)
    lines = raw.decode("utf-8", errors="replace").splitlines()[-LOG_LINES:]
    return "\n".join(_scrubbed_line(line, searched) for line in lines)


def _searched(secrets: Iterable[str]) -> list[str]:
    """The secrets worth searching for, longest first (a secret holding another goes whole)."""
    return sorted({s for s in secrets if len(s) >= _MIN_SECRET}, key=len, reverse=True)


def _scrubbed_line(line: str, searched: list[str]) -> str:
    """One line scrubbed, then cut at :data:`LINE_CHARS` (``…`` marks a cut).

    Only the line's first :data:`SCRUB_CHARS` (and the longest secret's length) are scrubbed,
    to bound the work a flood can ask for; what that window's end may have cut through (a
    secret's first part, a URL whose ``@`` lies beyond it) is dropped, never shown."""
    longest = len(searched[0]) if searched else 0
    window = SCRUB_CHARS + longest
    clean = scrub(line[:window], searched)
    keep = len(clean)
    cut = len(line) > window
    if cut:
        keep = max(0, keep - longest)  # a secret cut by the window: its last characters
        last_word = max(clean.rfind(c, 0, keep) for c in _WORD_ENDS) + 1
        if "://" in clean[last_word:keep]:
            keep = last_word  # a URL the window ends in: its userinfo may reach past it
    if cut or keep > LINE_CHARS:
        return clean[: min(keep, LINE_CHARS)] + "…"
    return clean


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
        self, worker_id: str, reason: EndReason, exit_code: int | None, ended_by: str
    ) -> None:
        """``ended_by``: the reason's own source (``contract.reasons``), or who the caller
        knows did it (a delete's request)."""
        newest = await self._redis.xrevrange(self._keys.output(worker_id), count=1)
        fields = {
            "status": reason.status.value,
            "reason": str(reason),
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
