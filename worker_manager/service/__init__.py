"""``worker-manager serve``: the wiring of every component (``manager`` the fleet's,
``namespace`` each namespace's: the default one and each tenant's), its HTTP face
(``http``, which sees the manager only as a ``HealthSource``) and its metrics.

May import: ``core``, ``contract``, ``settings``, ``client``, ``console``, ``images``, ``egress``,
``environments``, ``services``, ``snapshots``, ``teams``, ``tenants``, ``workspaces``, ``workers``,
``commands``.
"""
