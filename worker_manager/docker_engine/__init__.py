"""A Docker Engine of the agent's own beside a worker (SPEC §9 "Docker inside a worker").

With ``WM_DOCKER_MODULE=rootless`` a ``DOCKER`` worker gets an **engine sidecar**: a rootless
``dockerd`` (RootlessKit, slirp4netns, fuse-overlayfs) in a container of its own that shares
the worker's network namespace and nothing else, and a socket volume mounted in both, so the
agent (uid 1000) reaches it at ``DOCKER_HOST=unix:///run/wm-docker/docker.sock``. The worker's
own container stays as strict as any worker's; the sidecar runs as uid 1000 with no capability,
but without ``no-new-privileges`` (the file capabilities of ``newuidmap``/``newgidmap`` must
apply) and under a seccomp profile of our own: Docker 20.10's default plus only what user
namespaces and their mounts need (``seccomp.json``, documented in ``profile``).

Owns: the engine image's spec and entry command (``recipe``), the seccomp profile
(``profile``), the sidecar's container options and the agent's variables (``sidecar``),
whether this host can run it at all (``support``) and loading the operator's images into it
(``preload``).
May import: ``core``, ``contract``, ``settings``, ``egress``.
"""
