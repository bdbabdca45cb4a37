"""A worker's transitions: what a create needs (``create_plan``, a plain function) and the slow
half of a create that carries it out (``provisioner``), the one way a worker ends
(``lifecycle``), and suspending and waking it (``sleep``).
May import, within ``workers``: ``state``, ``resources``.
"""
