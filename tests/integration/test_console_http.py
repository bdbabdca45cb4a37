"""The console's sign-in over real HTTP (no browser needed): which routes are public, the session
cookie's ``Secure`` flag, and throttled failures. The manager's own HTTP server with a real Redis
behind the console; only the health source is a stand-in (no Docker is asked)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr
from redis.asyncio import Redis

from worker_manager.console import session
from worker_manager.console.app import Console
from worker_manager.core.keys import Keys
from worker_manager.service.http import HttpServer
from worker_manager.service.metrics import Metrics
from worker_manager.settings import Settings
from worker_manager.typing import Load

pytestmark = [pytest.mark.redis]

TOKEN = "console-http-test-token-0123456789"
HTML = {"Accept": "text/html"}


class Healthy:
    def intake(self) -> str:
        return "ok"

    def loop_problems(self) -> dict[str, str]:
        return {}

    def ping_docker(self) -> object:
        return True

    def load(self) -> Load:
        return Load(commands_in_flight=0, creates_in_progress=0, draining=False)

    async def extra_metrics(self) -> str:
        return ""


@contextlib.asynccontextmanager
async def console(settings: Settings, **overrides: Any) -> AsyncIterator[str]:
    """The manager's HTTP server with the console on; yields its base URL."""
    settings = settings.model_copy(
        update={"http_addr": "127.0.0.1:0", "ui_token": SecretStr(TOKEN), **overrides}
    )
    server = HttpServer(settings, settings, Healthy(), Metrics())
    await server.start()
    try:
        yield server.url
    finally:
        await server.stop()


def client() -> aiohttp.ClientSession:
    # No cookie jar: each test says which cookie it sends; no redirects followed.
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())


async def test_only_the_login_route_is_public_however_a_path_is_spelt(settings: Settings) -> None:
    """``/ui/workers/x%2Flogin`` is the worker route (id ``x/login``): it wants a session."""
    async with console(settings) as base, client() as http:
        for path in ("/ui/workers/x%2Flogin", "/ui/workers/a%2F..%2Flogin", "/ui/%6Cogin%2F"):
            async with http.get(base + path, allow_redirects=False) as resp:
                assert resp.status == 401, (path, resp.status, await resp.text())
            async with http.get(base + path, headers=HTML, allow_redirects=False) as resp:
                assert resp.status == 303 and resp.headers["Location"] == "/ui/login", path
        async with http.post(base + "/ui/workers/x%2Flogin", allow_redirects=False) as resp:
            assert resp.status in (401, 405), resp.status
        # The login route itself stays public, however it is spelt.
        for path in ("/ui/login", "/ui/%6Cogin"):
            async with http.get(base + path) as resp:
                assert resp.status == 200 and "Sign in" in await resp.text(), path


async def test_the_session_cookie_is_secure_when_the_sign_in_came_over_tls(
    settings: Settings,
) -> None:
    async def cookie_of(base: str, headers: dict[str, str]) -> str:
        async with (
            client() as http,
            http.post(
                base + "/ui/login", data={"token": TOKEN}, headers=headers, allow_redirects=False
            ) as resp,
        ):
            assert resp.status == 303, await resp.text()
            return resp.headers["Set-Cookie"]

    async with console(settings) as base:
        plain = await cookie_of(base, {})
        assert "HttpOnly" in plain and "SameSite=Strict" in plain and "Secure" not in plain
        behind_tls = await cookie_of(base, {"X-Forwarded-Proto": "https"})
        assert "Secure" in behind_tls and "HttpOnly" in behind_tls
        forwarded = await cookie_of(base, {"Forwarded": 'for=192.0.2.1;proto="https"'})
        assert "Secure" in forwarded
    async with console(settings, ui_secure_cookie="on") as base:
        assert "Secure" in await cookie_of(base, {})
    async with console(settings, ui_secure_cookie="off") as base:
        assert "Secure" not in await cookie_of(base, {"X-Forwarded-Proto": "https"})


