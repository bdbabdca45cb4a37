"""Figure 1g: a CODEX create against a CLAUDE create, images cached.

Both agents are native binaries copied into their images (Claude Code from the
``claude-agent-sdk`` wheel, Codex from ``openai-codex-cli-bin``, ~300 MB), and both workers are
contained the same way (a grant at the egress service with a gateway token). So a CODEX worker
should start as fast as a CLAUDE one: create XADD → ``RUNNING`` in ``lifecycle``, alternating,
each shape's image built once first (untimed). The agent itself does not run: ``RUNNING`` is the
wrapper's first heartbeat, which is what an orchestrator waits for before its first input.
"""

from __future__ import annotations

import time
import uuid

from benchmarks.env import BenchEnv
from benchmarks.harness import Figure, alternate
from benchmarks.workers import create_worker, delete_worker, lifecycle_tail, wait_status


async def _start(env: BenchEnv, agent_type: str) -> float:
    worker_id = str(uuid.uuid4())
    after = await lifecycle_tail(env)
    started = time.perf_counter()
    await create_worker(env, [], wait=False, worker_id=worker_id, agent_type=agent_type)
    await wait_status(env, worker_id, after, ("RUNNING",), timeout=900)
    seconds = time.perf_counter() - started
    await delete_worker(env, worker_id, wait_gone=True)
    return seconds


async def agent_start_figure(env: BenchEnv, runs: int) -> Figure:
    """1g: seconds from a create's XADD to RUNNING, CODEX (ours) against CLAUDE (baseline)."""
    for agent_type in ("CLAUDE", "CODEX"):  # each image once, untimed (the first may download)
        await _start(env, agent_type)

    async def claude(_: int) -> float:
        return await _start(env, "CLAUDE")

    async def codex(_: int) -> float:
        return await _start(env, "CODEX")

    claude_s, codex_s = await alternate(runs, claude, codex)
    return Figure(
        name="start.codex",
        title="1g. start, CODEX against CLAUDE (images cached): create → RUNNING",
        unit="s",
        ours_label="CODEX",
        baseline_label="CLAUDE",
        goal="ratio_max",
        bound=1.1,
        ours=codex_s,
        baseline=claude_s,
    )
