"""Tenants (SPEC §11): a tenant's name and quotas, as ``WM_TENANTS`` and ``tenants add`` give them.

A tenant is a namespace of keys (``<prefix>:t:<name>``, ``core.keys.tenant_prefix``); its name is
also part of Docker names and Redis user names, so it is kept to what all three accept. The
quotas' sentences are plain functions the create path uses (``max_workers`` is counted in the
create's Lua script, atomically; the day's spend is read before it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: Lower-case letters, digits, ``-`` and ``_``, starting with a letter or digit: valid in a
#: Redis key, a Redis user name and a Docker name alike.
TENANT_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")


class TenantQuota(BaseModel):
    """What one tenant may use; None: no limit but the fleet's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Live (STARTING or RUNNING) workers of the tenant, across every manager.
    max_workers: int | None = Field(default=None, ge=1)
    #: What the tenant's workers may spend through the LLM gateway on one UTC day.
    max_cost_usd_per_day: float | None = Field(default=None, gt=0)


def tenant_name(value: str) -> str:
    """``value`` if it is a valid tenant name, else ValueError naming the rule."""
    if not TENANT_RE.fullmatch(value):
        raise ValueError(
            f"tenant name {value!r}: 1-40 of a-z, 0-9, '-' and '_', starting with a letter or digit"
        )
    return value


def parse_tenants(value: Any) -> dict[str, TenantQuota]:
    """``WM_TENANTS``: a list of names, or an object of name to quotas (JSON text or parsed)."""
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else []
    if isinstance(value, list | tuple):
        value = {str(name): {} for name in value}
    if not isinstance(value, dict):
        raise ValueError("tenants: a JSON list of names or an object of name to quotas")
    tenants: dict[str, TenantQuota] = {}
    for name, quota in value.items():
        tenants[tenant_name(str(name))] = (
            quota if isinstance(quota, TenantQuota) else TenantQuota.model_validate(quota or {})
        )
    return tenants


def workers_refused(tenant: str, quota: TenantQuota) -> str:
    """The sentence of a create refused by ``max_workers`` (counted in the create's own Lua
    script, so concurrent creates never overshoot it)."""
    return (
        f"tenant {tenant!r} already has its quota of {quota.max_workers} live workers "
        "(max_workers); delete one or retry later"
    )


def over_budget(tenant: str, quota: TenantQuota, spent_today_usd: float) -> str | None:
    """Why a create of ``tenant`` is refused by ``max_cost_usd_per_day``, or None."""
    if quota.max_cost_usd_per_day is not None and spent_today_usd >= quota.max_cost_usd_per_day:
        return (
            f"tenant {tenant!r} spent ${spent_today_usd:.2f} today, its quota of "
            f"${quota.max_cost_usd_per_day:g} a day (max_cost_usd_per_day); new workers are "
            "refused until 00:00 UTC"
        )
    return None


@dataclass(slots=True)
class Tenant:
    """A tenant a manager serves: its name and its quotas as last read (``tenants add`` may
    change them while it runs)."""

    name: str
    quota: TenantQuota
