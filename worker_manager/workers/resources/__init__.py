"""What a worker holds while it lives: its Redis ACL user (``acl``), its container
(``containers``), its grant at the egress service (``containment``), the environment written
into its container (``environment``), warm-pool containers (``pool``) and the background tasks
kept per worker (``tasks``).
May import, within ``workers``: ``state``.
"""
