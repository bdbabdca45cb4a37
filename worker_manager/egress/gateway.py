"""The LLM gateway: a worker's only way to the Anthropic API, and the meter of what it spends.

A contained worker holds no credential of the operator (SPEC §7). Its ``ANTHROPIC_API_KEY`` is a
random per-worker token that only this gateway knows, served on the worker's own
``gateway.sock``; the gateway checks it, swaps in the operator's credential, forwards the request
to the real API and passes the answer back as it arrives. Because every token the worker spends
comes back through here, the gateway is also where spend is known without trusting the worker:
it reads the API's own ``usage`` as the answer passes, adds it to the worker's usage hash
(``Keys.usage``) at the end of each response, and refuses further requests once the worker's
``max_cost_usd`` is spent.

How it is shaped by speed (the goal: first byte at most 5 ms later than direct, 90 % of the
direct bytes/s):

* one :class:`aiohttp.ClientSession` for every worker, so requests reuse pooled upstream
  connections (no TLS handshake per request);
* each upstream chunk is written to the worker as soon as it is read (``iter_any``); nothing is
  buffered but the JSON body of a non-streamed answer, kept for its ``usage``;
* the meter parses only the ``message_start`` and ``message_delta`` events, the only ones that
  carry ``usage``: the first is in the stream's head, the second in its last bytes, so the
  chunks between are passed on without being looked at;
* Redis is touched once before a request, and only for a worker with a budget (its spend), and
  once after it (the usage, one ``MULTI``); never per chunk.

Compression: the gateway asks the API for ``accept-encoding: identity``. The meter must read the
answer, and a compressed stream would need decompressing just to be metered; over a Unix socket
to the worker, compression saves nothing. Should the API compress anyway, aiohttp's client
decompresses (its default), the meter still reads plain text, and the worker gets the decoded
bytes without ``content-encoding`` (a body the worker could not be charged for would be a hole in
its budget).

Limits, knowingly: the spend is checked before a request and added after it, so requests in
flight together may all pass the check and end a little past the budget (the CLI's own
``--max-budget-usd`` stops it within a run as well). A stream cut off upstream is charged for
what it reported before the cut (its ``message_delta`` carries the output count).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import redis.asyncio
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import Counter
from pydantic import SecretStr
from redis.exceptions import RedisError
from yarl import URL

from worker_manager.core.keys import Keys
from worker_manager.core.logs import get_logger
from worker_manager.egress.pricing import Usage

log = get_logger(__name__)

__all__ = [
    "GATEWAY_REQUESTS",
    "GATEWAY_TOKENS",
    "OAUTH_BETA",
    "GatewayWorker",
    "LlmGateway",
    "UsageMeter",
]

#: Anthropic's beta flag that makes the API accept a Claude subscription's OAuth token.
OAUTH_BETA = "oauth-2025-04-20"
#: Larger than the Messages API's own request limit (32 MB), so the API, not we, refuses.
MAX_REQUEST_BYTES = 64 * 1024 * 1024
#: A non-streamed answer is kept (for its ``usage``) up to this size; past it, unmetered.
MAX_METERED_BODY = 32 * 1024 * 1024
#: A stream's head is searched this far for ``message_start`` (its first event, a few hundred
#: bytes); the bound is for memory against a stream that breaks the protocol.
MAX_SSE_LINE = 1024 * 1024
#: After ``message_start``, the meter keeps the stream's last this many bytes (at least): enough
#: for ``message_delta`` and ``message_stop`` behind it, the end of every Messages stream.
SSE_WINDOW = 64 * 1024
#: Upstream connections kept for all workers together (aiohttp's default of 100 would queue the
#: 101st concurrent stream of a large fleet).
POOL_LIMIT = 1024
#: No byte from the API for this long ends the request: the API sends ``ping`` events during a
#: long generation, and a non-streamed request is bounded by the API at about ten minutes.
UPSTREAM_READ_TIMEOUT = 900.0
UPSTREAM_CONNECT_TIMEOUT = 30.0

#: RFC 9110 §7.6.1 connection-specific headers, never forwarded in either direction.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
#: What of the worker's request stays behind: its own credential (the token), what aiohttp sets
#: for the new connection, and the encoding, which the gateway chooses (see the docstring).
_DROPPED_REQUEST = HOP_BY_HOP | {
    "host",
    "content-length",
    "x-api-key",
    "authorization",
    "accept-encoding",
    "expect",
}

#: Outcomes of a request, a fixed set (label values never come from a request).
OUTCOMES = ("forwarded", "unauthorized", "budget_exceeded", "upstream_error", "unavailable")
TOKEN_KINDS = ("input", "output", "cache_creation", "cache_read")

# The egress service is a process of its own and serves the default registry on its /metrics;
# the manager's metrics live in a private registry (worker_manager.service.metrics) because
# several managers share a test process, which gateways never need to.
GATEWAY_REQUESTS = Counter(
    "wm_gateway_requests",
    "Requests to the LLM gateway, by outcome: forwarded (the API answered, whatever its status), "
    "unauthorized (unknown socket or wrong token), budget_exceeded, upstream_error (the API "
    "could not be reached or broke off), unavailable (the spend could not be read).",
    ["outcome"],
)
GATEWAY_TOKENS = Counter(
    "wm_gateway_tokens",
    "Tokens metered by the LLM gateway from the API's usage, by kind.",
    ["kind"],
)
for _outcome in OUTCOMES:
    GATEWAY_REQUESTS.labels(_outcome)
for _kind in TOKEN_KINDS:
    GATEWAY_TOKENS.labels(_kind)


@dataclass(frozen=True, slots=True)
class GatewayWorker:
    worker_id: str
    #: The worker's Redis key prefix (its keys: ``Keys(key_prefix)``).
    key_prefix: str
    #: What the worker must send as ``x-api-key`` or ``Authorization: Bearer``.
    token: str
    max_cost_usd: float | None


class UsageMeter:
    """Reads one response's ``usage`` as its bytes pass, without holding a stream.

    A stream (``text/event-stream``) carries usage in two events: ``message_start``, its first
    event, and ``message_delta`` (cumulative counts), its last but for ``message_stop``. So the
    meter reads the stream's head until ``message_start`` has passed, then only keeps references
    to the last ``SSE_WINDOW`` bytes of chunks, read once at the end: after the first chunk, a
    byte passing through costs the meter nothing. In either place, only a ``data:`` line that
    mentions ``message_`` is parsed, and the data's own ``type`` decides (a text delta that
    merely mentions ``message_delta`` is parsed and ignored). A JSON answer is kept and parsed
    once at the end.
    """

    __slots__ = ("_body", "_dropped", "_head", "_mode", "_recent", "_size", "_started", "usage")

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
            self._size += len(chunk)
            if self._size <= MAX_METERED_BODY:
                self._body.append(chunk)

    def finish(self) -> Usage:
        if self._mode == "sse":
            if self._started:
                block = b"".join(self._recent)
                # A window that lost its beginning starts inside a line: skip to the next.
                self._scan(block, block.find(b"\n") + 1 if self._dropped else 0, len(block))
            else:
                self._scan(self._head, 0, len(self._head))
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
            return "message_delta"
        return None


def anthropic_error(status: int, kind: str, message: str) -> web.Response:
    """An error the way the API words its own, so the CLI and SDKs show ``message``."""
    return web.json_response(
        {"type": "error", "error": {"type": kind, "message": message}}, status=status
    )


def usd(value: float) -> str:
    """``5.00``, ``0.42``, ``0.0003``: cents always, more digits only where they matter."""
    text = f"{value:.4f}".rstrip("0")
    whole, _, cents = text.partition(".")
    return f"{whole}.{cents.ljust(2, '0')}"


def _connection_named(headers: CIMultiDictProxy[str]) -> set[str]:
    """Headers a ``Connection`` header names are hop-by-hop too (RFC 9110 §7.6.1)."""
    return {
        name.strip().lower()
        for value in headers.getall("connection", [])
        for name in value.split(",")
        if name.strip()
    }


def _join_beta(values: Iterable[str], extra: str) -> str:
    flags = [f.strip() for v in values for f in v.split(",") if f.strip()]
    if extra not in flags:
        flags.append(extra)
    return ",".join(flags)


class LlmGateway:
    """One gateway for every worker of the host; :meth:`app` is served on each worker's socket.

    ``resolve`` maps the local address a request came in on (the socket's path for a Unix
    socket; ``host:port`` for TCP) to its worker, or None for a socket that serves nobody.
    Of the operator's credentials, the API key wins when both are set (as in the CLI).
    """

    def __init__(
        self,
        *,
        redis: redis.asyncio.Redis,
        upstream_url: str,
        api_key: SecretStr | None,
        oauth_token: SecretStr | None,
        resolve: Callable[[str], GatewayWorker | None],
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._redis = redis
        self._upstream = upstream_url.rstrip("/")
        self._api_key = api_key
        self._oauth_token = oauth_token
        self._resolve = resolve
        self._session = session
        # A session is bound to the loop it was made on; ours is made on first use, inside it.
        self._owns_session = session is None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    # --- one request -------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        worker = self._worker_of(request)
        if worker is None:
            GATEWAY_REQUESTS.labels("unauthorized").inc()
            return anthropic_error(
                403, "permission_error", "worker-manager: this socket serves no worker"
            )
        if not _authentic(request, worker.token):
            GATEWAY_REQUESTS.labels("unauthorized").inc()
            return anthropic_error(
                401,
                "authentication_error",
                "worker-manager: invalid API key for this worker's gateway",
            )
        if worker.max_cost_usd is not None:
            try:
                spent = await self._spent(worker)
            except (RedisError, OSError) as exc:
                GATEWAY_REQUESTS.labels("unavailable").inc()
                log.warning(
                    "gateway cannot read a worker's spend",
                    worker_id=worker.worker_id,
                    error=type(exc).__name__,
                )
                return anthropic_error(
                    503, "api_error", "worker-manager: this worker's spend cannot be read now"
                )
            if spent >= worker.max_cost_usd:
                GATEWAY_REQUESTS.labels("budget_exceeded").inc()
                with contextlib.suppress(RedisError, OSError):
                    await self._spent_all(worker)
                return anthropic_error(
                    400,
                    "invalid_request_error",
                    f"worker-manager: this worker's budget of ${usd(worker.max_cost_usd)} is "
                    f"spent (${usd(spent)} so far); it takes no more API calls",
                )
        return await self._forward(request, worker)

    def _worker_of(self, request: web.Request) -> GatewayWorker | None:
        transport = request.transport
        if transport is None:
            return None
        sockname = transport.get_extra_info("sockname")
        if isinstance(sockname, tuple) and len(sockname) >= 2:
            sockname = f"{sockname[0]}:{sockname[1]}"
        if not isinstance(sockname, str):
            return None
        worker = self._resolve(sockname)
        return worker if worker is not None and worker.token else None

    async def _spent(self, worker: GatewayWorker) -> float:
        raw = await self._redis.hget(Keys(worker.key_prefix).usage(worker.worker_id), "cost_usd")
        if raw is None:
            return 0.0
        try:
            return float(raw.decode() if isinstance(raw, bytes) else raw)
        except ValueError:
            return 0.0

    async def _forward(self, request: web.Request, worker: GatewayWorker) -> web.StreamResponse:
        rel = request.rel_url
        if not rel.raw_path.startswith("/"):
            return anthropic_error(400, "invalid_request_error", "worker-manager: bad request path")
        target = URL(self._upstream + rel.raw_path_qs, encoded=True)
        body = await request.read()
        try:
            upstream = await self._client().request(
                request.method,
                target,
                headers=self._upstream_headers(request.headers),
                data=body if body else None,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            GATEWAY_REQUESTS.labels("upstream_error").inc()
            log.warning(
                "gateway cannot reach the API",
                worker_id=worker.worker_id,
                path=rel.path,
                error=type(exc).__name__,
            )
            return anthropic_error(
                502,
                "api_error",
                f"worker-manager: the API could not be reached ({type(exc).__name__})",
            )
        meter = UsageMeter(upstream.headers.get("content-type", ""))
        response = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=_client_headers(upstream.headers),
        )
        outcome = "forwarded"
        settled = False

        async def settle() -> None:
            """Count and charge the answer, once; before its end reaches the worker when it
            ends normally, so that the worker's next request already sees the spend."""
            nonlocal settled
            if settled:
                return
            settled = True
            if outcome == "forwarded" and upstream.content.at_eof():
                upstream.release()  # read to its end: the connection goes back to the pool
            else:
                upstream.close()  # one left mid-answer must not
            GATEWAY_REQUESTS.labels(outcome).inc()
            await asyncio.shield(self._record(worker, meter.finish()))

        try:
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    meter.feed(chunk)
                    await response.write(chunk)
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome = "upstream_error"
                log.warning(
                    "the API broke off an answer",
                    worker_id=worker.worker_id,
                    path=rel.path,
                    error=type(exc).__name__,
                )
                await settle()
                await _break_off(request, response, meter)
                return response
            await settle()
            await response.write_eof()
        except ConnectionResetError:  # the worker went away; what it cost is charged below
            pass
        finally:
            await settle()
        return response

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=POOL_LIMIT, limit_per_host=0),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=UPSTREAM_CONNECT_TIMEOUT,
                    sock_read=UPSTREAM_READ_TIMEOUT,
                ),
                # The workers' cookies (the API's load balancer sets some) must not be shared
                # between workers through one jar.
                cookie_jar=aiohttp.DummyCookieJar(),
                # The worker's own headers go upstream as they are, not aiohttp's defaults.
                skip_auto_headers=("User-Agent", "Content-Type"),
            )
        return self._session

    def _upstream_headers(self, headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
        dropped = _DROPPED_REQUEST | _connection_named(headers)
        out: CIMultiDict[str] = CIMultiDict(
            (name, value) for name, value in headers.items() if name.lower() not in dropped
        )
        out["accept-encoding"] = "identity"
        if self._api_key is not None:
            out["x-api-key"] = self._api_key.get_secret_value()
        elif self._oauth_token is not None:
            out["authorization"] = f"Bearer {self._oauth_token.get_secret_value()}"
            beta = _join_beta(out.getall("anthropic-beta", []), OAUTH_BETA)
            out.popall("anthropic-beta", None)
            out["anthropic-beta"] = beta
        return out

    async def _spent_all(self, worker: GatewayWorker) -> None:
        """Flag the worker's budget as spent where its manager's watcher reads it (the usage
        hash, which no worker can write): the watcher stops it (``budget_exceeded``)."""
        key = Keys(worker.key_prefix).usage(worker.worker_id)
        await self._redis.hset(key, "budget_exceeded", "1")

    async def _record(self, worker: GatewayWorker, usage: Usage) -> None:
        """Add one response's usage and cost to the worker's hash, in one ``MULTI``."""
        key = Keys(worker.key_prefix).usage(worker.worker_id)
        cost = usage.cost_usd()
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hincrby(key, "input_tokens", usage.input_tokens)
                pipe.hincrby(key, "output_tokens", usage.output_tokens)
                pipe.hincrby(key, "cache_creation_input_tokens", usage.cache_creation_input_tokens)
                pipe.hincrby(key, "cache_read_input_tokens", usage.cache_read_input_tokens)
                pipe.hincrby(key, "requests", 1)
                pipe.hincrbyfloat(key, "cost_usd", cost)
                total = float((await pipe.execute())[-1])
            if worker.max_cost_usd is not None and total >= worker.max_cost_usd:
                await self._spent_all(worker)
        except (RedisError, OSError, ValueError) as exc:
            log.error(
                "gateway could not record a worker's usage",
                worker_id=worker.worker_id,
                cost_usd=cost,
                error=type(exc).__name__,
            )
        for kind, count in (
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_creation", usage.cache_creation_input_tokens),
            ("cache_read", usage.cache_read_input_tokens),
        ):
            if count:
                GATEWAY_TOKENS.labels(kind).inc(count)


def _authentic(request: web.Request, token: str) -> bool:
    """Whether the request carries the worker's token, compared in constant time."""
    expected = token.encode()
    presented: list[str] = []
    key = request.headers.get("x-api-key")
    if key:
        presented.append(key)
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        presented.append(value.strip())
    ok = False
    for candidate in presented:
        ok |= hmac.compare_digest(candidate.encode("utf-8", "surrogateescape"), expected)
    return ok


def _client_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The API's response headers for the worker, less what belongs to the upstream connection.

    ``content-length`` and ``content-encoding`` go when aiohttp decoded the body (the worker gets
    the decoded bytes); an identity body keeps its length.
    """
    dropped = HOP_BY_HOP | _connection_named(headers)
    if headers.get("content-encoding", "identity").strip().lower() != "identity":
        dropped = dropped | {"content-encoding", "content-length"}
    return CIMultiDict(
        (name, value) for name, value in headers.items() if name.lower() not in dropped
    )


async def _break_off(request: web.Request, response: web.StreamResponse, meter: UsageMeter) -> None:
    """End an answer the API broke off so that the worker cannot take it for a whole one.

    A stream gets an ``error`` event, as the API itself sends one mid-stream (the SDKs raise it);
    any other body has its connection closed short of its length or last chunk.
    """
    if meter.is_stream:
        payload: dict[str, Any] = {
            "type": "error",
            "error": {"type": "api_error", "message": "worker-manager: the API broke off"},
        }
        try:
            await response.write(b"event: error\ndata: " + json.dumps(payload).encode() + b"\n\n")
            await response.write_eof()
        except ConnectionResetError:
            pass
        return
    if request.transport is not None:
        request.transport.close()
