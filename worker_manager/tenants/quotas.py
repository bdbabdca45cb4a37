"""A tenant's quotas at a create (SPEC §11): refused with ``quota_exceeded`` and a sentence.

``max_workers`` is counted in the create's own Lua script (``WorkerStore.create``), atomically
with the record it writes, so concurrent creates on several managers never overshoot it; this
module only words that refusal. ``max_cost_usd_per_day`` is checked here, before the create,
against the namespace's spend of the UTC day that the LLM gateway adds to with every answer it
meters (``egress.meter.charge``): a budget, so a create racing the answer that crosses it may
still start, and the next one is refused.
"""

from __future__ import annotations

from redis.asyncio import Redis

from worker_manager.contract.tenants import Tenant, over_budget, workers_refused
from worker_manager.core.clock import utc_day
from worker_manager.core.errors import CommandError, ErrorCode
from worker_manager.core.keys import Keys
from worker_manager.egress.meter import spend_of


async def spent_today(redis: Redis, keys: Keys) -> float:
    """What a namespace's workers spent through the LLM gateway this UTC day, in USD."""
    return spend_of(await redis.get(keys.spend(utc_day())))


class Quotas:
    def __init__(self, redis: Redis, keys: Keys, tenant: Tenant) -> None:
        self._redis = redis
        self._keys = keys
        self.tenant = tenant

    async def spent_today(self) -> float:
        return await spent_today(self._redis, self._keys)

    async def check_budget(self) -> None:
        """Raise ``quota_exceeded`` if the tenant's spend of the day is used up."""
        if self.tenant.quota.max_cost_usd_per_day is None:
            return
        refused = over_budget(self.tenant.name, self.tenant.quota, await self.spent_today())
        if refused is not None:
            raise CommandError(ErrorCode.QUOTA_EXCEEDED, refused)

    def workers_refused(self) -> CommandError:
        """The refusal of a create the script counted past ``max_workers``."""
        return CommandError(
            ErrorCode.QUOTA_EXCEEDED, workers_refused(self.tenant.name, self.tenant.quota)
        )
