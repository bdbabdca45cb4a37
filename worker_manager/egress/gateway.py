"""The LLM gateway: a worker's only way to its model's API, relayed with the operator's key.

Two APIs are served, one per agent: Anthropic's Messages API for CLAUDE workers and OpenAI's
Responses API for CODEX workers (:class:`Api`: its routes, its error shape, its meter, how the
operator's key is sent). Which one a worker's socket speaks is in its grant
(``Grant.gateway_api``); the service runs one gateway per API, so a CLAUDE worker's token never
opens OpenAI's account nor the other way round.

A contained worker holds no credential of the operator (SPEC §7). Its ``ANTHROPIC_API_KEY`` is a
random per-worker token that only this gateway knows, served on the worker's own
``gateway.sock``; the gateway checks it, checks that the request is one an agent needs (an
allow-list of methods and paths, :mod:`worker_manager.egress.routes`: the key's account is not
the worker's), swaps in the operator's credential, forwards the request to the real API and
passes the answer back as it arrives. Because every token the worker spends comes back through
here, the gateway has the meter (:mod:`worker_manager.egress.meter`) read the API's own
``usage`` as the answer passes, charge it to the worker at the end of each response, and it
refuses further requests once the worker's ``max_cost_usd`` is spent. This module is the HTTP
relay; what an answer costs and where the spend is kept is the meter's.

An allowed endpoint can still ask the API to act for the agent (server tools, MCP servers,
sources fetched by URL): the body of each forwarded request is checked against its API's body
policy (:class:`~worker_manager.egress.routes.BodyPolicy`) and forwarded as checked, and beta
flags off its allow-list are dropped. The gateway is shared by every worker of the host, so one
worker gets at most :data:`MAX_REQUESTS_PER_WORKER` requests in flight (an answer it hung up on
counts until the API's answer ends) and :data:`MAX_BODY_BYTES_PER_WORKER` bytes of request
bodies at once; past either it is told ``429`` and retries, and the others keep the rest of the
upstream pool. Waiting for a pooled connection ends after :data:`UPSTREAM_POOL_TIMEOUT`.

How it is shaped by speed (the goal: first byte at most 5 ms later than direct, 90 % of the
direct bytes/s):

* one :class:`aiohttp.ClientSession` for every worker, so requests reuse pooled upstream
  connections (no TLS handshake per request);
* each upstream chunk is written to the worker as soon as it is read (``iter_any``); nothing is
  buffered but the JSON body of a non-streamed answer, kept for its ``usage``;
* Redis is touched once before a request, and only for a worker with a budget (its spend), and
  once after it (the usage, one ``MULTI``); never per chunk.

An answer is read from the API to its end whoever reads it: a worker that hangs up halfway is
charged what the API sent all the same (the rest is read and metered, not written). An answer
the API breaks off is charged for what it carried (the meter's estimate) and ends for the
worker so that it cannot be taken for a whole one.

Compression: the gateway asks the API for ``accept-encoding: identity``. The meter must read the
answer, and a compressed stream would need decompressing just to be metered; over a Unix socket
to the worker, compression saves nothing. Should the API compress anyway, aiohttp's client
decompresses (its default), the meter still reads plain text, and the worker gets the decoded
bytes without ``content-encoding`` (a body the worker could not be charged for would be a hole in
its budget).

Limits, knowingly: the spend is checked before a request and added after it, so requests in
flight together may all pass the check and end a little past the budget (the CLI's own
``--max-budget-usd`` stops it within a run as well).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import aiohttp
import redis.asyncio
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import Counter
from pydantic import SecretStr
from redis.exceptions import RedisError
from yarl import URL

from worker_manager.core.clock import utc_day
from worker_manager.core.keys import Keys
from worker_manager.core.logs import get_logger
from worker_manager.egress import meter
from worker_manager.egress.limits import ByteLimit, ConnectionLimit
from worker_manager.egress.meter import AnswerMeter, ResponsesMeter, UsageMeter
from worker_manager.egress.routes import (
    ANTHROPIC_BODY,
    ANTHROPIC_ROUTES,
    OPENAI_BODY,
    OPENAI_ROUTES,
    BodyPolicy,
    BodyRefused,
    PathVerdict,
    Route,
    checked_body,
    forwarded_betas,
    judge,
)

log = get_logger(__name__)

__all__ = [
    "ANTHROPIC_API",
    "GATEWAY_REQUESTS",
    "OAUTH_BETA",
    "OPENAI_API",
    "Api",
    "GatewayWorker",
    "LlmGateway",
]

#: Anthropic's beta flag that makes the API accept a Claude subscription's OAuth token.
OAUTH_BETA = "oauth-2025-04-20"
#: The largest request body taken: the Messages API's own limit (32 MB). Claude Code's largest
#: are a long conversation (a 200 000-token context is about 1 MB of JSON, a 1M one about 5 MB)
#: with images or PDFs in it, which the API caps at this size anyway.
MAX_REQUEST_BYTES = 32 * 1024 * 1024
#: Bounds on what one worker takes of the gateway shared by all (hole g: one worker must not
#: starve the others): requests in flight at once, answers it hung up on but which are still
#: read to their end included (Claude Code runs a few subagents at once, each one stream, plus
#: short side requests), and request-body bytes held at once.
MAX_REQUESTS_PER_WORKER = 16
MAX_BODY_BYTES_PER_WORKER = 64 * 1024 * 1024
#: Waiting for an upstream connection (the shared pool's turn included) ends after this long.
UPSTREAM_POOL_TIMEOUT = 60.0
#: Upstream connections kept for all workers together (aiohttp's default of 100 would queue the
#: 101st concurrent stream of a large fleet).
POOL_LIMIT = 1024
#: No byte from the API for this long ends the request: the API sends ``ping`` events during a
#: long generation, and a non-streamed request is bounded by the API at about ten minutes.
UPSTREAM_READ_TIMEOUT = 900.0
UPSTREAM_CONNECT_TIMEOUT = 30.0
#: A refused path is named in the refusal up to this many characters.
_PATH_SHOWN = 200

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
OUTCOMES = (
    "forwarded",
    "unauthorized",
    "not_allowed",
    "bad_path",
    "refused_body",
    "too_many",
    "budget_exceeded",
    "upstream_error",
    "unavailable",
)

# The egress service is a process of its own and serves the default registry on its /metrics;
# the manager's metrics live in a private registry (worker_manager.service.metrics) because
# several managers share a test process, which gateways never need to.
GATEWAY_REQUESTS = Counter(
    "wm_gateway_requests",
    "Requests to the LLM gateway, by outcome: forwarded (the API answered, whatever its status), "
    "unauthorized (unknown socket or wrong token), not_allowed (a method and path not on the "
    "allow-list), bad_path (a path not in normal form), refused_body (a body asking the API for a "
    "server tool, MCP server, container or fetched source, or not JSON, or too large), "
    "too_many (past the worker's bound on requests or body bytes at once), budget_exceeded, "
    "upstream_error (the API could not be reached or broke off), unavailable (the spend could "
    "not be read).",
    ["outcome"],
)
for _outcome in OUTCOMES:
    GATEWAY_REQUESTS.labels(_outcome)


@dataclass(frozen=True, slots=True)
class GatewayWorker:
    worker_id: str
    #: The worker's Redis key prefix (its keys: ``Keys(key_prefix)``).
    key_prefix: str
    #: What the worker must send as ``x-api-key`` or ``Authorization: Bearer``.
    token: str
    max_cost_usd: float | None


def anthropic_error(status: int, kind: str, message: str) -> web.Response:
    """An error the way the API words its own, so the CLI and SDKs show ``message``."""
    return web.json_response(
        {"type": "error", "error": {"type": kind, "message": message}}, status=status
    )


#: The gateway's refusals as OpenAI words its errors: ``type`` and ``code`` for each kind the
#: gateway refuses with (named as Anthropic names them).
_OPENAI_KINDS: dict[str, tuple[str, str | None]] = {
    "authentication_error": ("invalid_request_error", "invalid_api_key"),
    "permission_error": ("invalid_request_error", "permission_denied"),
    "not_found_error": ("invalid_request_error", "not_found"),
    "invalid_request_error": ("invalid_request_error", None),
    "api_error": ("server_error", None),
    "insufficient_quota": ("insufficient_quota", "insufficient_quota"),
    # Too many requests in flight / body bytes at once: as OpenAI's rate limit, which Codex
    # and the SDKs retry (``insufficient_quota`` they do not).
    "rate_limit_error": ("requests", "rate_limit_exceeded"),
    "request_too_large": ("invalid_request_error", "request_too_large"),
}


def openai_error(status: int, kind: str, message: str) -> web.Response:
    """An error as OpenAI's API words its own (``{"error": {message, type, code}}``), so Codex
    and OpenAI's SDKs show ``message``."""
    error_type, code = _OPENAI_KINDS.get(kind, ("invalid_request_error", None))
    return web.json_response(
        {"error": {"message": message, "type": error_type, "param": None, "code": code}},
        status=status,
    )


