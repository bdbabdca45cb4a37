"""The egress grant as data (SPEC §1 ``egress``): one destination string, parsed and canonical.

A grant is a list of destinations a worker may reach through the fleet's egress proxy. It is
parsed once, where it enters (a create's ``egress``, the operator's ``WM_EGRESS_DEFAULT``), and
kept in its canonical text (``str(Destination)``), so what the record shows is exactly what the
proxy re-parses and enforces: parsing the canonical text again gives an equal destination.

The grammar, and the choices made where it could be read two ways:

- ``host`` or ``host:port``: that DNS name only (lower-cased, a trailing dot dropped). Labels
  are 1-63 characters of ``[a-z0-9-]`` not starting or ending with ``-``, the whole name at most
  253; an international name is written in its ASCII ``xn--`` form (a Unicode name is refused
  rather than converted, because IDNA 2003 and 2008 convert some names differently and the
  proxy compares what the client sends, which is the ASCII form). A last label of digits only
  is refused: it is a mistyped IP address (``10.0.0.256``, ``127.1``), never a DNS name.
- ``*.domain`` or ``*.domain:port``: the subdomains of ``domain`` at any depth
  (``a.example.com``, ``a.b.example.com``) but **not** ``example.com`` itself, as in e2b's and
  Modal's allowlists and TLS wildcard certificates; grant ``example.com`` as well when the bare
  name is wanted. ``*`` appears nowhere else in a name.
- an IP address or a CIDR, optionally with ``:port``: ``10.0.0.5``, ``10.0.0.0/8:5432``;
  IPv6 takes brackets when a port follows (``[::1]:443``, ``[2001:db8::/32]:443``) and none
  otherwise (``::1``, ``2001:db8::/32``). A CIDR with host bits set (``10.0.0.1/8``) is
  refused rather than widened: the operator meant one of two different things. An address is a
  network of one (``/32``, ``/128``). Zone ids (``fe80::1%eth0``) are refused.
- ``"*"``: any *public* destination, any port (there is no ``*:port``). It never grants a
  private, loopback or link-local address: those are reached only through an entry that names
  their network literally (``worker_manager.egress.policy``).

Ports are 1-65535; no port means any port. Entries are strict text: whitespace, schemes
(``https://``), paths, user info, queries and empty labels are refused with a message naming the
entry, so a producer learns what it typed wrong instead of getting a grant it did not mean.

Which addresses are special is decided here too, once, for the proxy's decision and the
checkout grant alike (:func:`non_public_kind`, :func:`network_contains`): an address is judged
where a connection to it leads, so an IPv6 form that carries an IPv4 address (mapped,
compatible, SIIT, NAT64, 6to4, Teredo) is that IPv4 address, and ``::/0`` does not name it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

#: Bounds of one grant (SPEC §1 has the same bounds for ``allowed_commands``).
MAX_EGRESS_ENTRIES = 256
MAX_EGRESS_ENTRY_CHARS = 256
MAX_NAME_CHARS = 253

USAGE = 'use host, host:port, *.domain[:port], an IP or CIDR[:port], or "*"'

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Kind = Literal["any", "host", "suffix", "network"]

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
#: Every character any form of the grammar uses; anything else is refused before parsing.
_ALLOWED_CHARS = re.compile(r"[a-z0-9.:/\[\]*-]+")
_BRACKETED = re.compile(r"\[([^\[\]]+)\](?::([^:]*))?")


class EgressEntryError(ValueError):
    """A grant that cannot be parsed; the message is a sentence naming the entry (``entry``,
    None when the grant as a whole is wrong, e.g. too many entries)."""

    def __init__(self, message: str, entry: str | None = None) -> None:
        super().__init__(message)
        self.entry = entry


@dataclass(frozen=True, slots=True)
class Destination:
    """One parsed egress entry; ``str()`` is its canonical text."""

    kind: Kind
    #: The name (``host``) or the domain under which subdomains match (``suffix``); else "".
    host: str = ""
    #: ``network`` only: the addresses granted (an IP address is a /32 or /128).
    network: Network | None = None
    #: None: any port.
    port: int | None = None

    def allows_port(self, port: int) -> bool:
        return self.port is None or self.port == port

    def __str__(self) -> str:
        if self.kind == "any":
            return "*"
        if self.kind == "network":
            assert self.network is not None
            net = self.network
            text = (
                str(net.network_address)
                if net.prefixlen == net.max_prefixlen
                else net.with_prefixlen
            )
            if self.port is None:
                return text
            return f"[{text}]:{self.port}" if net.version == 6 else f"{text}:{self.port}"
        name = f"*.{self.host}" if self.kind == "suffix" else self.host
        return name if self.port is None else f"{name}:{self.port}"


def _shown(text: str) -> str:
    """The entry as a message quotes it: ``repr`` (control characters escaped), cut short."""
    return repr(text if len(text) <= 80 else text[:80] + "…")


def _error(text: str, problem: str) -> EgressEntryError:
    return EgressEntryError(f"egress entry {_shown(text)} {problem}", entry=text)


def _not_a_destination(text: str) -> EgressEntryError:
    return _error(text, f"is not a destination: {USAGE}")


def parse_destination(text: str) -> Destination:
    """One entry of a grant, or :class:`EgressEntryError` saying what is wrong with it."""
    if not isinstance(text, str):
        raise EgressEntryError(f"egress entry {text!r} is not a string: {USAGE}", entry=repr(text))
    if len(text) > MAX_EGRESS_ENTRY_CHARS:
        raise _error(text, f"has {len(text)} characters; at most {MAX_EGRESS_ENTRY_CHARS}")
    if text == "*":
        return Destination("any")
    # ASCII is checked before lower-casing: "\u212a".lower() is an ASCII "k".
    if not text.isascii():
        if text.isprintable() and " " not in text:
            raise _error(text, "is not ASCII: write an international name in its xn-- form")
        raise _not_a_destination(text)
    lowered = text.lower()
    if not _ALLOWED_CHARS.fullmatch(lowered) or "://" in lowered:
        raise _not_a_destination(text)
    if lowered.startswith("*:"):
        raise _error(
            text, 'has a port: "*" takes none (it grants any public destination, any port)'
        )
    if lowered.startswith("["):
        bracketed = _BRACKETED.fullmatch(lowered)
        if bracketed is None:
            raise _not_a_destination(text)
        inner, port_text = bracketed.group(1), bracketed.group(2)
        network = _network(text, inner)
        if network is None or network.version != 6:
            raise _not_a_destination(text)
        port = None if port_text is None else _port(text, port_text)
        return Destination("network", network=network, port=port)
    if lowered.count(":") >= 2:  # a bare IPv6 address or network: no port without brackets
        network = _network(text, lowered)
        if network is None or network.version != 6:
            raise _not_a_destination(text)
        return Destination("network", network=network)
    name, sep, port_text = lowered.partition(":")
    port = _port(text, port_text) if sep else None
    if "[" in name or "]" in name:
        raise _not_a_destination(text)
    if "/" in name or name[:1].isdigit():
        network = _network(text, name)
        if network is not None:
            return Destination("network", network=network, port=port)
        if "/" in name:
            raise _not_a_destination(text)
    if name.startswith("*."):
        return Destination("suffix", host=_name(text, name[2:]), port=port)
    if "*" in name:
        raise _error(text, "has a '*' other than a leading '*.' (use *.domain for subdomains)")
    return Destination("host", host=_name(text, name), port=port)


def _port(text: str, value: str) -> int:
    if not value:
        raise _error(text, "has no port after its ':'; a port is a number from 1 to 65535")
    if not value.isdigit() or len(value) > 5 or not 1 <= int(value) <= 65535:
        raise _error(text, f"has port {value!r}; a port is a number from 1 to 65535")
    return int(value)


def _network(text: str, value: str) -> Network | None:
    """An address or CIDR; None when ``value`` is not one. Host bits set is an error."""
    if "%" in value:
        return None
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        if "has host bits set" not in str(exc):
            return None
    widened = ipaddress.ip_network(value, strict=False)
    raise _error(text, f"has host bits set: did you mean {widened.with_prefixlen}?")


def _name(text: str, value: str) -> str:
    name = value.removesuffix(".")
    if not name:
        raise _not_a_destination(text)
    if len(name) > MAX_NAME_CHARS:
        raise _error(text, f"is a name of {len(name)} characters; at most {MAX_NAME_CHARS}")
    labels = name.split(".")
    for label in labels:
        if len(label) > 63:
            raise _error(text, f"has a label of {len(label)} characters; at most 63")
        if "*" in label:
            raise _error(text, "has a '*' other than a leading '*.' (use *.domain for subdomains)")
        if not _LABEL.fullmatch(label):
            raise _not_a_destination(text)
    if labels[-1].isdigit():
        raise _error(text, "is neither an IP address nor a host name")
    return name


def parse_egress(entries: Sequence[str]) -> tuple[Destination, ...]:
    """A whole grant: each entry parsed, duplicates (same canonical text) collapsed, in order."""
    if isinstance(entries, str | bytes):
        raise EgressEntryError(f"egress must be a list of destinations: {USAGE}")
    if len(entries) > MAX_EGRESS_ENTRIES:
        raise EgressEntryError(f"egress has {len(entries)} entries; at most {MAX_EGRESS_ENTRIES}")
    parsed: dict[str, Destination] = {}
    for entry in entries:
        destination = parse_destination(entry)
        parsed.setdefault(str(destination), destination)
    return tuple(parsed.values())


def canonical_egress(entries: Sequence[str]) -> list[str]:
    """A grant as it is stored and shown: the canonical text of each distinct entry."""
    return [str(destination) for destination in parse_egress(entries)]


# --- which addresses are special ---------------------------------------------------------------
# One owner for "is this address special", shared by the proxy's decision (``egress.policy``)
# and the checkout grant (``contract.workspace``): both must judge an address by where a
# connection to it actually ends up.

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Shared address space (carrier-grade NAT): not public, yet not ``is_private`` in Python 3.11.
_SHARED = ipaddress.ip_network("100.64.0.0/10")
#: IPv6 ranges whose addresses lead to the IPv4 address in their last 32 bits: IPv4-mapped (the
#: kernel connects to the IPv4 address itself), IPv4-compatible (deprecated, same idea), the
#: IPv4-translated addresses of SIIT (``::ffff:0:a.b.c.d``, RFC 2765) and the well-known NAT64
#: prefix (a translator connects to it).
_LAST_32_BITS = (
    ipaddress.ip_network("::ffff:0:0/96"),
    ipaddress.ip_network("::/96"),
    ipaddress.ip_network("::ffff:0:0:0/96"),
    ipaddress.ip_network("64:ff9b::/96"),
)
#: The local-use NAT64 range (RFC 8215). Where the IPv4 address sits in it depends on the
#: prefix length the site's translator uses (RFC 6052: /32 to /96). Only ``64:ff9b:1::/96``
#: reads the same under every length (the others see ``0.x.x.x`` there, which leads nowhere);
#: any other address of the range carries an IPv4 address this cannot know, so it is judged
#: non-public and named only by an IPv6 network inside the range.
_LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")
_LOCAL_NAT64_LAST_32_BITS = ipaddress.ip_network("64:ff9b:1::/96")
_SIXTOFOUR = ipaddress.ip_network("2002::/16")
_TEREDO = ipaddress.ip_network("2001::/32")


def embedded_ipv4(address: IPAddress) -> tuple[ipaddress.IPv4Address, Network] | None:
    """The IPv4 address an IPv6 address carries and leads to (IPv4-mapped or -compatible,
    NAT64, 6to4, Teredo's client), with the range that carries it; None for any other address.

    ``::`` and ``::1`` are themselves (unspecified, loopback), not IPv4 addresses."""
    if not isinstance(address, ipaddress.IPv6Address) or int(address) <= 1:
        return None
    for prefix in _LAST_32_BITS:
        if address in prefix:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), prefix
    if address in _LOCAL_NAT64_LAST_32_BITS:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), _LOCAL_NAT64
    if address.sixtofour is not None:
        return address.sixtofour, _SIXTOFOUR
    if address.teredo is not None:
        return address.teredo[1], _TEREDO
    return None


def effective_address(address: IPAddress) -> IPAddress:
    """The address a connection to ``address`` reaches: an IPv6 form that carries an IPv4
    address (:func:`embedded_ipv4`) is that IPv4 address; any other address is itself."""
    embedded = embedded_ipv4(address)
    return address if embedded is None else embedded[0]


def non_public_kind(address: IPAddress) -> str | None:
    """What kind of non-public address this is (``loopback``, ``link-local``, ``private``, …);
    None when it is public. Judged on the address a connection reaches
    (:func:`effective_address`), so ``::ffff:127.0.0.1`` and ``64:ff9b::a9fe:a9fe`` are
    loopback and link-local like the IPv4 addresses they carry."""
    address = effective_address(address)
    if address in _LOCAL_NAT64:  # an IPv4 address that cannot be read (see _LOCAL_NAT64)
        return "translated"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_unspecified:
        return "unspecified"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "site-local"  # fec0::/10: deprecated, yet routed inside some sites
    if isinstance(address, ipaddress.IPv4Address) and address in _SHARED:
        return "shared"
    if address.is_private or address.is_reserved or not address.is_global:
        return "private"
    return None


def is_public(address: IPAddress) -> bool:
    """Whether a granted name or ``*`` may lead to ``address`` (else only a network entry)."""
    return non_public_kind(address) is None


def network_contains(network: Network, address: IPAddress) -> bool:
    """Whether a ``network`` entry literally names ``address``.

    An IPv6 form that carries an IPv4 address (:func:`embedded_ipv4`) is named by an IPv4
    network holding that IPv4 address, or by an IPv6 network that holds the form and lies
    inside the range that carries it (``::ffff:10.0.0.0/104``, ``64:ff9b::/96``): a wide IPv6
    grant such as ``::/0`` or ``2000::/3`` names IPv6 destinations, never the IPv4 loopback or
    metadata address behind ``::ffff:127.0.0.1``, NAT64 or 6to4."""
    embedded = embedded_ipv4(address)
    if embedded is None:
        if address in _LOCAL_NAT64:  # carries an IPv4 address that cannot be read
            return address in network and network.subnet_of(_LOCAL_NAT64)  # type: ignore[arg-type]
        return address.version == network.version and address in network
    ipv4, carrier = embedded
    if isinstance(network, ipaddress.IPv4Network):
        return ipv4 in network
    return address in network and network.subnet_of(carrier)  # type: ignore[arg-type]
