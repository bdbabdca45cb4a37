# Module DOCKER: the docker CLI only. Its daemon is the worker's own engine beside it
# (WM_DOCKER_MODULE=rootless, worker_manager/docker_engine), or the host's socket mounted at run
# time (WM_DOCKER_MODULE=socket); nothing here starts a daemon. Debian trixie (python:3.12-slim) has the client alone as `docker-cli`;
# bookworm only has `docker.io`, which also brings the daemon binaries (they are never started).
#
# SECURITY: with WM_DOCKER_MODULE=socket, access to the host's Docker daemon is root on the host
# (`docker run -v /:/host --privileged ...`); the rootless default gives no such access.
RUN set -eux; \
    apt-get update; \
    if apt-cache show docker-cli >/dev/null 2>&1; then pkg=docker-cli; else pkg=docker.io; fi; \
    apt-get install -y --no-install-recommends ca-certificates "$pkg"; \
    rm -rf /var/lib/apt/lists/*; \
    docker --version
