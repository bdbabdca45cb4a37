"""``worker-manager tenants add|list|remove`` (SPEC §11): the tenant registry in Redis.

Every manager reads the registry every few seconds (``service.manager``), so a tenant added here
is served by the whole fleet without a restart; one named in ``WM_TENANTS`` is listed too, but
only a change of that setting removes it.
"""

from __future__ import annotations

import argparse
import json

from pydantic import ValidationError

from worker_manager.cli.common import command, console, err_console
from worker_manager.contract.tenants import TenantQuota, tenant_name
from worker_manager.core.connections import connect
from worker_manager.service.metrics import count_workers
from worker_manager.settings import Settings
from worker_manager.tenants.registry import TenantRegistry


@command("tenants")
async def _tenants(args: argparse.Namespace, settings: Settings) -> int:
    fleet = settings.for_tenant(None)  # the registry is the fleet's, whatever WM_TENANT says
    redis = connect(fleet, name="cli")
    registry = TenantRegistry(redis, fleet)
    try:
        if args.tenants_command == "add":
            try:
                name = tenant_name(args.name)
            except ValueError as exc:
                err_console.print(f"[red]{exc}[/red]")
                return 2
            try:
                quota = TenantQuota(
                    max_workers=args.quota_max_workers,
                    max_cost_usd_per_day=args.quota_max_cost_usd_per_day,
                )
            except ValidationError as exc:
                err_console.print(f"[red]{exc.errors()[0]['msg']}[/red]")
                return 2
            new = await registry.add(name, quota)
            console.print(
                f"tenant {name} {'added' if new else 'updated'}: its keys are "
                f"{fleet.keys.for_tenant(name).prefix}:*; the managers serve it within seconds"
            )
            return 0
        if args.tenants_command == "remove":
            counts = await count_workers(redis, fleet.keys.for_tenant(args.name))
            kept = sum(counts.get(status, 0) for status in ("STARTING", "RUNNING", "SUSPENDED"))
            if kept and not args.force:
                # Unserved, they would be watched, evicted and reconciled by no one.
                err_console.print(
                    f"[red]tenant {args.name} still has {kept} live or suspended workers:[/red] "
                    f"delete them first (worker-manager list --tenant {args.name} shows them; "
                    f"worker-manager delete --tenant {args.name} ID), or --force to leave them "
                    "unserved"
                )
                return 2
            removed = await registry.remove(args.name)
            console.print(
                f"tenant {args.name} removed from the registry; managers still serve it until "
                "they restart"
                if removed
                else f"tenant {args.name} is not in the registry"
            )
            return 0 if removed else 1
        tenants = await registry.read()
        rows = [
            {"tenant": name, **quota.model_dump(exclude_none=True)}
            for name, quota in sorted(tenants.items())
        ]
        if args.json:
            print(json.dumps(rows))
            return 0
        for row in rows:
            limits = ", ".join(f"{k}={v}" for k, v in row.items() if k != "tenant")
            console.print(f"{row['tenant']}\t{limits or 'no quota'}")
        return 0
    finally:
        await redis.aclose()
