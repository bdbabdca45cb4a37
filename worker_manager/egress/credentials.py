"""Credentials the egress proxy adds on a worker's behalf, so that no worker holds them (SPEC §7).

Two kinds, both the operator's, both read by the egress service from its own environment or
secret files, never from a command:

* **Git hosts** (``WM_GIT_CREDENTIALS``: a JSON object, host or ``host:port`` -> a token, or
  -> ``{"username": …, "password": …}``): every HTTPS request of any worker to such a host gets
  ``Authorization: Basic`` with those (a bare token as ``x-access-token:<token>``, which GitHub
  takes and GitLab and Gitea accept with any user name), replacing whatever the agent sent. The
  worker reaches the host only if its ``egress`` grants it; the token never enters a container.
  "Such a host" is the destination the proxy decided and connected to (the name it resolved,
  the ``CONNECT`` target), never a ``Host`` header or TLS server name the agent wrote: the proxy
  refuses a request whose ``Host`` or ClientHello names another host (``egress.proxy``), so a
  shared front end cannot route the token elsewhere.
* **Factory's API** (``WM_FACTORY_API_KEY`` for ``WM_FACTORY_API_HOST``): a FACTORY worker
  holds a placeholder of its own as ``FACTORY_API_KEY``; in its requests to that host the proxy
  puts the real key wherever the placeholder appears in a header (the pattern Daytona calls
  secret swapping). Another worker's placeholder, or none, is sent on unchanged, so a worker
  can spend the key only as itself.

Only HTTPS requests: the proxy adds nothing to plain HTTP, whatever the port or the key
(``egress.proxy.carries_credentials``), since without a certificate nothing proves where the
request goes, and anyone on the path would read the credential. To add a header to an HTTPS
request the proxy must read it: TLS to these hosts (and to no
others) is intercepted with the service's own CA (:meth:`Credentials.intercepts`), which every
contained container trusts through ``/run/wm/ca-bundle.pem`` (the public roots plus that CA;
see ``egress.service``). Everything here is a plain function of data, tested without a proxy.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field

from worker_manager.contract.credentials import HostCredential


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the proxy may add, for all workers of this host."""

    git: Mapping[str, HostCredential] = field(default_factory=dict)
    #: Factory's API host (``host`` or ``host:port``) and the operator's key for it.
    factory_host: str | None = None
    factory_key: str | None = field(default=None, repr=False)

    def git_credential(self, host: str, port: int) -> HostCredential | None:
        host = host.lower().rstrip(".")
        return self.git.get(f"{host}:{port}") or self.git.get(host)

    def is_factory(self, host: str, port: int) -> bool:
        if not (self.factory_host and self.factory_key):
            return False
        wanted = self.factory_host.lower()
        host = host.lower().rstrip(".")
        return wanted in (host, f"{host}:{port}")

    def intercepts(self, host: str, port: int, factory_token: str) -> bool:
        """Whether TLS to ``host:port`` must be opened (a credential goes into it)."""
        if self.git_credential(host, port) is not None:
            return True
        return bool(factory_token) and self.is_factory(host, port)

    def apply(
        self, host: str, port: int, headers: MutableMapping[str, str], factory_token: str
    ) -> str | None:
        """Add what belongs in a request to ``host:port`` from a worker whose Factory
        placeholder is ``factory_token``; returns which credential was used (for the log:
        never the secret), or None."""
        credential = self.git_credential(host, port)
        if credential is not None:
            headers["Authorization"] = credential.authorization
            return "git"
        if factory_token and self.factory_key and self.is_factory(host, port):
            swapped = False
            for name, value in list(headers.items()):
                if factory_token in value:
                    headers[name] = value.replace(factory_token, self.factory_key)
                    swapped = True
            return "factory" if swapped else None
        return None


def factory_grant(credentials_host: str | None) -> list[str]:
    """The egress entry a FACTORY worker gets with its placeholder: Factory's API over HTTPS."""
    if not credentials_host:
        return []
    return [credentials_host if ":" in credentials_host else f"{credentials_host}:443"]
