"""Running ``python -m worker_manager <command>`` as a user would, against a test's Redis."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.support.manager_process import env_of
from worker_manager.settings import Settings


async def run_cli(
    settings: Settings,
    cwd: Path,
    *args: str,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> tuple[int, str]:
    """Exit code and output (stdout and stderr together) of one CLI command."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker_manager",
        *args,
        cwd=cwd,
        env=env_of(settings, **(env or {})),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout)
    return int(process.returncode or 0), out.decode()
