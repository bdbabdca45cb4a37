"""The one rule for missing infrastructure: skip on a developer machine, fail in CI.

A developer without Docker can still run the pure tests; CI (``CI=true``) must never go green
because everything that matters was skipped.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import docker
import docker.errors
import pytest
import requests


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it under CI: the infrastructure it needs is not there."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: required infrastructure is missing)", pytrace=False)
    pytest.skip(reason)  # only outside CI: under CI=true the line above fails instead


def require_redis_server() -> str:
    """The path of the ``redis-server`` binary the fixtures start."""
    path = shutil.which("redis-server")
    if path is None:
        unavailable("redis-server is not on PATH (install it: apt-get install redis-server)")
    return path


def require_docker(timeout: int = 60) -> docker.DockerClient:
    """A client of a Docker Engine that answers ``/_ping``."""
    try:
        client = docker.from_env(timeout=timeout)
    except docker.errors.DockerException as exc:
        unavailable(f"Docker is not reachable: {exc}")
    try:
        client.ping()
    except (docker.errors.DockerException, requests.RequestException) as exc:
        client.close()
        unavailable(f"the Docker Engine does not answer: {exc}")
    return client
