"""Environments (SPEC §9): a worker's toolchain, resolved against the operator's catalogue and
turned into the build steps of its image, whose network reaches only the package sources.

The spec itself and its bounds are the contract's (``contract.environments``); here it meets
the deployment: the catalogue, the bases allowed, ad hoc specs on or off (``catalogue``), the
Dockerfile steps (``recipe``) and the build's own network (``build_network``).

May import: ``core``, ``contract``, ``settings``, ``egress``.
"""
