"""``WM_GIT_CREDENTIALS``: the operator's credentials for git hosts, as the setting holds them.

A JSON object (or the same in a file: ``WM_GIT_CREDENTIALS_FILE``): host or ``host:port`` ->
a token, or -> ``{"username": …, "password": …}``. The egress proxy adds them to requests to
those hosts (``worker_manager.egress.credentials``); no worker ever holds them. A malformed
value stops the start with a message that names the host, never a secret.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field

#: The user name sent with a bare token (GitHub's convention for tokens over HTTPS).
TOKEN_USER = "x-access-token"  # noqa: S105 - a user name, not a secret
_HOST = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?(:[0-9]{1,5})?$")


class CredentialsError(ValueError):
    """``WM_GIT_CREDENTIALS`` is not what it must be (the message names the host, never a
    secret)."""


@dataclass(frozen=True, slots=True)
class HostCredential:
    username: str
    password: str = field(repr=False)

    @property
    def authorization(self) -> str:
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


def parse_git_credentials(text: str | None) -> dict[str, HostCredential]:
    """``WM_GIT_CREDENTIALS`` read: host (lower case, optionally ``:port``) -> credential."""
    if not text or not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        raise CredentialsError(
            "WM_GIT_CREDENTIALS is not JSON (an object: host -> token)"
        ) from None
    if not isinstance(data, dict):
        raise CredentialsError("WM_GIT_CREDENTIALS must be a JSON object: host -> token")
    book: dict[str, HostCredential] = {}
    for raw_host, value in data.items():
        host = str(raw_host).strip().lower().rstrip(".")
        if not _HOST.match(host):
            raise CredentialsError(f"WM_GIT_CREDENTIALS: {raw_host!r} is not a host[:port]")
        if isinstance(value, str) and value:
            book[host] = HostCredential(TOKEN_USER, value)
        elif (
            isinstance(value, dict)
            and isinstance(value.get("username"), str)
            and isinstance(value.get("password"), str)
            and value["username"]
            and value["password"]
        ):
            book[host] = HostCredential(value["username"], value["password"])
        else:
            raise CredentialsError(
                f"WM_GIT_CREDENTIALS: the value for {raw_host!r} must be a token or "
                '{"username": …, "password": …}'
            )
    return book
