"""The tenants the managers serve: ``WM_TENANTS`` and those added with ``tenants add``.

The registry is a hash in Redis (``<prefix>:tenants``, name -> quotas as JSON) so that a tenant
added while the fleet runs is served by every manager within a few seconds, with no restart and
no setting to keep in step; ``add`` again changes only the quotas it names. ``WM_TENANTS`` stays
for deployments that declare them up front; for a tenant named in both, each quota the registry
names is the registry's (the later word), the others as ``WM_TENANTS`` says (``tenants add T``
with no quota never lifts one).
"""

from __future__ import annotations

import json

from pydantic import ValidationError
from redis.asyncio import Redis

from worker_manager.contract.tenants import TenantQuota, tenant_name
from worker_manager.core.logs import get_logger
from worker_manager.settings import Settings

log = get_logger(__name__)


class TenantRegistry:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings
        self._key = settings.keys.tenants

    async def read(self) -> dict[str, TenantQuota]:
        """Every tenant to serve, with its quotas; an entry that does not parse is skipped with
        a warning (it was written past ``add``), never a reason to stop serving the others."""
        tenants = dict(self._settings.tenants)
        entries: dict[str, str] = await self._redis.hgetall(self._key)
        for name, raw in sorted(entries.items()):
            try:
                added = TenantQuota.model_validate(json.loads(raw or "{}"))
                declared = tenants.get(tenant_name(name), TenantQuota())
                # The registry's word for each quota it names; the others as WM_TENANTS says.
                tenants[name] = declared.model_copy(update=added.model_dump(exclude_none=True))
            except (ValueError, ValidationError) as exc:
                log.warning("tenant registry entry skipped", tenant=name, error=str(exc))
        return tenants

    async def add(self, name: str, quota: TenantQuota) -> bool:
        """Add a tenant, or change the quotas ``quota`` names (the others stay as they were);
        True if it is new to the registry."""
        name = tenant_name(name)
        raw = await self._redis.hget(self._key, name)
        try:
            earlier = TenantQuota.model_validate(json.loads(raw)) if raw else TenantQuota()
        except (ValueError, ValidationError):
            earlier = TenantQuota()
        merged = earlier.model_copy(update=quota.model_dump(exclude_none=True))
        return bool(
            await self._redis.hset(self._key, name, merged.model_dump_json(exclude_none=True))
        )

    async def remove(self, name: str) -> bool:
        """Take a tenant out of the registry (not out of ``WM_TENANTS``); True if it was in."""
        return bool(await self._redis.hdel(self._key, name))
