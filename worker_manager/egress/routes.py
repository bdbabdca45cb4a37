"""Which requests the LLM gateway forwards: an allow-list of endpoints per API, as data.

The gateway adds the operator's credential to what it forwards, so whatever it forwards is done
with the operator's account. An agent needs a handful of endpoints (Claude Code: the Messages
API, token counting, the model list); the rest of an account (message batches, files, the admin
API) is for the operator, and a batch is not even charged to the worker as it is made. So the
gateway forwards a request only when its method and path are one of its API's :class:`Route`\\ s,
and refuses everything else before the API (``permission_error``, ``not_found_error`` for a path
not in normal form). A second API (OpenAI's Responses API, for Codex) is another tuple of
routes, nothing else.

A path is judged as the worker sent it, still percent-encoded, and only a path already in normal
form is forwarded: segments of RFC 3986 unreserved characters (letters, digits, ``-._~``), none
empty, none ``.`` or ``..``. So ``/v1/../admin``, ``/v1/%2e%2e/admin``, ``//v1/messages`` and
``/v1/messages%2fbatches`` never reach an upstream whose base URL has a path of its own (where
``..`` would climb out of it), whatever the upstream makes of them. Every real endpoint's path is
in normal form already, so a real client never meets this rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "ANTHROPIC_ROUTES",
    "PathVerdict",
    "Route",
    "is_normal_path",
    "judge",
]

#: One segment of a path in normal form: RFC 3986 unreserved characters only.
_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint a worker may call: a method and a path, in which a segment written in
    braces (``{model_id}``) stands for any one segment."""

    method: str
    path: str

    def matches(self, method: str, path: str) -> bool:
        """Whether a request (its path in normal form, without its query) is this endpoint."""
        if method != self.method:
            return False
        want, got = self.path.split("/"), path.split("/")
        return len(want) == len(got) and all(
            w == g or (w.startswith("{") and w.endswith("}") and bool(g))
            for w, g in zip(want, got, strict=True)
        )

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


#: What Claude Code calls (seen with the real CLI through the gateway, tests/integration/
#: test_gateway_claude.py): ``POST /v1/messages`` (streamed or not, with ``?beta=true``),
#: ``count_tokens``, and the model list the Agent SDK may read.
ANTHROPIC_ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/messages"),
    Route("POST", "/v1/messages/count_tokens"),
    Route("GET", "/v1/models"),
    Route("GET", "/v1/models/{model_id}"),
)


class PathVerdict(StrEnum):
    """What the gateway does with a request's method and path."""

    ALLOWED = "allowed"
    #: In normal form, but not an endpoint a worker may call (refused: ``permission_error``).
    NOT_ALLOWED = "not_allowed"
    #: Not in normal form (refused: ``not_found_error``; no endpoint has such a path).
    BAD_PATH = "bad_path"


def is_normal_path(path: str) -> bool:
    """Whether ``path`` (percent-encoded, without its query) is in normal form: it starts with
    ``/`` and every segment is unreserved characters, not empty, not ``.`` or ``..``."""
    if not path.startswith("/"):
        return False
    return all(
        segment not in (".", "..") and _SEGMENT.fullmatch(segment) is not None
        for segment in path[1:].split("/")
    )


def judge(routes: tuple[Route, ...], method: str, target: str) -> PathVerdict:
    """The verdict on a request: ``target`` is its request-target as sent (path and query)."""
    path = target.partition("?")[0]
    if "#" in target or not is_normal_path(path):
        return PathVerdict.BAD_PATH
    if any(route.matches(method, path) for route in routes):
        return PathVerdict.ALLOWED
    return PathVerdict.NOT_ALLOWED
