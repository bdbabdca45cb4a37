"""Containment of what a worker reaches: the per-host egress service.

One process per Docker host (``worker-manager egress``), apart from the manager so that a
manager restart cuts no worker off. Workers run with ``--network none``; each gets a directory
of Unix sockets bind-mounted at ``/run/wm``: ``redis.sock`` (a relay to Redis, for the wrapper),
``proxy.sock`` (the egress proxy, mitmproxy, which applies the worker's ``egress`` grant and
reports each refusal on its output) and ``gateway.sock`` (the LLM gateway, which swaps the
worker's token for the operator's key and meters usage from the API's own answers).

Owns: the egress decision (``policy``), the grants on disk (``grants``), the proxy addon
(``proxy``), the gateway (``gateway``, the relay; ``routes``, what it forwards; ``meter``
and ``pricing``, what it charges), the credentials it adds (``credentials``), the bounds on
one worker (``limits``) and the service (``service``, ``control``; which code and settings it
runs with: ``version``, ``fingerprint``, ``leases``).
May import: ``core``, ``contract``, ``settings``.
"""
