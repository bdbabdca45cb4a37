"""``worker-manager``: the command line. ``main`` runs it, ``parser`` defines it; the contract's
commands (``workers``, ``workspace``) and the operator's (``admin``) share ``common``; ``views``
draws what the terminal shows.

May import: ``core``, ``contract``, ``settings``, ``client``, ``console``, ``images``, ``egress``,
``environments``, ``services``, ``snapshots``, ``tenants``, ``workspaces``, ``workers``,
``commands``, ``service``.
"""
