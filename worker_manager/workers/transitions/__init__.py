"""A worker's transitions: the slow half of a create (``provisioner``), the one way a worker
ends (``lifecycle``), and suspending and waking it (``sleep``).
May import, within ``workers``: ``state``, ``resources``.
"""
