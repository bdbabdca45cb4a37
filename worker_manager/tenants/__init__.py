"""Tenants (SPEC §11): which tenants the managers serve, and their quotas at a create.

``registry`` merges ``WM_TENANTS`` with the tenants added in Redis (``worker-manager tenants
add``), so every manager serves the same ones; ``quotas`` refuses a create past its tenant's
day's spend (the ``max_workers`` count is the create script's, ``workers.state.records``).
A tenant's namespace itself is only keys (``core.keys.Keys.for_tenant``): the service wires one
set of per-namespace components for each tenant (``service.namespace``).

May import: ``core``, ``contract``, ``settings``, ``egress``.
"""
