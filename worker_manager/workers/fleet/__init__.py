"""This manager among the others: its presence key (``presence``), where creates go when it is
full (``placement``), and judging the workers of a manager that is gone (``lost_hosts``).
May import, within ``workers``: ``state``, ``resources``, ``transitions``.
"""
