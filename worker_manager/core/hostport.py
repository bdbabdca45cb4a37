"""``host:port`` as operators write it (``WM_HTTP_ADDR``), checked before anything binds.

Kept apart from :mod:`worker_manager.service.http` so that validating settings in a CLI client
does not import the HTTP server.
"""

from __future__ import annotations

import ipaddress


def parse_host_port(text: str) -> tuple[str, int]:
    """``127.0.0.1:8080``, ``localhost:0``, ``[::1]:8080`` → (host, port).

    The host is required: binding every interface must be written out (``0.0.0.0:8080``), never
    implied by a missing host.
    """
    value = text.strip()
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{text!r}: an IPv6 address is written [addr]:port")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from exc
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r}: expected host:port")
        if ":" in host:
            raise ValueError(f"{text!r}: put an IPv6 address in brackets: [addr]:port")
    if not host:
        raise ValueError(f"{text!r}: the host is missing (write 0.0.0.0:PORT to bind everywhere)")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 0 to 65535")
    return host, int(port_text)
