"""Where a worker may go: the egress proxy, the LLM gateway and their switches (SPEC §6, §7)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator

from worker_manager.contract.credentials import parse_git_credentials
from worker_manager.contract.egress import canonical_egress


class EgressSettings(BaseModel):
    egress: Literal["on", "off"] = Field(
        default="on",
        description="on: workers run with --network none and reach only the egress proxy, the "
        "LLM gateway and Redis through Unix sockets; off: today's open bridge network (unsafe).",
    )
    egress_default: list[str] = Field(
        default_factory=list,
        description="The egress grant of a create that names none (JSON list; default nothing).",
    )
    egress_run_dir: Path = Field(
        default=Path("/var/lib/worker-manager/egress"),
        description="Host directory of the egress service: its control socket and one socket "
        "directory per worker (bind-mounted into the container, so it must be a path on the "
        "Docker host).",
    )
    egress_spawn: bool = Field(
        default=True,
        description="serve starts the egress service (detached, so it outlives the manager) "
        "when none answers on the run directory's control socket.",
    )
    egress_connect_timeout_seconds: float = Field(default=10.0, gt=0)
    egress_upstream_ca: Path | None = Field(
        default=None,
        description="PEM file of CAs the egress proxy trusts, besides the public roots, for "
        "the upstreams it opens TLS to (an operator's own git server with a private CA).",
    )
    factory_api_host: str = Field(
        default="api.factory.ai",
        pattern=r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$",
        description="Factory's API (host or host:port): a contained FACTORY worker reaches it "
        "with a placeholder key that the egress proxy swaps for WM_FACTORY_API_KEY.",
    )
    # A secret (JSON host -> token, or the same in a file: WM_GIT_CREDENTIALS_FILE): added by
    # the egress proxy to requests to those hosts, never given to a worker.
    git_credentials: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("WM_GIT_CREDENTIALS", "GIT_CREDENTIALS")
    )

    @field_validator("git_credentials")
    @classmethod
    def _git_credentials(cls, value: SecretStr | None) -> SecretStr | None:
        """Checked at start (the message names the host, never a token)."""
        parse_git_credentials(value.get_secret_value() if value is not None else None)
        return value

    @field_validator("egress_default")
    @classmethod
    def _egress_default(cls, value: list[str]) -> list[str]:
        """Parsed at start: a bad default is the operator's configuration error (naming the
        entry), not a surprise at the first create; kept canonical, as a create's grant is."""
        return canonical_egress(value)
