"""The egress decision: may this worker reach ``host:port``, which resolved to these addresses?

A plain function over data (no DNS, no sockets), so every rule is unit-tested without a proxy;
the proxy resolves the name, asks :meth:`EgressPolicy.decide`, and connects only to an address
it checked (so a name cannot re-resolve elsewhere between the check and the connect).

The rules, and why:

- **Names by name, addresses by address.** ``host`` and ``*.domain`` entries match the name the
  client asked for; ``network`` entries match the addresses it resolved to (all of them), so
  ``10.0.0.0/8:5432`` grants an IP literal in it and any name that resolves into it alike;
  ``*`` matches any name or literal.
- **Every address must be acceptable.** A destination is allowed when some entry matches it
  (with its port) *and* every resolved address is acceptable. An address is acceptable when it
  is public, or when a ``network`` entry with a matching port literally contains it. A name
  that resolves to one public and one private address is refused: the client's resolver, or a
  rebinding attacker, decides which one it would get.
- **Non-public addresses only literally.** Loopback, link-local (the cloud metadata address
  169.254.169.254 included), private, shared (100.64.0.0/10), multicast, reserved and
  unspecified addresses are reachable only through a ``network`` entry: a granted name or ``*``
  never leads there, whatever the name resolves to. So granting ``localhost`` by name grants
  nothing, and a prompt-injected agent cannot point a granted wildcard's DNS at the host's
  services.
- **An address is judged where it leads.** An IPv6 form that carries an IPv4 address
  (IPv4-mapped ``::ffff:127.0.0.1``, IPv4-compatible, NAT64 ``64:ff9b::/96``, 6to4
  ``2002::/16``, Teredo) is judged as that IPv4 address, and a wide IPv6 network (``::/0``)
  does not name it literally: only an IPv4 network holding it, or an IPv6 network inside the
  range that carries it, does. One owner for these rules, shared with the checkout grant:
  :mod:`worker_manager.contract.egress` (``non_public_kind``, ``network_contains``).
- Nothing resolved is refused (``does not resolve``); a port outside 1-65535 is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from worker_manager.contract.egress import (
    Destination,
    IPAddress,
    is_public,
    network_contains,
    non_public_kind,
    parse_egress,
)

__all__ = ["EgressPolicy", "IPAddress", "Verdict", "is_public", "non_public_kind"]


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    #: Why, in a few words (``not granted``, ``loopback address 127.0.0.1 not granted
    #: literally``): the proxy reports it on the worker's output as ``egress denied: …``.
    reason: str


def _name_matches(destination: Destination, host: str) -> bool:
    if destination.kind == "any":
        return True
    if destination.kind == "host":
        return host == destination.host
    if destination.kind == "suffix":  # subdomains at any depth, never the bare domain
        return host.endswith("." + destination.host)
    return False


class EgressPolicy:
    """One worker's grant, ready to decide; built from parsed destinations."""

    __slots__ = ("_destinations", "_names", "_networks")

    def __init__(self, destinations: Sequence[Destination]) -> None:
        self._destinations = tuple(destinations)
        self._names = tuple(d for d in self._destinations if d.kind != "network")
        self._networks = tuple(d for d in self._destinations if d.kind == "network")

    @classmethod
    def from_entries(cls, entries: Sequence[str]) -> EgressPolicy:
        """From a grant's text (canonical or not); raises ``EgressEntryError``."""
        return cls(parse_egress(entries))

    @property
    def destinations(self) -> tuple[Destination, ...]:
        return self._destinations

    def _in_network(self, address: IPAddress, port: int | None) -> bool:
        """Literally inside a network entry whose port matches (None: whatever its port):
        :func:`worker_manager.contract.egress.network_contains`, so an IPv6 form of an IPv4
        address is judged as the IPv4 address it leads to."""
        return any(
            d.network is not None
            and (port is None or d.allows_port(port))
            and network_contains(d.network, address)
            for d in self._networks
        )

    def decide(self, host: str, port: int, addresses: Sequence[IPAddress]) -> Verdict:
        """``host`` as the client asked (a name or an IP literal), ``addresses`` what it
        resolved to (for a literal, itself)."""
        name = host.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")
        if not 1 <= port <= 65535:
            return Verdict(False, f"port {port} is not a port")
        if not addresses:
            return Verdict(False, f"{name} does not resolve")
        if not self._destinations:
            return Verdict(False, "nothing is granted")
        for address in addresses:
            kind = non_public_kind(address)
            if kind is not None and not self._in_network(address, port):
                where = f" on port {port}" if self._in_network(address, None) else ""
                return Verdict(False, f"{kind} address {address} not granted literally{where}")
        by_name = any(d.allows_port(port) and _name_matches(d, name) for d in self._names)
        if by_name or all(self._in_network(address, port) for address in addresses):
            return Verdict(True, "granted")
        # Granted on another port: say so, it is the likelier typo.
        if any(_name_matches(d, name) for d in self._names) or all(
            self._in_network(address, None) for address in addresses
        ):
            return Verdict(False, f"port {port} not granted")
        return Verdict(False, "not granted")
