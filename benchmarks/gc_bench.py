"""Figure 6: ``gc --dry-run`` over many image records, most of them kept.

Written against :mod:`worker_manager.gc`; while that module does not exist the figure says
"not available" rather than timing something else.
"""

from __future__ import annotations

import importlib.util

from benchmarks.env import BenchEnv
from benchmarks.harness import Figure


def _unavailable(reason: str) -> Figure:
    return Figure(
        name="gc.dry_run",
        title="6. gc --dry-run, 1 000 image records",
        unit="s",
        ours_label="gc dry run",
        goal="value_max",
        bound=2.0,
        available=False,
        note=reason,
    )


async def gc_figure(env: BenchEnv, records: int, runs: int) -> Figure:
    if importlib.util.find_spec("worker_manager.gc") is None:
        return _unavailable("worker_manager/gc.py does not exist yet: nothing to measure")
    return _unavailable("worker_manager.gc exists but this figure is not written against it yet")
