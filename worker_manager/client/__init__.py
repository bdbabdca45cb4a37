"""The orchestrator's side of the contract: ``Client`` (``api``), the request/reply helper every
sender uses (``requests``), and bulk deletes by selector (``bulk``).

May import: ``core``, ``contract``.
"""
