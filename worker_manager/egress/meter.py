"""The LLM gateway's meter: what one answer of the API costs a worker, and its spend in Redis.

Every token a contained worker spends comes back through the gateway, so the gateway is where
spend is known without trusting the worker. This module is that knowledge, apart from the relay
(:mod:`worker_manager.egress.gateway`, which only moves bytes and calls in here):

* :class:`UsageMeter` reads the Messages API's own ``usage`` from the bytes of one answer as they
  pass, :class:`ResponsesMeter` the Responses API's (OpenAI, for CODEX workers);
* :func:`charge` adds an answer's usage and cost to the worker's usage hash (``Keys.usage``) in
  one ``MULTI`` and flags the budget as spent once it is; :func:`spent` reads the spend back
  before a request, :func:`budget_refusal` words the refusal.

What is charged is what the API sent, whoever read it. The gateway reads every answer to its end
even when the worker hangs up halfway (so a worker that leaves once it has the text is charged
the final count all the same), and an answer that never reached its final count (the API broke
off, or the gateway was stopped) is charged an estimate from the text it carried: at least the
output count reported so far, one token per event, and one per :data:`BYTES_PER_TOKEN` bytes of
text, fewer bytes a token than Claude's tokenizer averages: the estimate errs toward charging
more, as an unknown model is charged the highest price (:mod:`worker_manager.egress.pricing`).

Shaped by speed (the gateway's goal: 90 % of the direct bytes/s): the meter parses only the
``message_start`` and ``message_delta`` events, the only ones that carry ``usage``; the first is
in the stream's head, the second in its last bytes, so the chunks between are only counted
(their length and their newlines, at C speed), never parsed. Redis is touched once before a
request, and only for a worker with a budget, and once after it; never per chunk.
"""

from __future__ import annotations

import json
import math
from collections import deque
from typing import Any, Protocol

import redis.asyncio
from prometheus_client import Counter
from redis.exceptions import RedisError

from worker_manager.core.logs import get_logger
from worker_manager.egress.pricing import OpenAIUsage, Usage

log = get_logger(__name__)

__all__ = [
    "BYTES_PER_TOKEN",
    "GATEWAY_TOKENS",
    "AnswerMeter",
    "MeteredUsage",
    "ResponsesMeter",
    "UsageMeter",
    "budget_refusal",
    "charge",
    "estimated_tokens",
    "flag_spent",
    "increments",
    "spend_of",
    "spent",
    "usd",
]

#: A non-streamed answer is kept (for its ``usage``) up to this size; past it, unmetered (the
#: Messages API's largest answer, 128 000 output tokens, is a few hundred kB).
MAX_METERED_BODY = 32 * 1024 * 1024
#: A stream's head is searched this far for ``message_start`` (its first event, a few hundred
#: bytes); the bound is for memory against a stream that breaks the protocol.
MAX_SSE_LINE = 1024 * 1024
#: After ``message_start``, the meter keeps the stream's last this many bytes (at least): enough
#: for ``message_delta`` and ``message_stop`` behind it, the end of every Messages stream.
SSE_WINDOW = 64 * 1024
#: An estimate's bytes of text per output token: Claude's tokenizer averages about 3.5 to 4 on
#: English and code; fewer here, so that an estimate charges more rather than less.
BYTES_PER_TOKEN = 3
#: One text delta event of the API around an empty text, in the API's own compact form: the
#: fewest bytes an event of a stream carries besides its text, over its three lines (``event:``,
#: ``data:``, the blank line). An estimate takes each line of a stream after its
#: ``message_start`` to cost this share of it, and the rest to be text; a line is counted by its
#: newline (the text of a JSON string holds none unescaped), at the speed of ``memchr``.
_DELTA_EVENT = (
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":""}}\n\n'
)
LINES_PER_EVENT = _DELTA_EVENT.count(b"\n")
LINE_FRAMING = len(_DELTA_EVENT) // LINES_PER_EVENT

