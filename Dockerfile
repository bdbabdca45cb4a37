# The manager as a container (docker-compose.yml). Worker images are built by the manager
# through the mounted Docker socket, not from this file.
#
# Built with no network: Python packages come in as wheels built outside the image for its
# base's Python (`scripts/build-wheels.sh BASE_IMAGE`, which `make compose-up` runs), and are
# unpacked rather than pip-installed, so any base with python3 works: the registry's
# python:3.12-slim by default, or the Debian base `worker-manager ensure-base` bootstraps on a
# machine without a registry (BASE_IMAGE=worker-manager/base:bookworm).
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/opt/worker-manager \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    WM_LOG_FORMAT=json

# Only the wheels and their installer: .dockerignore keeps .env, .run and .venv out regardless.
COPY dist/wheels /tmp/wheels
COPY scripts/install_wheels.py /tmp/install_wheels.py
RUN python3 /tmp/install_wheels.py /tmp/wheels /opt/worker-manager \
 && rm -rf /tmp/wheels /tmp/install_wheels.py \
 && python3 -m worker_manager --help >/dev/null

# Root, deliberately: the manager drives the Docker socket, which is root-equivalent anyway;
# a non-root user in the socket's group would be no boundary and its GID differs per host.
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/livez', timeout=4)"]
CMD ["python3", "-m", "worker_manager", "serve"]
