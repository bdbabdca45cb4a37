"""The worker lifecycle: records and their transitions, provisioning, containers, Redis users,
status from heartbeats and Docker events, eviction, reconciliation, warm pools, placement.

Owns: how a worker ends (``lifecycle``: ``end`` and ``outcome_of``, the only code that ends one),
what crosses into a container (``provisioner`` builds ``worker_base.config.WrapperConfig``).
The verdicts (``watcher``, ``eviction``, ``reconciler``) are plain functions over data.
May import: ``core``, ``contract``, ``settings``, ``images``.
"""
