"""The loops that judge live workers: heartbeats and Docker's events (``watcher``), disk
(``disk_guard``), output (``output_guard``), idleness and lifetime (``eviction``), and the
reconciler that brings Redis and Docker back into agreement (``reconciler``).
May import, within ``workers``: ``state``, ``resources``, ``transitions``, ``fleet``.
"""
