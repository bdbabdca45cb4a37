"""The wire contract's data (SPEC §1–§3): kinds, command validation, replies, the record.

Plain models and functions, no Redis or Docker: what an orchestrator sends, what it gets back,
and what a worker record holds, read once at the boundary and typed from there on.
May import: ``core``.
"""
