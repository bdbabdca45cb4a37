"""Worker records written straight through the store, for tests of what reads them (list,
status, lifecycle, the CLI) that need no container."""

from __future__ import annotations

import asyncio
import json
import uuid

from worker_manager.workers.state.records import WorkerStore


async def seed_records(
    store: WorkerStore, count: int, *, metadata: list[dict[str, str]] | None = None
) -> list[str]:
    """``count`` STARTING records, oldest first, each created a moment after the previous one
    (so ``list`` orders them newest first); returns their ids."""
    ids = []
    for i in range(count):
        worker_id = str(uuid.uuid4())
        await store.create(
            worker_id,
            request_id=f"seed-{worker_id}",
            fields={
                "agent_type": "CUSTOM",
                "modules": "[]",
                "metadata": json.dumps(metadata[i] if metadata else {}),
            },
            spec={},
            prompt=None,
            max_live=0,
        )
        ids.append(worker_id)
        await asyncio.sleep(0.002)  # distinct creation times (the index is scored in ms)
    return ids
