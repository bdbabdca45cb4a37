# Agent: Factory Droid (FACTORY), installed with npm: used when WM_FACTORY_NPM_VERSION is set
# (and WM_FACTORY_BINARY is not). Inserted into the worker Dockerfile, running as root, before
# the wrapper is copied. Factory's documented installer (`curl -fsSL https://app.factory.ai/cli | sh`)
# downloads a binary from Factory's own site; the npm package @factory/cli ships the same `droid`
# CLI (with per-platform binaries as optional dependencies) through a package registry, and is
# pinned here. Works on a Debian bookworm base and on python:3.12-slim. Needs the npm registry at
# build time.
# The version comes from WM_FACTORY_NPM_VERSION (a build arg, so part of the image hash).
ARG FACTORY_CLI_VERSION
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates nodejs npm; \
    npm install --global --no-audit --no-fund --no-update-notifier \
        "@factory/cli@${FACTORY_CLI_VERSION}"; \
    npm cache clean --force; \
    rm -rf /var/lib/apt/lists/* /root/.npm; \
    command -v droid
