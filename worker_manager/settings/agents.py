"""What the agents inside workers need: their CLIs, endpoints, budgets and API keys.

The keys are secrets: read from the manager's environment or files (``secret_files``), never
from a command, and never written to logs or Redis.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import AliasChoices, BaseModel, Field, SecretStr

from worker_manager.core.bridge import container_reachable_url


class AgentSettings(BaseModel):
    factory_auto: str = Field(default="low", pattern="^(low|medium|high)$")
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
    codex_cli_version: str = Field(
        default="0.163.0",
        pattern=r"^[0-9][0-9A-Za-z.+-]*$",
        description="The openai-codex-cli-bin wheel (OpenAI's own) whose Codex CLI binary CODEX "
        "workers run; bump it to upgrade the CLI.",
    )
    codex_binary: Path | None = Field(
        default=None,
        description="A Codex CLI binary on the manager's host to use instead of the wheel's.",
    )
    openai_base_url: str = Field(
        default="https://api.openai.com/v1",
        validation_alias=AliasChoices("WM_OPENAI_BASE_URL", "OPENAI_BASE_URL"),
        description="OpenAI's API (the Responses API, `/responses`) as the LLM gateway forwards "
        "CODEX workers' requests to it; uncontained (WM_EGRESS=off), given to CODEX workers as "
        "OPENAI_BASE_URL (a loopback host replaced by the Docker bridge gateway).",
    )
    openai_model: str | None = Field(
        default=None, description="Given to CODEX workers as OPENAI_MODEL; unset: the CLI's."
    )
    codex_max_retries: int | None = Field(
        default=None,
        ge=0,
        description="How often Codex retries a failed API request or a broken stream before it "
        "reports the error (its provider's request_max_retries and stream_max_retries); unset: "
        "the CLI's default (about 5, 6-15 s before a 401 or a 500 fails the turn).",
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
    # worker_manager/core/secret_files.py (`<NAME>_FILE`, WM_SECRETS_DIR).
    anthropic_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("WM_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY")
    )
    claude_code_oauth_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("WM_CLAUDE_CODE_OAUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN"),
    )
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("WM_OPENAI_API_KEY", "OPENAI_API_KEY")
    )
    factory_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("WM_FACTORY_API_KEY", "FACTORY_API_KEY")
    )

    @cached_property
    def workers_anthropic_base_url(self) -> str | None:
        """``anthropic_base_url`` as workers reach it (resolved once: it asks Docker)."""
        if not self.anthropic_base_url:
            return None
        return container_reachable_url(self.anthropic_base_url)

    @cached_property
    def workers_openai_base_url(self) -> str:
        """``openai_base_url`` as uncontained workers reach it (resolved once: it asks Docker)."""
        return container_reachable_url(self.openai_base_url)