@dataclass(frozen=True, slots=True)
class Api:
    """What differs between the APIs the gateway serves; the relay is the same."""

    name: str
    routes: tuple[Route, ...]
    #: ``(status, kind, message)`` -> a refusal in the API's own shape.
    error: Callable[[int, str, str], web.Response]
    #: How a spent budget is refused: OpenAI's quota error makes Codex stop (no retry).
    budget_status: int
    budget_kind: str
    #: ``(content type, request bytes)`` -> the meter of one answer.
    meter: Callable[[str, int], AnswerMeter]
    #: The operator's key as ``Authorization: Bearer`` (OpenAI) rather than ``x-api-key``.
    bearer: bool
    #: The last event of a stream the API broke off (SDKs raise it as an error).
    broke_off: bytes
    #: What a forwarded body may ask of the API (None: not checked; see routes.BodyPolicy).
    body: BodyPolicy | None = None


ANTHROPIC_API = Api(
    name="anthropic",
    routes=ANTHROPIC_ROUTES,
    error=anthropic_error,
    budget_status=400,
    budget_kind="invalid_request_error",
    meter=lambda content_type, _size: UsageMeter(content_type),
    bearer=False,
    broke_off=b"event: error\ndata: "
    + json.dumps(
        {
            "type": "error",
            "error": {"type": "api_error", "message": "worker-manager: the API broke off"},
        }
    ).encode()
    + b"\n\n",
    body=ANTHROPIC_BODY,
)
OPENAI_API = Api(
    name="openai",
    routes=OPENAI_ROUTES,
    error=openai_error,
    budget_status=429,
    budget_kind="insufficient_quota",
    meter=ResponsesMeter,
    bearer=True,
    broke_off=b"event: error\ndata: "
    + json.dumps(
        {
            "type": "error",
            "code": "server_error",
            "message": "worker-manager: the API broke off",
            "param": None,
        }
    ).encode()
    + b"\n\n",
    body=OPENAI_BODY,
)
#: ``Grant.gateway_api`` -> the API.
APIS = {api.name: api for api in (ANTHROPIC_API, OPENAI_API)}


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
        api: Api = ANTHROPIC_API,
        max_requests_per_worker: int = MAX_REQUESTS_PER_WORKER,
        max_body_bytes_per_worker: int = MAX_BODY_BYTES_PER_WORKER,
    ) -> None:
        self._redis = redis
        self._upstream = upstream_url.rstrip("/")
        self._api_key = api_key
        self._oauth_token = oauth_token
        self._resolve = resolve
        self._session = session
        self._api = api
        self._error = api.error
        self._routes = api.routes
        # A session is bound to the loop it was made on; ours is made on first use, inside it.
        self._owns_session = session is None
        self._in_flight = ConnectionLimit(max_requests_per_worker)
        self._body_bytes = ByteLimit(max_body_bytes_per_worker)
        #: Charges under way (shielded: an answer cancelled at a stop still charges what it read);
        #: ``settle_charges`` waits for them before the service ends.
        self._charges: set[asyncio.Future[None]] = set()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def settle_charges(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) for the charges under way to reach Redis."""
        if self._charges:
            await asyncio.wait(set(self._charges), timeout=timeout)

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    # --- one request -------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        worker = self._worker_of(request)
        if worker is None:
            GATEWAY_REQUESTS.labels("unauthorized").inc()
            return self._error(
                403, "permission_error", "worker-manager: this socket serves no worker"
            )
        if not _authentic(request, worker.token):
            GATEWAY_REQUESTS.labels("unauthorized").inc()
            return self._error(
                401,
                "authentication_error",
                "worker-manager: invalid API key for this worker's gateway",
            )
        # The request-target exactly as the worker sent it (aiohttp's own parse may already
        # have decoded or collapsed parts of it).
        target = request.raw_path
        verdict = judge(self._routes, request.method, target)
        if verdict is not PathVerdict.ALLOWED:
            GATEWAY_REQUESTS.labels(verdict.value).inc()
            return self._refusal(verdict, request.method, target)
        # Held until the answer is read to its end, the worker there or not (hang-up drains).
        if not self._in_flight.acquire(worker.worker_id):
            GATEWAY_REQUESTS.labels("too_many").inc()
            return self._error(
                429,
                "rate_limit_error",
                f"worker-manager: this worker has {self._in_flight.per_worker} requests in "
                "flight already (answers it hung up on count until they end); retry later",
            )
        try:
            return await self._admitted(request, worker, target)
        finally:
            self._in_flight.release(worker.worker_id)

    async def _admitted(
        self, request: web.Request, worker: GatewayWorker, target: str
    ) -> web.StreamResponse:
        usage_key = Keys(worker.key_prefix).usage(worker.worker_id)
        if worker.max_cost_usd is not None:
            try:
                spent = await meter.spent(self._redis, usage_key)
            except (RedisError, OSError) as exc:
                GATEWAY_REQUESTS.labels("unavailable").inc()
                log.warning(
                    "gateway cannot read a worker's spend",
                    worker_id=worker.worker_id,
                    error=type(exc).__name__,
                )
                return self._error(
                    503, "api_error", "worker-manager: this worker's spend cannot be read now"
                )
            if spent >= worker.max_cost_usd:
                GATEWAY_REQUESTS.labels("budget_exceeded").inc()
                with contextlib.suppress(RedisError, OSError):
                    await meter.flag_spent(self._redis, usage_key)
                return self._error(
                    self._api.budget_status,
                    self._api.budget_kind,
                    meter.budget_refusal(worker.max_cost_usd, spent),
                )
        return await self._forward(request, worker, target, usage_key)

    def _refusal(self, verdict: PathVerdict, method: str, target: str) -> web.Response:
        """A request the gateway does not forward, refused as the API refuses its own."""
        if verdict is PathVerdict.BAD_PATH:
            return self._error(
                404,
                "not_found_error",
                "worker-manager: no such path: the gateway forwards only paths in normal form "
                "(no '.', '..' or empty segment, no percent-encoding)",
            )
        path = target.partition("?")[0][:_PATH_SHOWN]
        allowed = ", ".join(str(route) for route in self._routes)
        return self._error(
            403,
            "permission_error",
            f"worker-manager: the gateway does not forward {method[:20]} {path}; a worker may "
            f"call {allowed}",
        )

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

    async def _forward(
        self, request: web.Request, worker: GatewayWorker, target: str, usage_key: str
    ) -> web.StreamResponse:
        """Relay one allowed request and its answer; the answer is read from the API to its
        end whether or not the worker stays to read it, and charged once."""
        path = target.partition("?")[0]
        held = 0
        try:
            body, held = await self._read_body(request, worker)
            if body and self._api.body is not None:
                body = checked_body(self._api.body, body)
            upstream = await self._client().request(
                request.method,
                URL(self._upstream + target, encoded=True),
                headers=self._upstream_headers(request.headers),
                data=body if body else None,
                allow_redirects=False,
            )
        except BodyRefused as refused:
            GATEWAY_REQUESTS.labels("too_many" if refused.status == 429 else "refused_body").inc()
            return self._error(refused.status, refused.kind, str(refused))
        except (aiohttp.ClientError, TimeoutError) as exc:
            GATEWAY_REQUESTS.labels("upstream_error").inc()
            log.warning(
                "gateway cannot reach the API",
                worker_id=worker.worker_id,
                path=path,
                error=type(exc).__name__,
            )
            return self._error(
                502,
                "api_error",
                f"worker-manager: the API could not be reached ({type(exc).__name__})",
            )
        finally:
            self._body_bytes.give_back(worker.worker_id, held)
        size, body = len(body), b""  # sent: its memory goes now, not after the answer
        answer = self._api.meter(upstream.headers.get("content-type", ""), size)
        response = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=_client_headers(upstream.headers),
        )
        outcome = "forwarded"
        listening = True  # the worker still takes the answer
        settled = False

        async def settle() -> None:
            """Count and charge the answer, once; before its end reaches the worker when it
            ends normally, so that the worker's next request already sees the spend."""
            nonlocal settled
            if settled:
                return
            settled = True
            whole = outcome == "forwarded" and upstream.content.at_eof()
            if whole:
                upstream.release()  # read to its end: the connection goes back to the pool
            else:
                upstream.close()  # one left mid-answer must not
            GATEWAY_REQUESTS.labels(outcome).inc()
            charge = asyncio.ensure_future(
                meter.charge(
                    self._redis,
                    usage_key,
                    answer.finish(cut=not whole),
                    max_cost_usd=worker.max_cost_usd,
                    worker_id=worker.worker_id,
                    spend_key=Keys(worker.key_prefix).spend(utc_day()),
                )
            )
            self._charges.add(charge)
            charge.add_done_callback(self._charges.discard)
            await asyncio.shield(charge)

        try:
            try:
                await response.prepare(request)
            except ConnectionError:
                listening = False
            try:
                async for chunk in upstream.content.iter_any():
                    answer.feed(chunk)
                    if listening:
                        try:
                            await response.write(chunk)
                        except ConnectionError:
                            # The worker hung up: the rest is read all the same, for its count.
                            listening = False
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome = "upstream_error"
                log.warning(
                    "the API broke off an answer",
                    worker_id=worker.worker_id,
                    path=path,
                    error=type(exc).__name__,
                )
                await settle()
                if listening:
                    await _break_off(request, response, answer, self._api.broke_off)
                return response
            await settle()
            if listening:
                with contextlib.suppress(ConnectionError):
                    await response.write_eof()
        finally:
            await settle()  # cancelled (the service stops): charged what was read
        return response

    async def _read_body(self, request: web.Request, worker: GatewayWorker) -> tuple[bytes, int]:
        """The request's body and the bytes counted against the worker for it (given back by
        the caller); :exc:`BodyRefused` past :data:`MAX_REQUEST_BYTES` (413) or past the
        worker's bytes at once (429), counted as they arrive so that a refused body is never
        held whole."""
        declared = request.content_length
        if declared is not None and declared > MAX_REQUEST_BYTES:
            raise BodyRefused(413, "request_too_large", _too_large())
        chunks: list[bytes] = []
        held = 0
        try:
            async for chunk in request.content.iter_any():
                if held + len(chunk) > MAX_REQUEST_BYTES:
                    raise BodyRefused(413, "request_too_large", _too_large())
                if not self._body_bytes.take(worker.worker_id, len(chunk)):
                    raise BodyRefused(
                        429,
                        "rate_limit_error",
                        "worker-manager: this worker's requests in flight hold "
                        f"{self._body_bytes.per_worker // (1024 * 1024)} MiB of body already; "
                        "retry later",
                    )
                held += len(chunk)
                chunks.append(chunk)
        except BaseException:
            self._body_bytes.give_back(worker.worker_id, held)
            raise
        return b"".join(chunks), held

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=POOL_LIMIT, limit_per_host=0),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=UPSTREAM_POOL_TIMEOUT,
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
        if self._api.body is not None and "anthropic-beta" in out:
            # Only the flags of the allow-list: a beta is how the API's server-side features
            # (MCP servers, code execution, files) are switched on.
            betas = forwarded_betas(self._api.body, out.popall("anthropic-beta"))
            if betas:
                out["anthropic-beta"] = ",".join(betas)
        if self._api_key is not None and self._api.bearer:
            out["authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        elif self._api_key is not None:
            out["x-api-key"] = self._api_key.get_secret_value()
        elif self._oauth_token is not None:
            out["authorization"] = f"Bearer {self._oauth_token.get_secret_value()}"
            beta = _join_beta(out.getall("anthropic-beta", []), OAUTH_BETA)
            out.popall("anthropic-beta", None)
            out["anthropic-beta"] = beta
        return out


def _too_large() -> str:
    return (
        f"worker-manager: the request body is larger than {MAX_REQUEST_BYTES // (1024 * 1024)} "
        "MiB, the API's own limit"
    )


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


async def _break_off(
    request: web.Request, response: web.StreamResponse, answer: AnswerMeter, event: bytes
) -> None:
    """End an answer the API broke off so that the worker cannot take it for a whole one.

    A stream gets an ``error`` event, as the API itself sends one mid-stream (the SDKs raise it);
    any other body has its connection closed short of its length or last chunk.
    """
    if answer.is_stream:
        try:
            await response.write(event)
            await response.write_eof()
        except ConnectionError:
            pass
        return
    if request.transport is not None:
        request.transport.close()
