"""How a worker is contained (SPEC §7): its grant at the egress service, its sockets, its env.

With ``WM_EGRESS=on`` a worker's container has no network (``--network none``); before it
starts, this registers the worker with the host's egress service (:mod:`worker_manager.egress`),
which creates its socket directory, and the container gets that directory at ``/run/wm`` and
an environment that names only loopback relays: the proxy variables, the LLM gateway as
``ANTHROPIC_BASE_URL`` (CODEX: ``OPENAI_BASE_URL``) and a per-worker token as
``ANTHROPIC_API_KEY`` (``OPENAI_API_KEY``). When the worker ends
its grant is revoked (its sockets disappear and its token stops working). ``WM_EGRESS=off``
keeps the open bridge network of earlier versions (unsafe, documented so).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from worker_base.config import relays_env
from worker_base.redis_urls import is_sentinel_url, parse_sentinel_url
from worker_manager.contract.commands import CreateCommand
from worker_manager.contract.kinds import AgentType, Module
from worker_manager.core.logs import get_logger
from worker_manager.egress.control import EgressClient
from worker_manager.egress.credentials import factory_grant
from worker_manager.egress.grants import (
    CONTAINER_SOCKET_DIR,
    GATEWAY_URL,
    REDIS_SOCKET,
    RELAYS,
    Grant,
    proxy_env,
)
from worker_manager.settings import Settings
from worker_manager.workers.resources.containers import WRAPPER_USER

log = get_logger(__name__)

WRAPPER_UID = int(WRAPPER_USER.partition(":")[0])
#: The agents served by the LLM gateway, and the API it speaks for each (``Grant.gateway_api``).
GATEWAY_AGENTS = {AgentType.CLAUDE: "anthropic", AgentType.CODEX: "openai"}


class Containment:
    def __init__(self, settings: Settings, client: EgressClient | None = None) -> None:
        """``client``: the host's one egress service, shared by every namespace's containment
        (each grants its workers under its own key prefix)."""
        self._settings = settings
        self.client = client or EgressClient(settings)

    @property
    def enabled(self) -> bool:
        return contained(self._settings)

    def gateway_token(self, worker_id: str) -> str:
        return gateway_token(self._settings, worker_id)

    async def admit(self, worker_id: str, command: CreateCommand | None) -> str | None:
        """Register the worker (a pooled one before its create: ``command`` None, nothing
        granted); the host directory to mount at ``/run/wm``, or None when not contained."""
        if not self.enabled:
            return None
        agent = command.agent_type if command is not None else None
        # The key is the egress service's (which may run apart, in compose): a FACTORY worker
        # always gets a placeholder, swapped for the key where the service holds one.
        factory = agent is AgentType.FACTORY
        egress = self.egress_of(command) if command is not None else []
        if factory:  # Factory's API, with the placeholder the proxy swaps for the key
            egress += factory_grant(self._settings.factory_api_host)
        grant = Grant(
            worker_id=worker_id,
            key_prefix=self._settings.keys.prefix,
            egress=tuple(egress),
            gateway_token=self.gateway_token(worker_id) if agent in GATEWAY_AGENTS else "",
            gateway_api=GATEWAY_AGENTS.get(agent, "anthropic") if agent else "anthropic",
            factory_token=factory_token(self._settings, worker_id) if factory else "",
            max_cost_usd=command.max_cost_usd if command is not None else None,
            # Only the wrapper may connect: the agent runs as another user (WM_CONTAINER_USER)
            # and reaches the proxy and the gateway through the wrapper's loopback relays.
            uid=WRAPPER_UID,
            gid=WRAPPER_UID,
            output_maxlen=self._settings.output_maxlen,
            redis_url=without_credentials(self._settings.redis_url),
        )
        path: Path = await self.client.grant(grant)
        return str(path)

    def worker_secrets(self, worker_id: str) -> list[str]:
        """The credentials derived for this worker (no evidence may show them)."""
        return [gateway_token(self._settings, worker_id), factory_token(self._settings, worker_id)]

    def egress_of(self, command: CreateCommand) -> list[str]:
        granted = getattr(command, "egress", None)
        return list(granted) if granted is not None else list(self._settings.egress_default)

    async def release(self, worker_id: str) -> None:
        if self.enabled:
            await self.client.revoke(worker_id)

    async def close(self) -> None:
        await self.client.close()


def without_credentials(url: str) -> str:
    """``url`` without its user and password: where to connect, not who connects."""
    if is_sentinel_url(url):
        return parse_sentinel_url(url).with_credentials(None, None).render()
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def contained(settings: Settings) -> bool:
    return settings.egress == "on"


def gateway_token(settings: Settings, worker_id: str) -> str:
    """The worker's LLM gateway key: derived, so any manager can re-register the worker after
    a restart; useless anywhere but at the gateway, and only while the worker is granted."""
    return _derived(settings, f"gateway:{worker_id}")


def factory_token(settings: Settings, worker_id: str) -> str:
    """A FACTORY worker's ``FACTORY_API_KEY``: a placeholder the egress proxy swaps for the
    operator's key in this worker's requests to Factory's API, and nowhere else."""
    return _derived(settings, f"factory:{worker_id}")


