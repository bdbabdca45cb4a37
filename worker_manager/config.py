"""Configuration: ``WM_*`` environment variables (and a ``.env`` file), overridable per CLI option.

The names listed in SPEC §6 are part of the wire contract; the others are ours and documented in
the README. ``make run`` writes ``.env`` with the URL of the local Redis it starts, so the CLI
run from the checkout finds the same Redis as the service.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import socket
from functools import cached_property
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from worker_manager.hostport import parse_host_port
from worker_manager.keys import Keys
from worker_manager.secret_files import SecretFilesSource

KIB = 1024
MIB = 1024 * KIB

PRODUCER_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")

#: The tag ``bootstrap-base`` gives the Debian image it builds; the default base image.
BOOTSTRAP_BASE_TAG = "worker-manager/base:bookworm"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="WM_", env_file=".env", extra="ignore", populate_by_name=True
    )

    # --- contract names (SPEC §6) ------------------------------------------------------------
    redis_url: str = "redis://localhost:6379/0"
    worker_redis_url: str | None = Field(
        default=None,
        description="How containers reach Redis; default: redis_url with a loopback host "
        "replaced by the Docker bridge gateway.",
    )
    key_prefix: str = "worker"
    base_image: str = BOOTSTRAP_BASE_TAG
    http_addr: str = "127.0.0.1:8080"
    http_token: SecretStr | None = Field(
        default=None,
        description="Bearer token required by every HTTP endpoint except /livez; unset: none.",
    )
    http_max_body_bytes: int = Field(default=64 * KIB, ge=0)
    max_workers: int = Field(default=50, ge=1)
    capacity_retry_after_seconds: float = Field(default=5.0, gt=0)
    idle_timeout_seconds: float = Field(default=900, gt=0)
    producers: list[str] = Field(
        default_factory=list,
        description="Registered producers (JSON list of names): each sends commands on its own "
        "stream <prefix>:producer:<name>:commands, writable by its own Redis user only, and "
        "the manager takes metadata.owner from that stream instead of trusting the field.",
    )
    producer: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="For the CLI: send commands as this registered producer.",
    )
    max_workers_per_owner: int | None = Field(
        default=None, ge=1, description="Live workers one metadata.owner may have (all managers)."
    )
    max_idle_timeout_seconds: float = Field(
        default=86_400, gt=0, description="Cap on a create's own idle_timeout_seconds."
    )
    max_lifetime_seconds: float | None = Field(
        default=None, gt=0, description="Workers older than this are stopped (reason=ttl)."
    )
    eviction_interval_seconds: float = Field(default=5.0, gt=0)
    reconcile_interval_seconds: float = Field(default=30.0, gt=0)
    presence_ttl_seconds: int = Field(
        default=15, ge=2, description="A manager whose presence key expired counts as dead."
    )
    forward_timeout_seconds: float = Field(
        default=60.0, gt=0, description="How long a routed delete waits for the owning manager."
    )
    image_max_age_days: float = Field(default=7, gt=0)

    # --- identity and consumer ---------------------------------------------------------------
    manager_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=128)
    command_concurrency: int = Field(default=64, ge=1)
    block_ms: int = Field(default=2000, ge=10)
    socket_timeout: float = Field(default=10.0, gt=0)
    max_deliveries: int = Field(default=5, ge=1)
    claim_idle_ms: int = Field(default=30_000, ge=100)
    idempotency_ttl_seconds: int = Field(default=86_400, ge=1)
    reply_maxlen: int = Field(default=10_000, ge=10)
    reply_ttl_seconds: int = Field(default=86_400, ge=1)
    dead_maxlen: int = Field(default=10_000, ge=10)
    dead_retention_seconds: int = Field(
        default=7 * 86_400, ge=60, description="Dead letters older than this are trimmed."
    )
    lifecycle_maxlen: int = Field(default=100_000, ge=10)

    # --- command limits (SPEC §1) ------------------------------------------------------------
    max_instructions_bytes: int = 256 * KIB
    max_prompt_bytes: int = 256 * KIB
    max_entry_bytes: int = 1 * MIB
    max_allowed_commands: int = 256
    max_allowed_command_chars: int = 256
    max_metadata_pairs: int = 64
    max_modules: int = 16

    # --- workers -----------------------------------------------------------------------------
    output_maxlen: int = Field(default=10_000, ge=100)
    output_trim_interval_seconds: float = Field(
        default=2.0, gt=0, description="How often the manager trims live workers' output."
    )
    output_overflow_factor: int = Field(
        default=20,
        ge=2,
        description="A worker that writes more than this many times its output cap in one trim "
        "round is stopped (output_overflow).",
    )
    output_max_bytes: int = Field(
        default=256 * MIB,
        ge=MIB,
        description="A worker whose output stream holds more than this after a trim is stopped.",
    )
    heartbeat_interval_seconds: float = Field(default=2.0, gt=0)
    heartbeat_ttl_seconds: int = Field(default=10, ge=2)
    start_timeout_seconds: float = Field(default=120.0, gt=0)
    watch_interval_seconds: float = Field(default=1.0, gt=0)
    stop_timeout_seconds: int = Field(default=10, ge=0)
    retention_seconds: int = Field(
        default=7 * 86_400, ge=60, description="How long a stopped worker's keys are kept."
    )
    worker_acl: bool = Field(
        default=True,
        description="One Redis ACL user per worker; false shares the worker URL (unsafe).",
    )
    worker_secret: SecretStr = Field(
        default_factory=lambda: SecretStr(secrets.token_hex(32)),
        description="Key the per-worker Redis passwords are derived from; random per process "
        "unless set.",
    )
    factory_auto: str = Field(default="low", pattern="^(low|medium|high)$")
    container_memory: str = "2g"
    container_cpus: float = Field(default=1.0, gt=0)
    container_pids_limit: int = Field(default=512, ge=16)
    container_network: str = "bridge"
    container_user: str = "1000:1000"

    # --- images ------------------------------------------------------------------------------
    images_dir: Path | None = Field(
        default=None, description="Dockerfile templates; default: the packaged images/."
    )
    images_overlay: Path | None = Field(
        default=None,
        description="A directory shaped like images/ whose snippets override the packaged ones "
        "(and whose files/ is added to the build context): for site-specific or test agents.",
    )
    build_args: dict[str, str] = Field(
        default_factory=dict,
        description='ARG values for the image snippets, e.g. {"CLAUDE_CODE_VERSION": "2.1.0"}'
        " (JSON in WM_BUILD_ARGS); part of the image hash.",
    )
    warm_pool: dict[str, int] = Field(
        default_factory=dict,
        description='Started, unassigned workers kept ready per shape (JSON, e.g. {"CUSTOM": 2, '
        '"CLAUDE+GIT": 1}): a create of such a shape takes one instead of starting a container.',
    )
    warm_pool_max: int = Field(
        default=10, ge=0, description="Pooled (unassigned) containers this manager keeps at most."
    )
    warm_pool_interval_seconds: float = Field(
        default=2.0, gt=0, description="How often the pools are checked and refilled."
    )
    prebuild: list[str] = Field(
        default_factory=list,
        description='Shapes built in the background at start-up (JSON list, e.g. ["CLAUDE", '
        '"CUSTOM+GIT"]); readiness does not wait, and a create of a shape being built joins it.',
    )
    docker_module_socket: str | None = Field(
        default=None,
        description="Host Docker socket given to workers with the DOCKER module. Root-equivalent "
        "on the host: unset by default, so DOCKER workers get a CLI and no daemon.",
    )
    build_lock_ttl_seconds: int = Field(default=60, ge=5)
    build_failure_ttl_seconds: int = Field(default=60, ge=0)
    build_timeout_seconds: float = Field(default=1800, gt=0)
    gc_interval_seconds: float = Field(default=86_400, gt=0, description="Image GC period.")
    gc_jitter_seconds: float = Field(
        default=3600, ge=0, description="Random extra delay per GC run, so managers spread out."
    )
    gc_initial_delay_seconds: float = Field(
        default=600, ge=0, description="The first GC run comes this long (plus jitter) after start."
    )
    gc_lock_ttl_seconds: float = Field(default=60, ge=5)
    gc_prune_build_cache: bool = True
    image_disk_budget_bytes: int | None = Field(
        default=None,
        ge=0,
        description="Also remove the least recently used images while theirs exceed this.",
    )

    # --- agents ------------------------------------------------------------------------------
    input_timeout_seconds: float = Field(
        default=3600,
        gt=0,
        description="Default for a create's input_timeout_seconds: a run of one input longer "
        "than this is killed (done 124).",
    )
    claude_sdk_version: str = Field(
        default="0.2.184",
        pattern=r"^[0-9][0-9A-Za-z.+-]*$",
        description="The claude-agent-sdk wheel whose bundled Claude Code binary CLAUDE workers "
        "run (0.2.184 bundles Claude Code 2.1.327); bump it to upgrade the CLI.",
    )
    claude_binary: Path | None = Field(
        default=None,
        description="A Claude Code binary on the manager's host to use instead of the wheel's.",
    )
    agent_cache_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "worker-manager",
        description="Where downloaded agent wheels and their extracted binaries are kept.",
    )
    anthropic_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("WM_ANTHROPIC_BASE_URL", "ANTHROPIC_BASE_URL"),
        description="Given to CLAUDE workers as ANTHROPIC_BASE_URL (a gateway or proxy); a "
        "loopback host is replaced by the Docker bridge gateway, as for Redis.",
    )
    anthropic_model: str | None = Field(
        default=None, description="Given to CLAUDE workers as ANTHROPIC_MODEL; unset: the CLI's."
    )
    claude_max_retries: int | None = Field(
        default=None,
        ge=0,
        description="CLAUDE_CODE_MAX_RETRIES for workers: how often the CLI retries a failed "
        "API call before it reports the error; unset: the CLI's default (about 10, with back-off).",
    )
    factory_binary: Path | None = Field(
        default=None,
        description="A `droid` binary on the manager's host, copied into FACTORY images.",
    )
    factory_npm_version: str | None = Field(
        default=None,
        pattern=r"^[0-9][0-9A-Za-z.+-]*$",
        description="Install @factory/cli at this version with npm inside the build instead "
        "(needs the npm registry at build time).",
    )

    # --- secrets (never in commands, logs or Redis) -------------------------------------------
    # Also read under the agents' own names (ANTHROPIC_API_KEY ...), and from files: see
    # worker_manager/secret_files.py (`<NAME>_FILE`, WM_SECRETS_DIR).
    anthropic_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("WM_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY")
    )
    claude_code_oauth_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("WM_CLAUDE_CODE_OAUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN"),
    )
    factory_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("WM_FACTORY_API_KEY", "FACTORY_API_KEY")
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Secret files come after the variables: a key set directly wins over its file."""
        return (init_settings, env_settings, dotenv_settings, SecretFilesSource(settings_cls))

    # --- logs --------------------------------------------------------------------------------
    log_format: str = Field(default="auto", pattern="^(auto|json|console)$")
    log_level: str = "info"

    @field_validator("http_addr")
    @classmethod
    def _http_addr_shape(cls, value: str) -> str:
        parse_host_port(value)
        return value

    @field_validator("warm_pool")
    @classmethod
    def _pool_shapes(cls, value: dict[str, int]) -> dict[str, int]:
        from worker_manager.models import Shape  # models imports this module

        pools: dict[str, int] = {}
        for shape, count in value.items():
            if count < 0:
                raise ValueError(f"warm pool of {shape!r}: a count cannot be negative")
            pools[str(Shape.parse(shape))] = count
        return pools

    @field_validator("prebuild")
    @classmethod
    def _prebuild_shapes(cls, value: list[str]) -> list[str]:
        from worker_manager.models import Shape  # models imports this module

        return [str(Shape.parse(shape)) for shape in value]

    @field_validator("producers")
    @classmethod
    def _producer_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not PRODUCER_RE.fullmatch(name):
                raise ValueError(f"producer name {name!r} must be 1 to 64 of [A-Za-z0-9._-]")
        return sorted(set(value))

    @field_validator("key_prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        if not value or any(c in value for c in " \t\r\n*?[]"):
            raise ValueError("key prefix must be non-empty, without spaces or glob characters")
        return value

    @cached_property
    def keys(self) -> Keys:
        return Keys(self.key_prefix)

    def resolved_worker_redis_url(self) -> str:
        """The URL a container uses, before per-worker credentials are put into it."""
        if self.worker_redis_url:
            return self.worker_redis_url
        return container_reachable_url(self.redis_url)

    @cached_property
    def workers_anthropic_base_url(self) -> str | None:
        """``anthropic_base_url`` as workers reach it (resolved once: it asks Docker)."""
        if not self.anthropic_base_url:
            return None
        return container_reachable_url(self.anthropic_base_url)


def container_reachable_url(url: str) -> str:
    """``url`` with a loopback host replaced by the Docker bridge gateway, where a container
    reaches a service on the host; any other URL is returned unchanged."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    if host not in {"localhost", "127.0.0.1", "::1"}:
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
