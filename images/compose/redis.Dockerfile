# Redis for docker-compose.yml. The registry's redis:7 by default (nothing to add); on a machine
# without a registry, any Debian-based image (REDIS_BASE_IMAGE=worker-manager/base:bookworm)
# gets Debian's redis-server, so the compose file runs there too.
ARG BASE_IMAGE=redis:7
FROM ${BASE_IMAGE}
USER root
RUN if ! command -v redis-server >/dev/null 2>&1; then \
      set -eux; \
      apt-get update; \
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server; \
      rm -rf /var/lib/apt/lists/*; \
      mkdir -p /data; \
    fi
WORKDIR /data
