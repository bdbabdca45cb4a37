# Module COPIER: the copier project-template tool. Debian has no copier package, so it goes into
# its own virtualenv at /opt/copier (pinned; needs PyPI at build time), linked onto PATH. The
# image's python3 keeps no extra packages. Debian's python3-venv is installed only when the
# interpreter lacks venv/ensurepip (Debian's python3; python:3.12-slim has them already). Copier
# drives git for git-hosted templates and for `copier update`, so git comes along.
ARG COPIER_VERSION=9.19.1
RUN set -eux; \
    apt-get update; \
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then \
        apt-get install -y --no-install-recommends python3-venv; \
    fi; \
    apt-get install -y --no-install-recommends ca-certificates git; \
    python3 -m venv /opt/copier; \
    /opt/copier/bin/pip install --no-cache-dir --disable-pip-version-check \
        "copier==${COPIER_VERSION}"; \
    ln -sf /opt/copier/bin/copier /usr/local/bin/copier; \
    rm -rf /var/lib/apt/lists/*; \
    copier --version
