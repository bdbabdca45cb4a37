"""The LLM gateway: a worker's only way to the Anthropic API, relayed with the operator's key.

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
from worker_manager.egress import meter
from worker_manager.egress.meter import UsageMeter
from worker_manager.egress.routes import ANTHROPIC_ROUTES, PathVerdict, Route, judge

log = get_logger(__name__)

__all__ = [
    "GATEWAY_REQUESTS",
    "OAUTH_BETA",
    "GatewayWorker",
    "LlmGateway",
]

#: Anthropic's beta flag that makes the API accept a Claude subscription's OAuth token.
OAUTH_BETA = "oauth-2025-04-20"
#: Larger than the Messages API's own request limit (32 MB), so the API, not we, refuses.
MAX_REQUEST_BYTES = 64 * 1024 * 1024
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
    "allow-list), bad_path (a path not in normal form), budget_exceeded, upstream_error (the "
    "API could not be reached or broke off), unavailable (the spend could not be read).",
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
        routes: tuple[Route, ...] = ANTHROPIC_ROUTES,
    ) -> None:
        self._redis = redis
        self._upstream = upstream_url.rstrip("/")
        self._api_key = api_key
        self._oauth_token = oauth_token
        self._resolve = resolve
        self._session = session
        self._routes = routes
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
        # The request-target exactly as the worker sent it (aiohttp's own parse may already
        # have decoded or collapsed parts of it).
        target = request.raw_path
        verdict = judge(self._routes, request.method, target)
        if verdict is not PathVerdict.ALLOWED:
            GATEWAY_REQUESTS.labels(verdict.value).inc()
            return self._refusal(verdict, request.method, target)
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
                return anthropic_error(
                    503, "api_error", "worker-manager: this worker's spend cannot be read now"
                )
            if spent >= worker.max_cost_usd:
                GATEWAY_REQUESTS.labels("budget_exceeded").inc()
                with contextlib.suppress(RedisError, OSError):
                    await meter.flag_spent(self._redis, usage_key)
                return anthropic_error(
                    400, "invalid_request_error", meter.budget_refusal(worker.max_cost_usd, spent)
                )
        return await self._forward(request, worker, target, usage_key)

    def _refusal(self, verdict: PathVerdict, method: str, target: str) -> web.Response:
        """A request the gateway does not forward, refused as the API refuses its own."""
        if verdict is PathVerdict.BAD_PATH:
            return anthropic_error(
                404,
                "not_found_error",
                "worker-manager: no such path: the gateway forwards only paths in normal form "
                "(no '.', '..' or empty segment, no percent-encoding)",
            )
        path = target.partition("?")[0][:_PATH_SHOWN]
        allowed = ", ".join(str(route) for route in self._routes)
        return anthropic_error(
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
        body = await request.read()
        try:
            upstream = await self._client().request(
                request.method,
                URL(self._upstream + target, encoded=True),
                headers=self._upstream_headers(request.headers),
                data=body if body else None,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            GATEWAY_REQUESTS.labels("upstream_error").inc()
            log.warning(
                "gateway cannot reach the API",
                worker_id=worker.worker_id,
                path=path,
                error=type(exc).__name__,
            )
            return anthropic_error(
                502,
                "api_error",
                f"worker-manager: the API could not be reached ({type(exc).__name__})",
            )
        answer = UsageMeter(upstream.headers.get("content-type", ""))
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
            await asyncio.shield(
                meter.charge(
                    self._redis,
                    usage_key,
                    answer.finish(cut=not whole),
                    max_cost_usd=worker.max_cost_usd,
                    worker_id=worker.worker_id,
                )
            )

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
                    await _break_off(request, response, answer)
                return response
            await settle()
            if listening:
                with contextlib.suppress(ConnectionError):
                    await response.write_eof()
        finally:
            await settle()  # cancelled (the service stops): charged what was read
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
    request: web.Request, response: web.StreamResponse, answer: UsageMeter
) -> None:
    """End an answer the API broke off so that the worker cannot take it for a whole one.

    A stream gets an ``error`` event, as the API itself sends one mid-stream (the SDKs raise it);
    any other body has its connection closed short of its length or last chunk.
    """
    if answer.is_stream:
        payload: dict[str, Any] = {
            "type": "error",
            "error": {"type": "api_error", "message": "worker-manager: the API broke off"},
        }
        try:
            await response.write(b"event: error\ndata: " + json.dumps(payload).encode() + b"\n\n")
            await response.write_eof()
        except ConnectionError:
            pass
        return
    if request.transport is not None:
        request.transport.close()
