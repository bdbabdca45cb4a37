"""Teams (SPEC §12): the board the workers of one team share, and who is on it.

``board`` appends to and reads a team's board in Redis (the manager's own entries: a producer's
post, a member's joining and leaving) and keeps it alive while the team has a live worker, then
lets it expire after ``WM_TEAM_RETENTION_SECONDS``; ``follower`` turns the lifecycle stream
into those membership entries, once per status change across all managers (a consumer group of
its own). What an agent posts is written by its wrapper (``worker_base.team``), never here.

Owns: a board's manager-written entries and its expiry.
May import: ``core``, ``contract``, ``settings``.
"""
