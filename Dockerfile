# The manager as a container (docker-compose.yml). Worker images are built by the manager
# through the mounted Docker socket, not from this file.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    WM_LOG_FORMAT=json

WORKDIR /src
# Only what the wheel is built from: .dockerignore keeps .env, .run and .venv out regardless.
COPY pyproject.toml README.md ./
COPY worker_manager ./worker_manager
COPY worker_base ./worker_base
COPY images ./images
RUN pip install . && rm -rf /src

WORKDIR /
# Root, deliberately: the manager drives the Docker socket, which is root-equivalent anyway;
# a non-root user in the socket's group would be no boundary and its GID differs per host.
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/livez', timeout=4)"]
CMD ["worker-manager", "serve"]
