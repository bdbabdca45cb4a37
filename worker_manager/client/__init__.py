"""The orchestrator's side of the contract: ``Client`` (``api``), the request/reply helper every
sender uses (``requests``), what it gives back (``models``) and raises (``errors``), bulk
deletes by selector (``bulk``) and dead letters (``dead_letters``).

May import: ``core``, ``contract``.
"""
