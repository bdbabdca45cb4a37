"""The worker lifecycle, in five groups, each importing only the groups before it:

``state`` (the record, heartbeats, workspace summaries, evidence: what Redis says of a worker)
→ ``resources`` (what a worker holds: its Redis user, container, egress grant, environment,
warm-pool slot, background tasks) → ``transitions`` (starting, ending, sleeping and waking)
→ ``fleet`` (this manager among the others: presence, placement, judging lost hosts)
→ ``watching`` (the loops that judge live workers: heartbeats and Docker events, disk, output,
idleness, and the reconciler that brings Redis and Docker back into agreement).

Owns: how a worker ends (``transitions.lifecycle``: ``end`` and ``outcome_of``, the only code
that ends one), what crosses into a container (``transitions.provisioner`` builds
``worker_base.config.WrapperConfig``). The verdicts (``watching.watcher``, ``watching.eviction``,
``watching.reconciler``) are plain functions over data.
May import: ``core``, ``contract``, ``settings``, ``images``, ``egress``, ``workspaces``,
``services``, ``docker_engine``.
"""
