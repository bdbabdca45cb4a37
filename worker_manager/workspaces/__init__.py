"""Workspaces (SPEC §8): a worker's volumes, its repository checked out into them, the mirrors.

A worker's files live in two Docker volumes of its own (``volumes``): its home (``/home``: the
agent's home and the wrapper's private files) and its workspace (``/workspace``); they outlive
its container while it is suspended and go when it is deleted. A create's ``repository`` is
checked out into the workspace before the worker runs (``checkout``), from a mirror of the
repository shared by every worker of that URL on this host, fetched through the egress proxy
by a short-lived container of the worker's own image, never by an agent.

Owns: the volumes (``volumes``), the checkout and the mirrors (``checkout``).
May import: ``core``, ``contract``, ``settings``, ``images``, ``egress``.
"""
