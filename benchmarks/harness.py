"""Figures as ratios: every measurement of ours is paired with a baseline run beside it.

This machine is shared, so absolute times drift from minute to minute; a ratio of two things
measured alternately (baseline, ours, baseline, ours, ...) in the same process cancels most of
that drift. A :class:`Figure` holds both sample lists, its goal, and what the table prints.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

RESULTS_DIR = Path(__file__).resolve().parent / "results"

#: How a goal reads: the ratio (ours / baseline) must be at most, or at least, the bound; or a
#: single absolute value of ours must be at most the bound.
GoalKind = Literal["ratio_max", "ratio_min", "value_max", "none"]


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile: with 20 samples, p95 is the 19th smallest, a real sample."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class Summary:
    n: int
    median: float
    p95: float
    mean: float
    min: float
    max: float

    @classmethod
    def of(cls, samples: list[float]) -> Summary:
        if not samples:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        return cls(
            len(samples),
            statistics.median(samples),
            percentile(samples, 95),
            statistics.fmean(samples),
            min(samples),
            max(samples),
        )


@dataclass(slots=True)
class Figure:
    """One row of the table: ours against a baseline (or alone, for absolute goals)."""

    name: str
    title: str
    unit: str
    ours_label: str
    baseline_label: str = ""
    goal: GoalKind = "none"
    bound: float = math.nan
    #: Higher is better (throughput): the ratio is then still ours / baseline.
    higher_is_better: bool = False
    ours: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    note: str = ""
    available: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Median of ours over median of the baseline (nan without a baseline).

        ``extra["ratio"]`` replaces it where the plain ratio would carry the machine's drift
        (e.g. two fleet sizes measured minutes apart, corrected by the echo consumer's ratio).
        """
        if "ratio" in self.extra:
            return float(self.extra["ratio"])
        if not self.ours or not self.baseline:
            return math.nan
        base = statistics.median(self.baseline)
        return statistics.median(self.ours) / base if base else math.nan

    @property
    def met(self) -> bool | None:
        """Whether the goal is met; None when there is no goal or nothing was measured."""
        if not self.available or not self.ours:
            return None
        if self.goal == "ratio_max":
            return self.ratio <= self.bound
        if self.goal == "ratio_min":
            return self.ratio >= self.bound
        if self.goal == "value_max":
            return self.goal_value() <= self.bound
        return None

    def goal_value(self) -> float:
        """The statistic of ours an absolute goal is about (``extra["goal_on"]``)."""
        on = str(self.extra.get("goal_on", "median"))
        if on == "median":
            return statistics.median(self.ours)
        return percentile(self.ours, float(on.lstrip("p")))

    def goal_text(self) -> str:
        if self.goal == "ratio_max":
            return f"ratio ≤ {self.bound:g}"
        if self.goal == "ratio_min":
            return f"ratio ≥ {self.bound:g}"
        if self.goal == "value_max":
            on = self.extra.get("goal_on", "median")
            return f"{on} ≤ {self.bound:g} {self.unit}"
        return ""

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "unit": self.unit,
            "ours_label": self.ours_label,
            "baseline_label": self.baseline_label,
            "available": self.available,
            "ours": asdict(Summary.of(self.ours)),
            "baseline": asdict(Summary.of(self.baseline)) if self.baseline else None,
            "ratio": None if math.isnan(self.ratio) else self.ratio,
            "goal": self.goal_text() or None,
            "met": self.met,
            "note": self.note,
            "extra": self.extra,
            "samples": {"ours": self.ours, "baseline": self.baseline},
        }


async def alternate(
    runs: int,
    baseline: Callable[[int], Awaitable[float]],
    ours: Callable[[int], Awaitable[float]],
    *,
    warmup: int = 1,
) -> tuple[list[float], list[float]]:
    """Baseline, ours, baseline, ours... ``runs`` pairs after ``warmup`` unrecorded pairs.

    Each callable gets the run index (warm-ups are negative) and returns one sample.
    """
    base: list[float] = []
    mine: list[float] = []
    for i in range(-warmup, runs):
        b = await baseline(i)
        o = await ours(i)
        if i >= 0:
            base.append(b)
            mine.append(o)
    return base, mine


def fmt(value: float, unit: str) -> str:
    if math.isnan(value):
        return "—"
    if unit == "s" and value < 0.01:
        return f"{value * 1000:.2f} ms"
    if unit == "s" and value < 1:
        return f"{value * 1000:.1f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if value >= 1000:
        return f"{value:,.0f} {unit}"
    return f"{value:.3g} {unit}"


def table(figures: list[Figure], *, title: str) -> Table:
    t = Table(title=title, show_lines=False)
    for column in (
        "figure",
        "ours (median / p95)",
        "baseline (median / p95)",
        "ratio",
        "goal",
        "met",
    ):
        t.add_column(column, overflow="fold")
    for f in figures:
        if not f.available:
            t.add_row(
                f"{f.title}\n[dim]{f.note}[/dim]", "not available", "", "", f.goal_text(), "—"
            )
            continue
        o, b = Summary.of(f.ours), Summary.of(f.baseline)
        ours = f"{fmt(o.median, f.unit)} / {fmt(o.p95, f.unit)}"
        base = f"{fmt(b.median, f.unit)} / {fmt(b.p95, f.unit)}" if f.baseline else ""
        compared = f.ours_label + (f" vs {f.baseline_label}" if f.baseline else "")
        ratio = "" if math.isnan(f.ratio) else f"{f.ratio:.2f}"
        met = {True: "[green]yes[/green]", False: "[red]MISSED[/red]", None: ""}[f.met]
        goal = f.goal_text()
        if f.goal == "value_max":
            goal += f" (is {fmt(f.goal_value(), f.unit)})"
        t.add_row(f"{f.title}\n[dim]{compared}[/dim]", ours, base, ratio, goal, met)
    return t


def machine() -> dict[str, Any]:
    """Where the figures came from: they mean little without it."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": _cpu_count(),
    }
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                info["os"] = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_mib"] = int(line.split()[1]) // 1024
    except OSError:
        pass
    info["cgroup"] = "v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "v1"
    info["loadavg_at_start"] = _loadavg()
    return info


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return ""


def write_results(name: str, figures: list[Figure], meta: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    body = {
        "name": name,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **meta,
        "figures": [f.as_json() for f in figures],
    }
    path.write_text(json.dumps(_finite(body), indent=2, allow_nan=False))
    return path


def _finite(value: Any) -> Any:
    """NaN (nothing measured) as JSON null, which every reader understands."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def console() -> Console:
    """Wide enough for the table when the output is a file or a pipe (``make bench | tee``)."""
    probe = Console()
    return Console(highlight=False, width=None if probe.is_terminal else 150)
