"""``worker-manager``: the command line (``main``), its terminal views (``views``).

May import: everything.
"""
