"""How commands are read and answered: the consumer group, replies, dead letters, producers."""

from __future__ import annotations

import re

from pydantic import BaseModel, Field, field_validator

PRODUCER_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


class CommandSettings(BaseModel):
    audit_maxlen: int = Field(
        default=100_000,
        ge=100,
        description="The audit stream (<prefix>:audit) keeps about this many entries.",
    )
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
    command_concurrency: int = Field(default=64, ge=1)
    command_fair_share: int = Field(
        default=8,
        ge=1,
        description="Commands one namespace may have in flight while another is busy too "
        "(SPEC §11): a tenant's flood shares the manager's event loop with the others'.",
    )
    block_ms: int = Field(default=2000, ge=10)
    max_deliveries: int = Field(default=5, ge=1)
    claim_idle_ms: int = Field(default=30_000, ge=100)
    idempotency_ttl_seconds: int = Field(default=86_400, ge=1)
    reply_maxlen: int = Field(default=10_000, ge=10)
    reply_ttl_seconds: int = Field(default=86_400, ge=1)
    dead_maxlen: int = Field(default=2_000, ge=10)
    dead_keep_bytes: int = Field(
        default=320 * 1024,
        ge=1024,
        description="A dead letter keeps its command whole (replayable) up to this size: a create "
        "with the largest instructions allowed fits. WM_DEAD_MAXLEN of them at most: 2 000 x 320 "
        "KiB bounds what a producer flooding bad commands can make Redis keep (~640 MiB).",
    )
    dead_retention_seconds: int = Field(
        default=7 * 86_400, ge=60, description="Dead letters older than this are trimmed."
    )
    forward_timeout_seconds: float = Field(
        default=60.0, gt=0, description="How long a routed delete waits for the owning manager."
    )

    @field_validator("producers")
    @classmethod
    def _producer_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not PRODUCER_RE.fullmatch(name):
                raise ValueError(f"producer name {name!r} must be 1 to 64 of [A-Za-z0-9._-]")
        return sorted(set(value))
