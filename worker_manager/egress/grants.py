"""What the egress service knows of one worker, and where it keeps it on the host.

A :class:`Grant` is written by the manager (through the control socket) when a worker's
container is about to start, and kept by the service as ``grant.json`` in the worker's own
directory, so a restarted service serves the same workers without asking anyone. The sockets
the container sees live in a sub-directory of their own (``sock/``, bind-mounted read-only at
``/run/wm``): the grant file, with the worker's gateway token, is never inside the container.

Layout under ``WM_EGRESS_RUN_DIR``::

    control.sock                    the manager's side (root only)
    service.pid                     the running service
    settings.key                    the key of its settings' digests (root only)
    managers/<id>.<n>.lease         one per manager using the service, flocked while it lives
    ca/                             the proxy's CA, key included (root only; mitmproxy's confdir)
    ca.pem, ca-bundle.pem           its certificate, alone and after the public roots
    upstream-bundle.pem             the roots the proxy checks upstreams against, when the
                                    operator adds some (WM_EGRESS_UPSTREAM_CA)
    workers/<worker_id>/grant.json  this worker's grant (root only)
    workers/<worker_id>/sock/redis.sock, proxy.sock, gateway.sock, ca.pem, ca-bundle.pem
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Where the socket directory is mounted in a worker container.
CONTAINER_SOCKET_DIR = "/run/wm"
REDIS_SOCKET = "redis.sock"
PROXY_SOCKET = "proxy.sock"
GATEWAY_SOCKET = "gateway.sock"
#: The service's CA, and the public roots plus it, as the container sees them.
CA_FILE = "ca.pem"
CA_BUNDLE_FILE = "ca-bundle.pem"
#: The loopback ports inside the container that the wrapper relays to those sockets.
PROXY_PORT = 3128
GATEWAY_PORT = 3129
RELAYS = (
    (PROXY_PORT, f"{CONTAINER_SOCKET_DIR}/{PROXY_SOCKET}"),
    (GATEWAY_PORT, f"{CONTAINER_SOCKET_DIR}/{GATEWAY_SOCKET}"),
)
PROXY_URL = f"http://127.0.0.1:{PROXY_PORT}"
GATEWAY_URL = f"http://127.0.0.1:{GATEWAY_PORT}"
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
CA_PATH = f"{CONTAINER_SOCKET_DIR}/{CA_FILE}"
CA_BUNDLE_PATH = f"{CONTAINER_SOCKET_DIR}/{CA_BUNDLE_FILE}"
#: Where OpenSSL (Python, curl), requests, curl and git look for the roots they trust.
CA_BUNDLE_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO")


def proxy_env() -> dict[str, str]:
    """What a contained container's environment says for its way out: the proxy (through the
    loopback relay its wrapper runs) and the roots its TLS clients trust, the public ones plus
    the service's CA (with which the proxy opens the tunnels it adds a credential to)."""
    env = {name: PROXY_URL for name in PROXY_VARIABLES}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update({name: CA_BUNDLE_PATH for name in CA_BUNDLE_VARIABLES})
    env["NODE_EXTRA_CA_CERTS"] = CA_PATH  # Node adds to its own roots
    return env


#: The APIs the LLM gateway serves (``Grant.gateway_api``).
GATEWAY_APIS = ("anthropic", "openai")

_WORKER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: An image build's grant is ``build-<hash12>`` (``environments.build_network``): it belongs
#: to a build, not to a worker, so the reconciler's sweep of workers' grants leaves it to the
#: build network's own (a worker id is a UUID: never this).
BUILD_GRANT_PREFIX = "build-"


class GrantError(ValueError):
    """A grant the service cannot serve (the message says which field)."""


