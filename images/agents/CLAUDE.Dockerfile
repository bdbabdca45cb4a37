# Agent: Claude Code (CLAUDE). Inserted into the worker Dockerfile, running as root, before the
# wrapper is copied. Works on a Debian bookworm base (nodejs 18) and on python:3.12-slim (Debian,
# newer nodejs). Needs the npm registry at build time.
# The version is pinned so that one image hash always means the same CLI; bump it on purpose.
ARG CLAUDE_CODE_VERSION=2.1.328
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates nodejs npm; \
    npm install --global --no-audit --no-fund --no-update-notifier \
        "@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION}"; \
    npm cache clean --force; \
    rm -rf /var/lib/apt/lists/* /root/.npm; \
    command -v claude
# Workers are rebuilt on purpose, never updated in place; telemetry off in unattended containers.
ENV DISABLE_AUTOUPDATER=1 \
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1