def _derived(settings: Settings, purpose: str) -> str:
    secret = settings.worker_secret.get_secret_value().encode()
    return "wm-" + hmac.new(secret, purpose.encode(), hashlib.sha256).hexdigest()


def contained_redis_url(netloc: str, query: str) -> str:
    """The wrapper's Redis URL inside a contained container: the relay's socket."""
    path = f"{CONTAINER_SOCKET_DIR}/{REDIS_SOCKET}"
    return f"unix://{netloc}{path}" + (f"?{query}" if query else "")


def relays(settings: Settings) -> tuple[tuple[int, str], ...]:
    """The loopback relays the wrapper opens (``WrapperConfig.relays``): none uncontained."""
    return RELAYS if contained(settings) else ()


def pooled_relays_env(settings: Settings) -> dict[str, str]:
    """A pooled wrapper relays before it has an assignment (its agent may start at once)."""
    return {"WM_RELAYS": relays_env(RELAYS)} if contained(settings) else {}


def contained_env(settings: Settings, agent_type: AgentType, worker_id: str) -> dict[str, str]:
    """What a contained container's environment says for the agent: its proxy, the roots its
    TLS clients trust (the public ones plus the egress service's CA, with which the proxy opens
    the tunnels it adds an operator's credential to) and, for CLAUDE and CODEX, the LLM gateway
    and the worker's token in place of the operator's key; for FACTORY, a placeholder key."""
    env = proxy_env()
    if agent_type is AgentType.CLAUDE:
        env["ANTHROPIC_BASE_URL"] = GATEWAY_URL
        env["ANTHROPIC_API_KEY"] = gateway_token(settings, worker_id)
    elif agent_type is AgentType.CODEX:
        # OpenAI's base URL names its version (``…/v1``): the gateway's root stands for it.
        env["OPENAI_BASE_URL"] = GATEWAY_URL
        env["OPENAI_API_KEY"] = gateway_token(settings, worker_id)
    elif agent_type is AgentType.FACTORY:
        env["FACTORY_API_KEY"] = factory_token(settings, worker_id)
    return env


#: The host's socket when ``WM_DOCKER_MODULE=socket`` names none (``WM_DOCKER_MODULE_SOCKET``).
DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"


def docker_socket(settings: Settings, modules: Sequence[Module]) -> str | None:
    """The host's Docker socket, for a ``DOCKER`` worker where the operator chose it
    (``WM_DOCKER_MODULE=socket``: root-equivalent on the host); None otherwise."""
    if Module.DOCKER not in modules or settings.docker_module != "socket":
        return None
    return settings.docker_module_socket or DEFAULT_DOCKER_SOCKET
