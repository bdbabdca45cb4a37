"""Failed sign-ins slow down whoever makes them: per client address and across all of them.

The console's token is the key to the fleet, and a sign-in (the login form, or a bearer token on
any route) answers "right" or "wrong" at once, so guessing must be slow. Kept in memory, as
plain data over the time it is given (no Redis, no clock of its own; testable as is):

- **per client** (an IPv4 address, or an IPv6 /64, which one host usually holds whole): the first
  :attr:`ThrottleRules.free_failures` failures cost nothing (typos), then each further one shuts
  that client out for twice as long as the last, up to :attr:`ThrottleRules.max_delay`; a success
  forgets the client's failures, and so does :attr:`ThrottleRules.forget_after` without any;
- **globally** (many addresses, one guesser): a bucket of :attr:`ThrottleRules.burst` failures,
  refilled at :attr:`ThrottleRules.refill_per_second`; while it is empty, a client with a failure
  on record waits for it, so each address gets one guess and then waits. A client without one
  (the operator, a script with its bearer token) does not: an anonymous guesser keeping the
  bucket empty (one wrong try every 2 s) would otherwise shut every sign-in out, bearer
  scripts on every route included. The lock is per address; the bucket only stops addresses
  that already guessed wrong from guessing again.

A shut-out attempt is refused before the token is looked at (429 with ``Retry-After``): were a
right token let through meanwhile, the refusal would itself answer the guess. A valid session
cookie is never throttled (its MAC cannot be guessed). At most :attr:`ThrottleRules.max_clients`
clients are remembered; beyond that the oldest is forgotten (the global bucket still holds).
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ThrottleRules:
    free_failures: int = 5
    base_delay: float = 1.0
    max_delay: float = 900.0
    forget_after: float = 3600.0
    burst: float = 30.0
    refill_per_second: float = 0.5
    max_clients: int = 10_000


@dataclass(slots=True)
class _Client:
    failures: int = 0
    blocked_until: float = 0.0
    last_failure: float = 0.0


def client_key(remote: str | None) -> str:
    """Whom a request's failures count against: its peer address (an IPv6 one by its /64).

    Not ``X-Forwarded-For``: anyone can write that header, and a guesser would write a new
    address for each guess. Behind a reverse proxy every client is the proxy (then the per-client
    limit is one more global one)."""
    if not remote:
        return "unknown"
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else address)


@dataclass(slots=True)
class SignInThrottle:
    rules: ThrottleRules = field(default_factory=ThrottleRules)
    _clients: dict[str, _Client] = field(default_factory=dict)
    _tokens: float | None = None
    _refilled_at: float = 0.0

    def retry_after(self, client: str, now: float) -> int:
        """Seconds until ``client`` may try again (0: now), rounded up for ``Retry-After``."""
        wait = 0.0
        found = self._clients.get(client)
        if found is not None and now - found.last_failure > self.rules.forget_after:
            found = None  # forgotten (failed() starts it afresh)
        if found is not None:
            wait = max(wait, found.blocked_until - now)
        tokens = self._refill(now)
        if tokens < 1.0 and found is not None:  # the bucket holds back those who failed
            wait = max(wait, (1.0 - tokens) / self.rules.refill_per_second)
        return math.ceil(wait) if wait > 0 else 0

    def failed(self, client: str, now: float) -> None:
        """One wrong token from ``client``."""
        self._tokens = max(0.0, self._refill(now) - 1.0)
        found = self._clients.pop(client, None)
        if found is None or now - found.last_failure > self.rules.forget_after:
            found = _Client()
        found.failures += 1
        found.last_failure = now
        over = found.failures - self.rules.free_failures
        if over > 0:
            delay = self.rules.base_delay * 2.0 ** min(over - 1, 62)
            found.blocked_until = now + min(delay, self.rules.max_delay)
        self._clients[client] = found  # newest last: the oldest is the first to forget
        self._bound(now)

    def succeeded(self, client: str) -> None:
        """A right token: ``client``'s failures are forgotten (the global bucket is not)."""
        self._clients.pop(client, None)

    def _refill(self, now: float) -> float:
        if self._tokens is None:
            self._tokens, self._refilled_at = self.rules.burst, now
        elapsed = max(0.0, now - self._refilled_at)
        self._tokens = min(self.rules.burst, self._tokens + elapsed * self.rules.refill_per_second)
        self._refilled_at = now
        return self._tokens

    def _bound(self, now: float) -> None:
        if len(self._clients) <= self.rules.max_clients:
            return
        for key, client in list(self._clients.items()):
            if now - client.last_failure > self.rules.forget_after and client.blocked_until < now:
                del self._clients[key]
        while len(self._clients) > self.rules.max_clients:
            del self._clients[next(iter(self._clients))]
