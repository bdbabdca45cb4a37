# Module DOCKER: the docker CLI only. The manager mounts a daemon socket at run time; nothing here
# starts a daemon. Debian trixie (python:3.12-slim) has the client alone as `docker-cli`;
# bookworm only has `docker.io`, which also brings the daemon binaries (they are never started).
#
# SECURITY: access to the host's Docker daemon is root on the host (`docker run -v /:/host
# --privileged ...`). A worker given this module is not contained by its container; give it only
# to agents trusted as much as the host's administrators, or point it at a separate rootless or
# remote daemon.
RUN set -eux; \
    apt-get update; \
    if apt-cache show docker-cli >/dev/null 2>&1; then pkg=docker-cli; else pkg=docker.io; fi; \
    apt-get install -y --no-install-recommends ca-certificates "$pkg"; \
    rm -rf /var/lib/apt/lists/*; \
    docker --version
