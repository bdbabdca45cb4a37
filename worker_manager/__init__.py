"""worker-manager: the control plane for fleets of coding-agent workers.

Commands arrive on the Redis stream ``<prefix>:commands``; each worker runs in a hardened Docker
container whose wrapper (:mod:`worker_base`) talks to Redis directly. See ``SPEC.md`` for the
wire contract and ``README.md`` for operating the service.
"""

__version__ = "0.1.0"
