"""Services beside a worker (SPEC §9): each in a hardened container of its own that shares the
worker's network namespace, so the agent reaches it on ``127.0.0.1`` and nothing else does.

The request and its bounds are the contract's (``contract.services``); here it meets the
deployment and the Engine: which image each service runs (``resolve``: an image of
``WM_SERVICE_IMAGES`` or an environment), the container's options and the readiness rule as plain
functions over data (``plan``), the containers themselves (``runtime``: created, probed, removed,
found again by label), the start of a worker's services with its deadline (``starter``), and a
``DOCKER`` worker's own Docker Engine, its ``docker`` service (``engine``).

Owns: a service's container and volumes, and when a service is ready.
May import: ``core``, ``contract``, ``settings``, ``images``, ``environments``, ``egress``,
``docker_engine``.
"""
