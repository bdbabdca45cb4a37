"""``worker-manager serve``: the wiring of every component (``manager``), its HTTP face
(``http``, which sees the manager only as a ``HealthSource``) and its metrics.

May import: ``core``, ``contract``, ``settings``, ``client``, ``console``, ``images``, ``egress``,
``environments``, ``services``, ``snapshots``, ``teams``, ``workspaces``, ``workers``, ``commands``.
"""
