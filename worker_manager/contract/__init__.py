"""The wire contract's data (SPEC §1–§3, §7–§8): kinds, command validation, replies, the record.

``kinds`` (the names), ``limits``, ``commands`` (validation) and ``create_spec`` (a validated
create as it is kept), ``env`` and ``workspace`` (a create's variables and repository),
``egress`` (a grant), ``credentials``, ``reasons`` (why a status changed), ``reply``,
``record``, ``labels``.

Plain models and functions, no Redis or Docker: what an orchestrator sends, what it gets back,
and what a worker record holds, read once at the boundary and typed from there on.
May import: ``core``.
"""