@dataclass(frozen=True, slots=True)
class Grant:
    worker_id: str
    key_prefix: str
    #: Canonical destinations (``contract.egress``); empty: nothing.
    egress: tuple[str, ...] = ()
    #: What the worker sends the LLM gateway as its API key; empty: no gateway for it.
    gateway_token: str = ""
    #: Which API its gateway serves it: ``anthropic`` (CLAUDE) or ``openai`` (CODEX).
    gateway_api: str = "anthropic"
    #: What a FACTORY worker holds as its ``FACTORY_API_KEY``, swapped for the operator's key in
    #: its requests to Factory's API (``egress.credentials``); empty: none.
    factory_token: str = ""
    max_cost_usd: float | None = None
    #: Where the worker's Redis relay connects: the registering manager's Redis, credentials
    #: stripped (the worker's own ACL user authenticates through the relay). Empty: the
    #: service's own ``WM_REDIS_URL`` (the same for every live manager's grants: managers of
    #: other Redis servers do not share a service at once, ``egress.fingerprint``).
    redis_url: str = ""
    #: The worker this grant acts for when it is not ``worker_id`` itself (a checkout's grant,
    #: ``checkout.<id>``): refusals go to that worker's output, and the grant lives with it.
    reports_to: str = ""
    #: Who may connect to the sockets inside the container (the wrapper's user).
    uid: int = 1000
    gid: int = 1000
    output_maxlen: int = 10_000
    extra: dict[str, str] = field(default_factory=dict)
    #: Whether refusals are written to the owner's output stream. An image build's grant
    #: (``build-<hash>``) has no worker and no output: its refusals reach the build's log as
    #: the proxy's answer, and nothing is written to Redis for it.
    report: bool = True

    def to_json(self) -> str:
        data = asdict(self)
        data["egress"] = list(self.egress)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Grant:
        try:
            data: Any = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise GrantError(f"a grant must be a JSON object ({exc})") from None
        if not isinstance(data, dict):
            raise GrantError("a grant must be a JSON object")
        try:
            worker_id = str(data["worker_id"])
            key_prefix = str(data["key_prefix"])
            egress = tuple(str(entry) for entry in data.get("egress") or ())
            budget = data.get("max_cost_usd")
            grant = cls(
                worker_id=worker_id,
                key_prefix=key_prefix,
                egress=egress,
                gateway_token=str(data.get("gateway_token") or ""),
                gateway_api=str(data.get("gateway_api") or "anthropic"),
                factory_token=str(data.get("factory_token") or ""),
                max_cost_usd=None if budget is None else float(budget),
                redis_url=str(data.get("redis_url") or ""),
                reports_to=str(data.get("reports_to") or ""),
                uid=int(data.get("uid", 1000)),
                gid=int(data.get("gid", 1000)),
                output_maxlen=int(data.get("output_maxlen", 10_000)),
                extra={str(k): str(v) for k, v in (data.get("extra") or {}).items()},
                report=bool(data.get("report", True)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise GrantError(f"a grant is missing or has a bad field ({exc})") from None
        if grant.gateway_api not in GATEWAY_APIS:
            raise GrantError(f"gateway_api must be one of {', '.join(GATEWAY_APIS)}")
        for name in (grant.worker_id, grant.reports_to or grant.worker_id):
            if not _WORKER_ID.match(name):
                raise GrantError(f"worker_id {name!r} is not a worker id")
        return grant

    @property
    def owner(self) -> str:
        """The worker this grant belongs to (its own id, or the one it acts for)."""
        return self.reports_to or self.worker_id


@dataclass(frozen=True, slots=True)
class RunDir:
    """The service's directory on the host (``WM_EGRESS_RUN_DIR``)."""

    root: Path

    @property
    def control(self) -> Path:
        return self.root / "control.sock"

    @property
    def pid_file(self) -> Path:
        return self.root / "service.pid"

    @property
    def workers(self) -> Path:
        return self.root / "workers"

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def ca_cert(self) -> Path:
        return self.root / CA_FILE

    @property
    def ca_bundle(self) -> Path:
        return self.root / CA_BUNDLE_FILE

    @property
    def upstream_bundle(self) -> Path:
        return self.root / "upstream-bundle.pem"

    def worker(self, worker_id: str) -> Path:
        if not _WORKER_ID.match(worker_id):
            raise GrantError(f"worker_id {worker_id!r} is not a worker id")
        return self.workers / worker_id

    def sockets(self, worker_id: str) -> Path:
        """The directory mounted into the worker's container at ``/run/wm``."""
        return self.worker(worker_id) / "sock"

    def grant_file(self, worker_id: str) -> Path:
        return self.worker(worker_id) / "grant.json"

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o755)
        self.workers.mkdir(exist_ok=True, mode=0o755)
        self.ca_dir.mkdir(exist_ok=True, mode=0o700)

    def publish_ca(self, worker_id: str) -> None:
        """The CA files, in the worker's socket directory (linked: one copy on the disk)."""
        for source in (self.ca_cert, self.ca_bundle):
            if not source.exists():
                continue
            target = self.sockets(worker_id) / source.name
            target.unlink(missing_ok=True)
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
                os.chmod(target, 0o644)

    def stored_grants(self) -> list[Grant]:
        found: list[Grant] = []
        if not self.workers.is_dir():
            return found
        for entry in sorted(self.workers.iterdir()):
            try:
                found.append(Grant.from_json((entry / "grant.json").read_bytes()))
            except (OSError, GrantError):
                continue
        return found

    def write_grant(self, grant: Grant) -> None:
        directory = self.worker(grant.worker_id)
        directory.mkdir(exist_ok=True, mode=0o711)
        self.sockets(grant.worker_id).mkdir(exist_ok=True, mode=0o755)
        target = self.grant_file(grant.worker_id)
        temporary = target.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(grant.to_json())
        os.replace(temporary, target)
