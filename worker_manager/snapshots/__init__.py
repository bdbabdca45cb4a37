"""Fork and snapshots (SPEC §10): one worker's state copied into others, or kept under a name.

A worker's state is its two volumes: its home (the agent's session, the wrapper's private
files) and its workspace (uncommitted and untracked files included; git's objects are shared
with the repository's mirror, so only what the work changed is copied). ``copies`` copies them
into new volumes with a short-lived container of no network, leaving the copy's wrapper a
marker (``worker_base.forks``: its spend starts over, its agent's session is forked at its first
resume); ``plan`` decides, as plain functions, what a copy's spec and record are and whether a
source may be copied now; ``store`` keeps the snapshots' records in Redis; ``retention`` removes
snapshots unused for ``WM_SNAPSHOT_RETENTION_DAYS``.

Owns: a snapshot's volumes and record, and how a worker's state is copied.
May import: ``core``, ``contract``, ``settings``, ``workspaces``.
"""
