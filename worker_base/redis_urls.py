"""Redis URLs, Sentinel's included: one parser and one client factory for every process.

``WM_REDIS_URL`` and ``WM_WORKER_REDIS_URL`` may name a Redis watched by Sentinel (SPEC §6)::

    redis+sentinel://[[user]:password@]host:port[,host:port…]/<master name>[/<db>]

The hosts are the sentinels (port 26379 when left out); the credentials and the database are the
data nodes' (the primary's and, after a failover, the promoted replica's: configure the same on
every node). Sentinels are asked without credentials.

redis-py speaks Sentinel (:class:`redis.asyncio.sentinel.Sentinel`) but has no URL form for it,
so :func:`client_for` is the one place that turns either kind of URL into a client: a plain URL
goes to ``Redis.from_url``, a Sentinel URL to a client whose every new connection asks the
sentinels where the primary is now. Nothing else in a client changes, so a failover looks like
a Redis restart to its callers: connections fail, the next ones reach the new primary.

Pure Python with redis-py only: the wrapper (inside containers) and the manager both import it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379

#: Socket options a Sentinel query shares with the data connections (the rest are the data
#: connections' own: credentials, retries, a client name, decoding).
_SENTINEL_OPTIONS = ("socket_timeout", "socket_connect_timeout")


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None

    def render(self, *, hide_password: bool = False) -> str:
        """The URL again (credentials percent-encoded); ``hide_password`` for logs."""
        creds = ""
        if self.username is not None or self.password is not None:
            creds = quote(self.username or "", safe="")
            if self.password is not None:
                creds += ":" + ("***" if hide_password else quote(self.password, safe=""))
            creds += "@"
        hosts = ",".join(f"{_host_text(host)}:{port}" for host, port in self.sentinels)
        return f"{SENTINEL_SCHEME}://{creds}{hosts}/{quote(self.master, safe='')}/{self.db}"

    def with_credentials(self, username: str | None, password: str | None) -> SentinelUrl:
        return replace(self, username=username, password=password)

    def with_hosts(self, sentinels: tuple[tuple[str, int], ...]) -> SentinelUrl:
        return replace(self, sentinels=sentinels)


def is_sentinel_url(url: str) -> bool:
    return url.lower().startswith(SENTINEL_SCHEME + "://")


def parse_sentinel_url(url: str) -> SentinelUrl:
    """``url`` as a :class:`SentinelUrl`; ``ValueError`` saying what is wrong otherwise."""
    if not is_sentinel_url(url):
        raise ValueError(f"not a {SENTINEL_SCHEME}:// URL")
    rest = url[len(SENTINEL_SCHEME) + 3 :]
    if "?" in rest or "#" in rest:
        raise ValueError("a Sentinel URL takes no query or fragment")
    netloc, _, path = rest.partition("/")
    creds, at, hosts_text = netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if at:
        user_text, colon, password_text = creds.partition(":")
        username = unquote(user_text) or None
        password = unquote(password_text) if colon else None
        if not colon:  # ``user@``: a user without a password is not a Redis login
            raise ValueError("a Sentinel URL's credentials are [user]:password")
    sentinels = tuple(_host_port(part) for part in hosts_text.split(","))
    segments = path.split("/") if path else []
    if not segments or not segments[0]:
        raise ValueError("a Sentinel URL names its master: redis+sentinel://host:port/<master>")
    if len(segments) > 2 or (len(segments) == 2 and not segments[1].isdigit()):
        raise ValueError("a Sentinel URL's path is /<master>[/<db>] with a numeric db")
    db = int(segments[1]) if len(segments) == 2 else 0
    return SentinelUrl(sentinels, unquote(segments[0]), db, username, password)


def database_of(url: str) -> str:
    """The database a plain or a Sentinel URL selects, as text ("" when the URL leaves it out)."""
    if is_sentinel_url(url):
        return str(parse_sentinel_url(url).db)
    return urlsplit(url).path.strip("/")


def client_for(url: str, **options: Any) -> Redis:
    """A client for a plain or a Sentinel URL; ``options`` are ``Redis``'s own keywords.

    A Sentinel client asks the sentinels for the primary on every new connection and closes its
    sentinel connections with itself (:meth:`Redis.aclose`)."""
    if not is_sentinel_url(url):
        client: Redis = Redis.from_url(url, **options)
        return client
    target = parse_sentinel_url(url)
    sentinel = Sentinel(
        list(target.sentinels),
        sentinel_kwargs={k: options[k] for k in _SENTINEL_OPTIONS if k in options},
    )
    master: Redis = sentinel.master_for(
        target.master,
        redis_class=Redis,
        connection_pool_class=_OwningSentinelPool,
        db=target.db,
        username=target.username,
        password=target.password,
        **options,
    )
    return master


async def master_address(url: str, *, timeout: float = 5.0) -> tuple[str, int]:
    """Where the primary of a Sentinel URL is now (for a byte relay that opens raw sockets)."""
    target = parse_sentinel_url(url)
    options = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    async with Sentinel(list(target.sentinels), sentinel_kwargs=options) as sentinel:
        host, port = await sentinel.discover_master(target.master)
    return str(host), int(port)


class _OwningSentinelPool(SentinelConnectionPool):  # type: ignore[misc]
    """A master's pool that also closes the sentinel clients it asked: one per client here."""

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            await self.sentinel_manager.aclose()


def _host_port(text: str) -> tuple[str, int]:
    if not text:
        raise ValueError("a Sentinel URL lists host:port pairs separated by commas")
    if text.startswith("["):  # [IPv6]:port
        host, bracket, port_text = text[1:].partition("]")
        if not bracket or (port_text and not port_text.startswith(":")):
            raise ValueError(f"a malformed sentinel address: {text!r}")
        port_text = port_text[1:]
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError(f"a sentinel address without a host: {text!r}")
    if port_text and not port_text.isdigit():
        raise ValueError(f"a sentinel address with a non-numeric port: {text!r}")
    port = int(port_text) if port_text else SENTINEL_PORT
    if not 0 < port < 65536:
        raise ValueError(f"a sentinel port out of range: {text!r}")
    return host, port


def _host_text(host: str) -> str:
    return f"[{host}]" if ":" in host else host
