"""Reporting what the shims refused: ``<state_dir>/refusals.log`` read as sentences, once each.

The shims (:mod:`worker_base.allowlist`) append one JSON line per refused command; the wrapper
turns each into an ``error`` event, either as it happens (:func:`refusals`) or, at the latest,
before the ``done`` of the input it belongs to (:func:`pending_refusals`).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path

from worker_base.allowlist import AllowlistConfig, describe_allowed, refusal_log, refusal_sentence
from worker_base.identity import AgentIdentity, private_dir, write_atomic

_OFFSET_NAME = "refusals.offset"
_POLL_SECONDS = 0.05
#: At most this much of the log is read at once (the agent writes it and could make it huge).
_MAX_READ = 1 << 20


class RefusalReader:
    """Complete records of the refusal log past the last delivered one, as sentences.

    One reader per state directory and allowlist (see :func:`_reader_for`) serves both the
    follower (:func:`refusals`) and the flush after each run (:func:`pending_refusals`), so a
    refusal is reported exactly once whichever of the two sees it first. Where it has delivered
    up to is kept in ``refusals.offset`` among the wrapper's private files: nothing is lost
    between the moment a shim writes and the moment the wrapper first reads, and a restarted
    wrapper does not report old refusals again. Everything here is synchronous: in the
    wrapper's event loop a read and its delivery cannot interleave with another reader call.
    """

    def __init__(self, config: AllowlistConfig) -> None:
        self._allowed = list(config.allowed_commands or [])
        self._log = refusal_log(config)
        self._offset_file = private_dir(config) / _OFFSET_NAME
        #: The log is the agent's file: it is read with the agent's rights (it could be a
        #: symlink to a file only the wrapper may read).
        self._identity = AgentIdentity.of(config)
        self._read_to = _read_offset(self._offset_file)
        #: Sentences read but not yet delivered, each with the offset just past its record.
        self._queue: deque[tuple[str, int]] = deque()

    def _read_log(self) -> bytes:
        """What the log holds past ``_read_to`` (starting over if it shrank: replaced)."""
        try:
            with self._log.open("rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size < self._read_to:
                    self._read_to = 0
                    self._queue.clear()
                if size <= self._read_to:
                    return b""
                handle.seek(self._read_to)
                return handle.read(min(size - self._read_to, _MAX_READ))
        except OSError:
            return b""

    def _fill(self) -> None:
        with self._identity.acting_as_agent():
            chunk = self._read_log()
        if not chunk:
            return
        complete = chunk.rfind(b"\n") + 1  # a line still being written waits
        if not complete and len(chunk) >= _MAX_READ:
            chunk, complete = chunk + b"\n", len(chunk) + 1  # no shim writes such a line
        for raw in chunk[:complete].split(b"\n")[:-1]:
            self._read_to += len(raw) + 1
            sentence = _sentence_from_record(raw, self._allowed)
            if sentence is not None:
                self._queue.append((sentence, self._read_to))
        if not self._queue and complete:
            _write_offset(self._offset_file, self._read_to)  # only blank lines: skip them

    def next(self) -> str | None:
        """The next undelivered sentence, now counted as delivered; None if there is none."""
        if not self._queue:
            self._fill()
        if not self._queue:
            return None
        sentence, offset = self._queue.popleft()
        _write_offset(self._offset_file, offset)
        return sentence

    def drain(self) -> list[str]:
        sentences: list[str] = []
        while (sentence := self.next()) is not None:
            sentences.append(sentence)
        return sentences


_READERS: dict[tuple[Path, tuple[str, ...]], RefusalReader] = {}


def _reader_for(config: AllowlistConfig) -> RefusalReader:
    key = (config.state_dir.resolve(), tuple(config.allowed_commands or ()))
    reader = _READERS.get(key)
    if reader is None:
        reader = _READERS[key] = RefusalReader(config)
    return reader


def pending_refusals(config: AllowlistConfig) -> list[str]:
    """Every refusal logged so far and not yet reported, at once.

    The wrapper calls this after the agent has exited and before it writes ``done``: every
    shim the run started has written its record by then, so each refusal lands before the
    ``done`` of the input it belongs to, however fast the agent ended. Empty when unrestricted.
    """
    if config.allowed_commands is None:
        return []
    return _reader_for(config).drain()


async def refusals(config: AllowlistConfig) -> AsyncGenerator[str, None]:
    """Yield a sentence for each refused command, following the refusal log as it grows.

    Shares its position with :func:`pending_refusals`. Yields nothing when unrestricted.
    """
    if config.allowed_commands is None:
        return
    reader = _reader_for(config)
    while True:
        while (sentence := reader.next()) is not None:
            yield sentence
        await asyncio.sleep(_POLL_SECONDS)


def _sentence_from_record(raw: bytes, allowed: Sequence[str]) -> str | None:
    text = raw.decode("utf-8", "replace").strip()
    if not text:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        shown = text if len(text) <= 500 else text[:500] + "..."
        return f"refused: {shown} (allowed: {describe_allowed(allowed)})"
    argv = record.get("argv") if isinstance(record, dict) else None
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        shown = text if len(text) <= 500 else text[:500] + "..."
        return f"refused: {shown} (allowed: {describe_allowed(allowed)})"
    return refusal_sentence(argv, allowed)


def _read_offset(path: Path) -> int:
    try:
        return max(0, int(path.read_text(encoding="utf-8").strip() or 0))
    except (OSError, ValueError):
        return 0


def _write_offset(path: Path, offset: int) -> None:
    write_atomic(path, str(offset).encode("ascii"))
