"""The command path: consume the streams, validate, dispatch, handle, reply, dead-letter.

May import: ``core``, ``contract``, ``settings``, ``client``, ``images``, ``egress``,
``environments``, ``services``, ``snapshots``, ``teams``, ``tenants``, ``workspaces``,
``workers``.
"""
