"""The production path, run for real: `docker-compose up` with no registry (compose-test.sh).

Both images build from the local Debian base when the registry's are not there, the manager's
Python packages enter its image as wheels built outside it, a worker created through Redis inside
the compose network answers, and ``down -v`` leaves nothing of the project behind.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import docker
import pytest

from tests.support.availability import unavailable

pytestmark = [pytest.mark.docker, pytest.mark.build]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "compose-test.sh"


async def test_docker_compose_up_serves_creates_and_leaves_nothing_behind(
    docker_client: docker.DockerClient,
) -> None:
    if shutil.which("docker-compose") is None:
        unavailable("docker-compose is not installed (apt-get install docker-compose)")
    process = await asyncio.create_subprocess_exec(
        "bash",
        str(SCRIPT),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(900):
        output, _ = await process.communicate()
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-6000:]
    assert "compose-test: passed" in text