TOKEN_KINDS = ("input", "output", "cache_creation", "cache_read", "reasoning")
#: The usage hash's fields, by the token kind the metric counts them as.
_KIND_OF_FIELD = {
    "input_tokens": "input",
    "output_tokens": "output",
    "cache_creation_input_tokens": "cache_creation",
    "cache_read_input_tokens": "cache_read",
    "reasoning_tokens": "reasoning",
}
GATEWAY_TOKENS = Counter(
    "wm_gateway_tokens",
    "Tokens metered by the LLM gateway from the API's usage, by kind.",
    ["kind"],
)
for _kind in TOKEN_KINDS:
    GATEWAY_TOKENS.labels(_kind)


class MeteredUsage(Protocol):
    """What the meter charges: one answer's tokens, as hash fields, and their price."""

    def counts(self) -> dict[str, int]: ...

    def cost_usd(self) -> float: ...


class AnswerMeter(Protocol):
    """Reads one answer's usage as its bytes pass (one per API: Messages, Responses)."""

    @property
    def is_stream(self) -> bool: ...

    def feed(self, chunk: bytes) -> None: ...

    def finish(self, *, cut: bool = False) -> MeteredUsage: ...


def estimated_tokens(text_bytes: int, events: int = 0) -> int:
    """Output tokens charged for ``text_bytes`` of text in ``events`` stream events whose count
    the API never reported: one per :data:`BYTES_PER_TOKEN` bytes, and at least one per event
    (the API sends a delta as tokens come, never an empty one)."""
    return max(events, math.ceil(max(0, text_bytes) / BYTES_PER_TOKEN))


