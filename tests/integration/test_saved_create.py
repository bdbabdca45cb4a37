"""A create is judged once, when it is accepted: a worker resumed by a manager whose limits are
narrower now still starts (the saved spec is loaded, not validated again)."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.flows import Harness
from worker_manager import Client

pytestmark = [pytest.mark.docker, pytest.mark.redis]


async def test_a_worker_accepted_under_wider_limits_resumes_under_narrower_ones(
    harness: Harness,
) -> None:
    wide = await harness.start(max_instructions_bytes=16 * 1024)
    client = Client(harness.redis, key_prefix=harness.settings.key_prefix)
    instructions = "Be thorough. " * 700  # 9 100 bytes: within 16 KiB, beyond 4 KiB
    worker = await client.create(
        agent_type="CUSTOM",
        agent_command=["sh", "-c", "cat; echo; wc -c < AGENTS.md"],
        instructions=instructions,
    )
    await worker.wait_running()
    assert (await worker.suspend()).status == "SUSPENDED"
    await harness.stop(wide)

    # The operator narrows the limit; the accepted worker is not judged by it again.
    await harness.start(max_instructions_bytes=4096)
    assert (await worker.resume()).status == "STARTING"
    await asyncio.wait_for(worker.wait_running(), 120)
    result = await asyncio.wait_for(worker.run("hello"), 60)
    assert result.exit_code == 0
    assert result.text.split() == ["hello", str(len(instructions))]
    await worker.delete()
