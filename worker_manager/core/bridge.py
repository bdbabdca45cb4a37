"""Where a container reaches a service on the manager's host: Docker's bridge gateway."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit, urlunsplit

from worker_base.redis_urls import is_sentinel_url, parse_sentinel_url

_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


def container_reachable_url(url: str) -> str:
    """``url`` with a loopback host replaced by the Docker bridge gateway, where a container
    reaches a service on the host; any other URL is returned unchanged. In a Sentinel URL each
    sentinel's host is (the primary's address is what the sentinels announce: configure
    ``replica-announce-ip`` / ``sentinel announce-ip`` with addresses containers reach)."""
    if is_sentinel_url(url):
        target = parse_sentinel_url(url)
        gateway = (
            docker_bridge_gateway() if any(h in _LOOPBACK for h, _ in target.sentinels) else ""
        )
        hosts = tuple((gateway if h in _LOOPBACK else h, p) for h, p in target.sentinels)
        return target.with_hosts(hosts).render()
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    if host not in _LOOPBACK:
        return url
    gateway = docker_bridge_gateway()
    netloc = gateway if parts.port is None else f"{gateway}:{parts.port}"
    if parts.username or parts.password:
        creds = parts.username or ""
        if parts.password:
            creds += f":{parts.password}"
        netloc = f"{creds}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def docker_bridge_gateway(network: str = "bridge") -> str:
    """The host's address on Docker's bridge: where a container reaches a service on the host.

    Docker leaves ``Gateway`` out of the IPAM config on some engines; the bridge then takes the
    subnet's first host address, which is what we return.
    """
    import docker  # local: config must import without a Docker SDK round trip

    try:
        client = docker.from_env(timeout=10)
        try:
            configs = client.networks.get(network).attrs.get("IPAM", {}).get("Config") or []
        finally:
            client.close()
        for entry in configs:
            if entry.get("Gateway"):
                return str(entry["Gateway"])
        for entry in configs:
            subnet = ipaddress.ip_network(entry["Subnet"], strict=False)
            if subnet.version == 4:
                return str(next(subnet.hosts()))
    except (docker.errors.DockerException, KeyError, ValueError, StopIteration):
        pass
    return "172.17.0.1"