async def test_failed_sign_ins_are_throttled_and_the_token_is_not_judged_meanwhile(
    settings: Settings,
) -> None:
    async with console(settings) as base, client() as http:
        login = base + "/ui/login"
        statuses = []
        for i in range(8):
            async with http.post(login, data={"token": f"guess-{i}"}) as resp:
                statuses.append(resp.status)
                retry_after = resp.headers.get("Retry-After")
        assert statuses[:5] == [401] * 5, statuses  # a few typos cost nothing
        assert 429 in statuses[5:], statuses
        assert retry_after is not None and int(retry_after) >= 1
        # Shut out: even the right token is refused unread (else the refusal would be an answer).
        async with http.post(login, data={"token": TOKEN}, allow_redirects=False) as resp:
            assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
        # A bearer token is a sign-in too: the same throttle.
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        async with http.get(base + "/ui/rows", headers=bearer) as resp:
            assert resp.status == 429
        # An existing session is not a guess: it is never throttled.
        cookie = session.new_session(TOKEN, time.time())
        async with http.get(base + "/ui/rows", cookies={session.COOKIE: cookie}) as resp:
            assert resp.status == 200
        # Once the wait is over, the right token works again.
        wait = int(retry_after)
        assert wait <= 4, wait
        deadline = time.monotonic() + wait + 5
        while True:
            async with http.post(login, data={"token": TOKEN}, allow_redirects=False) as resp:
                if resp.status == 303:
                    break
                assert resp.status == 429
            assert time.monotonic() < deadline, "still shut out after Retry-After"
            await asyncio.sleep(0.2)  # polled against the deadline above


async def test_wrong_bearer_tokens_count_as_failed_sign_ins(settings: Settings) -> None:
    async with console(settings) as base, client() as http:
        statuses = []
        for i in range(7):
            headers = {"Authorization": f"Bearer guess-{i}"}
            async with http.get(base + "/ui/rows", headers=headers) as resp:
                statuses.append(resp.status)
        assert statuses[:5] == [401] * 5 and statuses[-1] == 429, statuses


@contextlib.asynccontextmanager
async def console_alone(redis: Redis) -> AsyncIterator[str]:
    """The console's own app on a port of its own (mounted at ``/ui`` like the manager's)."""
    outer = web.Application()
    outer.add_subapp("/ui/", Console(redis, Keys("wm-test"), TOKEN).app())
    runner = web.AppRunner(outer, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("front", ["manager", "console alone"])
async def test_parallel_guesses_are_each_counted_before_any_is_judged(
    settings: Settings, redis: Redis, front: str
) -> None:
    """Forty guesses sent at once, each body sent only after every handler has started: each
    is still judged as one more attempt, so all but the first few are refused unread.

    The manager's server reads each body before the console sees it (its size limit), which
    happens to close this race there; the console must not lean on that."""
    started = console(settings) if front == "manager" else console_alone(redis)
    async with started as base:
        host, port = base.removeprefix("http://").rsplit(":", 1)
        body = b"token=wrong-guess"
        head = (
            f"POST /ui/login HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
        ).encode()
        connections = [await asyncio.open_connection(host, int(port)) for _ in range(40)]
        try:
            for _reader, writer in connections:
                writer.write(head)
            # The server answers 100 Continue as it hands each request to its handler.
            for reader, _writer in connections:
                line = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
                assert line.startswith(b"HTTP/1.1 100"), line
            for _reader, writer in connections:
                writer.write(body)
            statuses = []
            for reader, _writer in connections:
                status = await asyncio.wait_for(reader.readuntil(b"\r\n"), 20)
                statuses.append(int(status.split()[1]))
        finally:
            for _reader, writer in connections:
                writer.close()
        # As when sent one after another: five free failures, a sixth that starts the wait.
        assert sorted(statuses) == [401] * 6 + [429] * 34, str(statuses)


async def test_a_guesser_emptying_the_global_bucket_shuts_out_no_clean_sign_in(
    settings: Settings,
) -> None:
    """Wrong guesses from many addresses (each under its own limit) empty the global bucket:
    those addresses then wait, but a script's right bearer token and the operator's sign-in
    from an address with no failures still get in."""

    def from_address(last: int) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(local_addr=(f"127.0.0.{last}", 0))
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    async with console(settings) as base:
        login = base + "/ui/login"
        for last in range(2, 40):  # 38 failures: more than the bucket holds
            async with from_address(last) as http, http.post(login, data={"token": "x"}) as resp:
                assert resp.status == 401, (last, resp.status)
        async with from_address(2) as http, http.post(login, data={"token": "x"}) as resp:
            assert resp.status == 429, "an address that guessed wrong waits for the bucket"
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        async with from_address(50) as http, http.get(base + "/ui/rows", headers=bearer) as resp:
            assert resp.status == 200, await resp.text()
        async with (
            from_address(51) as http,
            http.post(login, data={"token": TOKEN}, allow_redirects=False) as resp,
        ):
            assert resp.status == 303, await resp.text()
