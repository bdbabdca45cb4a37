"""A create's ``repository`` (SPEC §1, §8), and the operator's ``WM_WORKSPACE_SOURCES``.

**Sources.** The operator says which repositories a create may name: ``WM_WORKSPACE_SOURCES``
is a JSON list of ``scheme://destination``, the destination in the grammar of an egress grant
(``worker_manager.contract.egress``). The default, ``["https://*", "http://*", "ssh://*"]``,
allows those schemes to any *public* host; a private, loopback or link-local host (an IP literal
in such a range) is allowed only by a source that names its network literally, e.g.
``"http://172.17.0.1:8080"`` or ``"https://10.0.0.0/8"``, exactly as an egress grant reaches
one, and judged the same way (``contract.egress.non_public_kind``): an IPv6 form that carries
an IPv4 address (``::ffff:…``, NAT64 ``64:ff9b::…``, 6to4 ``2002:…``) is the IPv4 address it
leads to, so the metadata address is no public host in any of its forms. The checkout is
granted the repository's host alone (:func:`checkout_grant`): by name when the URL names one
(the proxy then never lets it resolve into a private range), by address only when a source
named that address. A URL no source allows is ``invalid_command``.

**URLs** carry no credentials (``user:password@``: credentials are the operator's,
``WM_GIT_CREDENTIALS``), no whitespace or control characters, and are at most 2 KiB.

A create's ``env`` is ``worker_manager.contract.env``'s.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from worker_manager.contract.egress import (
    Destination,
    EgressEntryError,
    is_public,
    network_contains,
    parse_destination,
)

DEFAULT_SOURCES = ("https://*", "http://*", "ssh://*")
DEFAULT_PORTS = {"https": 443, "http": 80, "ssh": 22, "git": 9418}
MAX_URL_CHARS = 2048
MAX_REF_CHARS = 256
MAX_DEPTH = 1_000_000

#: What a ref or branch may hold: git's own rules, and no option-looking leading ``-``.
_REF = re.compile(r"^(?!-)(?!.*\.\.)(?!.*@\{)(?!.*//)[A-Za-z0-9._/@+-]+(?<![./])(?<!\.lock)$")


class SourceError(ValueError):
    """A repository URL no source allows, or a source that is not one (the message says)."""


@dataclass(frozen=True, slots=True)
class Source:
    """One ``WM_WORKSPACE_SOURCES`` entry: a scheme and the destinations it covers."""

    scheme: str
    destination: Destination

    def __str__(self) -> str:
        return f"{self.scheme}://{self.destination}"


def parse_source(text: str) -> Source:
    scheme, sep, rest = text.strip().partition("://")
    if not sep or not re.fullmatch(r"[a-z][a-z0-9+.-]{0,15}", scheme.lower()):
        raise SourceError(f"{text!r} is not a source: use scheme://destination, e.g. https://*")
    try:
        destination = parse_destination(rest.rstrip("/"))
    except EgressEntryError as exc:
        raise SourceError(f"source {text!r}: {exc}") from None
    return Source(scheme.lower(), destination)


def parse_sources(entries: Sequence[str]) -> tuple[Source, ...]:
    return tuple(parse_source(entry) for entry in entries)


@dataclass(frozen=True, slots=True)
class RepositoryAddress:
    scheme: str
    host: str
    port: int


def address_of(url: str) -> RepositoryAddress:
    """Scheme, host and port of a repository URL; SourceError when it is not a plain URL."""
    if len(url) > MAX_URL_CHARS:
        raise SourceError(f"the url is {len(url)} characters; at most {MAX_URL_CHARS}")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise SourceError("the url holds whitespace or a control character")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if not scheme or not parts.netloc:
        raise SourceError(f"{url!r} is not a URL (scheme://host/path)")
    if parts.password is not None or (parts.username is not None and scheme != "ssh"):
        raise SourceError(
            "the url holds credentials: they come from the operator (WM_GIT_CREDENTIALS), "
            "never from a command"
        )
    try:
        port = parts.port or DEFAULT_PORTS.get(scheme)
    except ValueError:
        raise SourceError(f"{url!r} has a port that is not one") from None
    host = (parts.hostname or "").rstrip(".")
    if not host or port is None:
        raise SourceError(f"{url!r} names no host or no port")
    return RepositoryAddress(scheme, host, port)


def checkout_grant(url: str, sources: Sequence[Source]) -> str:
    """The egress entry a checkout of ``url`` is granted (its host and port alone), when a
    source allows it; SourceError naming the URL otherwise."""
    scheme = urlsplit(url).scheme.lower()
    if not any(source.scheme == scheme for source in sources):
        allowed = ", ".join(str(source) for source in sources) or "none"
        raise SourceError(
            f"{url!r} is not a source this deployment allows (WM_WORKSPACE_SOURCES: {allowed})"
        )
    where = address_of(url)
    try:
        literal: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(
            where.host
        )
    except ValueError:
        literal = None
    for source in sources:
        target = source.destination
        if source.scheme != where.scheme or not target.allows_port(where.port):
            continue
        if literal is not None:
            if target.kind == "network" and target.network is not None:
                if network_contains(target.network, literal):
                    return f"{_bracketed(literal)}:{where.port}"
            elif target.kind == "any" and is_public(literal):
                return f"{_bracketed(literal)}:{where.port}"
            continue
        name = where.host.lower()
        if (
            target.kind == "any"
            or (target.kind == "host" and name == target.host)
            or (target.kind == "suffix" and name.endswith("." + target.host))
        ):
            return f"{name}:{where.port}"
    allowed = ", ".join(str(source) for source in sources) or "none"
    raise SourceError(
        f"{url!r} is not a source this deployment allows (WM_WORKSPACE_SOURCES: {allowed})"
    )


def _bracketed(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return f"[{address}]" if address.version == 6 else str(address)


class Repository(BaseModel):
    """A create's ``repository``: checked out into the workspace before the worker runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    #: A branch, a tag or a commit; empty: the remote's HEAD.
    ref: str = ""
    #: A new branch for the work, created at ``ref``.
    branch: str = ""
    depth: int | None = Field(default=None, ge=1, le=MAX_DEPTH)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        address_of(value)
        return value

    @field_validator("ref", "branch")
    @classmethod
    def _ref(cls, value: str) -> str:
        if value and (len(value) > MAX_REF_CHARS or not _REF.match(value)):
            raise ValueError(f"{value[:40]!r} is not a git ref name")
        return value