class UsageMeter:
    """Reads one response's ``usage`` as its bytes pass, without holding a stream.

    A stream (``text/event-stream``) carries usage in two events: ``message_start``, its first
    event, and ``message_delta`` (cumulative counts), its last but for ``message_stop``. So the
    meter reads the stream's head until ``message_start`` has passed, then only keeps references
    to the last ``SSE_WINDOW`` bytes of chunks, read once at the end, and counts the bytes and
    the lines that went by (for an estimate, should the final count never come). In either
    place, only a ``data:`` line that mentions ``message_`` is parsed, and the data's own
    ``type`` decides (a text delta that merely mentions ``message_delta`` is parsed and ignored).
    A JSON answer is kept and parsed once at the end.
    """

    __slots__ = (
        "_body",
        "_dropped",
        "_final",
        "_head",
        "_lines",
        "_mode",
        "_recent",
        "_relayed",
        "_size",
        "_started",
        "usage",
    )

    def __init__(self, content_type: str) -> None:
        self.usage = Usage()
        kind = content_type.split(";", 1)[0].strip().lower()
        self._mode = "sse" if kind == "text/event-stream" else "json" if "json" in kind else ""
        self._head = b""
        self._started = False
        self._recent: deque[bytes] = deque()
        self._dropped = False
        self._body: list[bytes] = []
        self._size = 0
        #: Bytes and lines of the stream after ``message_start`` (for an estimate).
        self._relayed = 0
        self._lines = 0
        #: Whether the API's final count (``message_delta``) was read.
        self._final = False

    @property
    def is_stream(self) -> bool:
        return self._mode == "sse"

    def feed(self, chunk: bytes) -> None:
        if self._mode == "sse":
            if self._started:
                self._remember(chunk)
            else:
                self._feed_head(chunk)
        elif self._mode == "json":
            self._relayed += len(chunk)
            self._size += len(chunk)
            if self._size <= MAX_METERED_BODY:
                self._body.append(chunk)

    def finish(self, *, cut: bool = False) -> Usage:
        """The usage of the answer fed so far; ``cut``: it ended before its end (the API broke
        off, or the gateway stopped reading), so a JSON body is charged by its size."""
        if self._mode == "sse":
            if self._started:
                block = b"".join(self._recent)
                # A window that lost its beginning starts inside a line: skip to the next.
                self._scan(block, block.find(b"\n") + 1 if self._dropped else 0, len(block))
            else:
                self._scan(self._head, 0, len(self._head))
            if not self._final:
                text = self._relayed - self._lines * LINE_FRAMING
                estimate = estimated_tokens(text, self._lines // LINES_PER_EVENT)
                self.usage.output_tokens = max(self.usage.output_tokens, estimate)
        elif self._mode == "json" and self._body and self._size <= MAX_METERED_BODY:
            try:
                answer = json.loads(b"".join(self._body))
            except ValueError:
                answer = None
            if isinstance(answer, dict):
                self.usage.update(answer.get("usage"))
                model = answer.get("model")
                if isinstance(model, str):
                    self.usage.model = model
            elif cut:
                self.usage.output_tokens = estimated_tokens(self._relayed)
        self._head, self._recent, self._body = b"", deque(), []
        self._size = 0
        return self.usage

    def _feed_head(self, chunk: bytes) -> None:
        head = self._head + chunk if self._head else chunk
        after = self._scan(head, 0, head.rfind(b"\n") + 1, until_start=True)
        if after >= 0 or len(head) > MAX_SSE_LINE:
            # message_start has passed (or, against the protocol, not within a MiB: then the
            # window alone is read, from a line boundary on).
            self._started, self._head = True, b""
            self._dropped = after < 0
            rest = head[after:] if after >= 0 else head
            if rest:
                self._remember(rest)
        else:
            self._head = head

    def _remember(self, chunk: bytes) -> None:
        self._relayed += len(chunk)
        self._lines += chunk.count(b"\n")
        self._recent.append(chunk)
        self._size += len(chunk)
        while self._size - len(self._recent[0]) >= SSE_WINDOW:
            self._size -= len(self._recent.popleft())
            self._dropped = True

    def _scan(self, block: bytes, start: int, stop: int, *, until_start: bool = False) -> int:
        """Parse the usage lines of ``block[start:stop]``, in order; with ``until_start``, stop
        after ``message_start`` and return where its line ends (-1: not there)."""
        hit = block.find(b"message_", start, stop)
        while hit >= 0:
            before = block.rfind(b"\n", start, hit)
            after = block.find(b"\n", hit, stop)
            if after < 0:
                after = stop
            kind = self._line(block[start if before < 0 else before + 1 : after])
            if until_start and kind == "message_start":
                return after + 1
            hit = block.find(b"message_", after, stop)
        return -1

    def _line(self, line: bytes) -> str | None:
        """Take the usage of one SSE line; which event it was, if it was one of the two."""
        if not line.startswith(b"data:"):
            return None
        if b"message_start" not in line and b"message_delta" not in line:
            return None
        try:
            event = json.loads(line[5:])
        except ValueError:
            return None
        if not isinstance(event, dict):
            return None
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message")
            if isinstance(message, dict):
                self.usage.update(message.get("usage"))
                model = message.get("model")
                if isinstance(model, str):
                    self.usage.model = model
            return "message_start"
        if kind == "message_delta":
            self.usage.update(event.get("usage"))
            self._final = True
            return "message_delta"
        return None


#: The start of an SSE ``data:`` line (after the previous line's newline).
_DATA_LINE = b"\ndata:"
#: The Responses API's final events: each carries the response with its ``usage``.
_FINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")
#: The stream's head is kept this far, for ``response.created`` (the model, should the final
#: event never come).
RESPONSES_HEAD = 64 * 1024


class ResponsesMeter:
    """Reads one Responses API answer's ``usage`` as its bytes pass, without holding a stream.

    A stream's usage is in its last event (``response.completed``, or ``response.incomplete`` /
    ``response.failed``), whose data line also repeats the whole answer, so it may be long. The
    meter keeps the bytes from the start of the newest ``data:`` line on (a JSON line holds no
    raw newline, so the last line start found in a chunk is a real one), and parses that line
    once at the end. A stream that ends without a final event (the API broke off) is charged an
    estimate: every byte it carried at :data:`BYTES_PER_TOKEN` bytes a token (framing included,
    and an answer's text is repeated in its stream, so the estimate errs high) and the request's
    bytes as input.
    """

    __slots__ = (
        "_body",
        "_capture",
        "_captured",
        "_final",
        "_head",
        "_lines",
        "_mode",
        "_relayed",
        "_request_bytes",
        "_tail",
        "usage",
    )

    def __init__(self, content_type: str, request_bytes: int = 0) -> None:
        self.usage = OpenAIUsage()
        kind = content_type.split(";", 1)[0].strip().lower()
        self._mode = "sse" if kind == "text/event-stream" else "json" if "json" in kind else ""
        self._request_bytes = request_bytes
        self._head = b""
        self._tail = b"\n"  # the stream's first line starts a line, as if after a newline
        self._capture: list[bytes] = []
        self._captured = 0
        self._body: list[bytes] = []
        self._relayed = 0
        self._lines = 0
        self._final = False

    @property
    def is_stream(self) -> bool:
        return self._mode == "sse"

    def feed(self, chunk: bytes) -> None:
        self._relayed += len(chunk)
        if self._mode == "json":
            if self._relayed <= MAX_METERED_BODY:
                self._body.append(chunk)
            return
        if self._mode != "sse":
            return
        self._lines += chunk.count(b"\n")
        if len(self._head) < RESPONSES_HEAD:
            self._head += chunk[: RESPONSES_HEAD - len(self._head)]
        joined = self._tail + chunk
        hit = joined.rfind(_DATA_LINE)
        if hit >= 0:
            start = joined[hit + 1 :]
            self._capture, self._captured = [start], len(start)
        elif self._capture and self._captured <= MAX_METERED_BODY:
            self._capture.append(chunk)
            self._captured += len(chunk)
        self._tail = joined[-(len(_DATA_LINE) - 1) :]

    def finish(self, *, cut: bool = False) -> OpenAIUsage:
        if self._mode == "sse":
            if self._captured <= MAX_METERED_BODY:
                for line in b"".join(self._capture).splitlines():
                    self._data_line(line)
            if not self._final:
                self._estimate()
        elif self._mode == "json" and self._body and self._relayed <= MAX_METERED_BODY:
            try:
                answer = json.loads(b"".join(self._body))
            except ValueError:
                answer = None
            if isinstance(answer, dict):
                self._take(answer)
            elif cut:
                self._estimate()
        self._capture, self._body, self._head = [], [], b""
        return self.usage

    def _data_line(self, line: bytes) -> None:
        if not line.startswith(b"data:") or not any(e.encode() in line for e in _FINAL_EVENTS):
            return
        try:
            event = json.loads(line[5:])
        except ValueError:
            return
        if isinstance(event, dict) and event.get("type") in _FINAL_EVENTS:
            response = event.get("response")
            if isinstance(response, dict):
                self._take(response)

    def _take(self, response: dict[str, Any]) -> None:
        """The usage and model of a whole response object."""
        model = response.get("model")
        if isinstance(model, str):
            self.usage.model = model
        if isinstance(response.get("usage"), dict):
            self.usage.update(response["usage"])
            self._final = True

    def _estimate(self) -> None:
        if self.usage.model is None:
            self._model_from_head()
        # Every byte of the stream counts as text: its framing is a small part of an answer's
        # bytes, and charging it errs toward more, as the docstring says.
        estimate = estimated_tokens(self._relayed, self._lines // 3)
        self.usage.output_tokens = max(self.usage.output_tokens, estimate)
        self.usage.input_tokens = max(
            self.usage.input_tokens, estimated_tokens(self._request_bytes)
        )

    def _model_from_head(self) -> None:
        for line in self._head.splitlines():
            if line.startswith(b"data:") and b"response.created" in line:
                try:
                    event = json.loads(line[5:])
                except ValueError:
                    return
                response = event.get("response") if isinstance(event, dict) else None
                model = response.get("model") if isinstance(response, dict) else None
                if isinstance(model, str):
                    self.usage.model = model
                return


# --- money -----------------------------------------------------------------------------------
#: A day's spend is kept two days past it (read on its own day; the day after, for ``top``).
SPEND_DAY_TTL_SECONDS = 3 * 86_400


def usd(value: float) -> str:
    """``5.00``, ``0.42``, ``0.0003``: cents always, more digits only where they matter."""
    text = f"{value:.4f}".rstrip("0")
    whole, _, cents = text.partition(".")
    return f"{whole}.{cents.ljust(2, '0')}"


def budget_refusal(max_cost_usd: float, spent_usd: float) -> str:
    """What a worker whose budget is spent reads (the CLI shows it as the API's own error)."""
    return (
        f"worker-manager: this worker's budget of ${usd(max_cost_usd)} is spent "
        f"(${usd(spent_usd)} so far); it takes no more API calls"
    )


def spend_of(raw: Any) -> float:
    """The ``cost_usd`` field of a usage hash as read from Redis (absent or garbled: 0)."""
    if raw is None:
        return 0.0
    try:
        return float(raw.decode() if isinstance(raw, bytes) else raw)
    except (ValueError, UnicodeDecodeError):
        return 0.0


def increments(usage: MeteredUsage) -> dict[str, int]:
    """What one answer adds to the integer fields of the worker's usage hash."""
    return {**usage.counts(), "requests": 1}


# --- the worker's spend in Redis ---------------------------------------------------------------
async def spent(redis: redis.asyncio.Redis, usage_key: str) -> float:
    """The worker's spend so far (raises ``RedisError``/``OSError``: the caller decides)."""
    return spend_of(await redis.hget(usage_key, "cost_usd"))


async def flag_spent(redis: redis.asyncio.Redis, usage_key: str) -> None:
    """Flag the worker's budget as spent where its manager's watcher reads it (the usage hash,
    which no worker can write): the watcher stops it (``budget_exceeded``)."""
    await redis.hset(usage_key, "budget_exceeded", "1")


async def charge(
    redis: redis.asyncio.Redis,
    usage_key: str,
    usage: MeteredUsage,
    *,
    max_cost_usd: float | None,
    worker_id: str,
    spend_key: str | None = None,
) -> None:
    """Add one answer's usage and cost to the worker's hash, and its cost to its namespace's
    spend of the day (``spend_key``: what a tenant's ``max_cost_usd_per_day`` is checked
    against), in one ``MULTI``; flag the budget once it is spent. A Redis failure is logged,
    not raised: the answer is already the worker's."""
    cost = usage.cost_usd()
    try:
        async with redis.pipeline(transaction=True) as pipe:
            if spend_key is not None and cost > 0:
                pipe.incrbyfloat(spend_key, cost)
                pipe.expire(spend_key, SPEND_DAY_TTL_SECONDS)
            for field, count in increments(usage).items():
                pipe.hincrby(usage_key, field, count)
            pipe.hincrbyfloat(usage_key, "cost_usd", cost)
            total = float((await pipe.execute())[-1])
        if max_cost_usd is not None and total >= max_cost_usd:
            await flag_spent(redis, usage_key)
    except (RedisError, OSError, ValueError) as exc:
        log.error(
            "gateway could not record a worker's usage",
            worker_id=worker_id,
            cost_usd=cost,
            error=type(exc).__name__,
        )
    for field, count in usage.counts().items():
        kind = _KIND_OF_FIELD.get(field)
        if kind is not None and count:
            GATEWAY_TOKENS.labels(kind).inc(count)
