"""Where Redis is and how its keys are named: the connection, the prefix, this manager's id."""

from __future__ import annotations

import socket
from functools import cached_property
from typing import Any, Self

from pydantic import BaseModel, Field, field_validator

from worker_base.redis_urls import is_sentinel_url, parse_sentinel_url
from worker_manager.contract.tenants import TenantQuota, parse_tenants, tenant_name
from worker_manager.core.bridge import container_reachable_url
from worker_manager.core.keys import Keys


class RedisSettings(BaseModel):
    # --- contract names (SPEC §6) ------------------------------------------------------------
    redis_url: str = "redis://localhost:6379/0"
    worker_redis_url: str | None = Field(
        default=None,
        description="How containers reach Redis; default: redis_url with a loopback host "
        "replaced by the Docker bridge gateway.",
    )
    key_prefix: str = "worker"
    tenant: str | None = Field(
        default=None,
        description="The tenant whose namespace (<prefix>:t:<tenant>) a client's commands go to; "
        "unset: the default namespace (SPEC §11).",
    )
    tenants: dict[str, TenantQuota] = Field(
        default_factory=dict,
        description="Tenants the managers serve (JSON list of names, or object of name to "
        'quotas: {"acme": {"max_workers": 20, "max_cost_usd_per_day": 50}}); '
        "`worker-manager tenants add` adds more.",
    )
    manager_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=128)
    socket_timeout: float = Field(default=10.0, gt=0)
    presence_ttl_seconds: int = Field(
        default=15, ge=2, description="A manager whose presence key expired counts as dead."
    )
    retention_seconds: int = Field(
        default=7 * 86_400, ge=60, description="How long a stopped worker's keys are kept."
    )
    lifecycle_maxlen: int = Field(default=100_000, ge=10)
    team_retention_seconds: int = Field(
        default=86_400,
        ge=60,
        description="How long a team's board is kept once the team has no live worker.",
    )
    evidence_days: int = Field(
        default=7, ge=1, le=3650, description="How long a worker's evidence (its ending) is kept."
    )
    redis_wait_replicas: int = Field(
        default=0,
        ge=0,
        le=16,
        description="Replicas that must hold a create's, delete's, suspend's or resume's writes "
        "before its reply (Redis WAIT); 0: none (asynchronous replication only).",
    )
    redis_wait_timeout_ms: int = Field(default=1000, ge=1, le=60_000)

    @field_validator("redis_url", "worker_redis_url")
    @classmethod
    def _url_shape(cls, value: str | None) -> str | None:
        """A malformed Sentinel URL is refused at start, naming what is wrong, not at the first
        connection (redis-py has no URL form for Sentinel: worker_base.redis_urls parses it)."""
        if value and is_sentinel_url(value):
            parse_sentinel_url(value)
        return value

    @field_validator("key_prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        if not value or any(c in value for c in " \t\r\n*?[]"):
            raise ValueError("key prefix must be non-empty, without spaces or glob characters")
        return value

    @field_validator("tenant")
    @classmethod
    def _tenant_shape(cls, value: str | None) -> str | None:
        return tenant_name(value) if value else None

    @field_validator("tenants", mode="before")
    @classmethod
    def _tenants_shape(cls, value: Any) -> dict[str, TenantQuota]:
        return parse_tenants(value)

    @cached_property
    def keys(self) -> Keys:
        """The keys of this namespace: the fleet's, or the tenant's when ``tenant`` is set."""
        fleet = Keys(self.key_prefix)
        return fleet.for_tenant(self.tenant) if self.tenant else fleet

    def for_tenant(self, tenant: str | None) -> Self:
        """These settings for one tenant's namespace (None: the default one)."""
        copied = self.model_copy(update={"tenant": tenant})
        copied.__dict__.pop("keys", None)  # a cached_property copied along would be stale
        return copied

    def resolved_worker_redis_url(self) -> str:
        """The URL a container uses, before per-worker credentials are put into it."""
        if self.worker_redis_url:
            return self.worker_redis_url
        return container_reachable_url(self.redis_url)
