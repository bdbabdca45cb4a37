"""Plumbing every layer uses: clocks, errors, key names, logs, locks, outage handling, the
supervisor of background loops, and the Redis and Docker client helpers.

Owns: the key schema's manager side (``keys``, built on ``worker_base.config.worker_key``), how a
loop is supervised (``supervisor``), how an outage is ridden out (``outages``).
May import: nothing. (Like every layer, it may use ``worker_base``: the wrapper owns its half
of what crosses into a container.)
"""