#: A workspace summary in a record is at most this long (its JSON text), and names at most
#: this many changed files.
MAX_SUMMARY_CHARS = 128 * 1024
MAX_SUMMARY_CHANGED = 500
MAX_PATH_CHARS = 1024


def parse_summary(raw: object) -> dict[str, Any] | None:
    """A worker's workspace summary (SPEC §8) as its wrapper published it, checked and
    rebuilt field by field: untrusted bytes in, a bounded summary out, None when it is not one.
    """
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not isinstance(raw, str) or len(raw) > MAX_SUMMARY_CHARS:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    head, branch = data.get("head"), data.get("branch")
    changed = data.get("changed")
    untracked = data.get("untracked")
    if head is not None and not (isinstance(head, str) and re.fullmatch(r"[0-9a-f]{4,64}", head)):
        return None
    if branch is not None and not (isinstance(branch, str) and len(branch) <= MAX_REF_CHARS):
        return None
    if not isinstance(changed, list) or not _count(untracked):
        return None
    files: list[dict[str, Any]] = []
    for item in changed[:MAX_SUMMARY_CHANGED]:
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            return None
        added, removed = item.get("added"), item.get("removed")
        if not (added is None or _count(added)) or not (removed is None or _count(removed)):
            return None
        files.append({"path": item["path"][:MAX_PATH_CHARS], "added": added, "removed": removed})
    summary: dict[str, Any] = {
        "head": head,
        "branch": branch,
        "changed": files,
        "untracked": untracked,
    }
    truncated = data.get("changed_truncated")
    reported = truncated if isinstance(truncated, int) and _count(truncated) else 0
    if len(changed) > MAX_SUMMARY_CHANGED or reported:
        summary["changed_truncated"] = max(len(changed), reported)
    return summary


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53
