"""The operator's view of an image collection: every image, why it stays or goes."""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from worker_manager.core.clock import iso_from_unix
from worker_manager.images.gc_plan import Report, age, human_bytes


def parse_duration(text: str) -> float:
    """``7d``, ``36h``, ``90m``, ``3600s``; a bare number is days (like WM_IMAGE_MAX_AGE_DAYS)."""
    units = {"d": 86_400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
    text = text.strip().lower()
    unit = units.get(text[-1:]) if text else None
    number = float(text[:-1] if unit else text)
    seconds = number * (unit or 86_400.0)
    if seconds <= 0:
        raise ValueError("a maximum age must be positive")
    return seconds


def print_report(report: Report, console: Console) -> None:
    """The operator's view: every image, why it stays or goes, and what was (or would be) freed."""
    now = time.time()
    table = Table("hash", "tag", "size", "last used", "action", "reason")
    order = {"remove": 0, "untag": 1, "forget": 2, "keep": 3}
    for row in sorted(report.rows, key=lambda r: (order[r.action], r.last_used or 0)):
        last = (
            f"{iso_from_unix(row.last_used)[:16]}Z ({age(now - row.last_used)} ago)"
            if row.last_used
            else "-"
        )
        style = {"remove": "red", "untag": "yellow", "forget": "dim"}.get(row.action, "")
        table.add_row(
            row.hash[:12],
            row.tag if row.tag == "<none>" else row.tag[:19],
            human_bytes(row.size),
            last,
            f"[{style}]{row.action}[/{style}]" if style else row.action,
            row.reason,
        )
    console.print(table)
    if report.skipped:
        console.print(f"[yellow]skipped:[/yellow] {report.skipped}")
        return
    counts = {a: sum(1 for r in report.rows if r.action == a) for a in order}
    summary = (
        f"{len(report.rows)} image record(s): {counts['remove']} to remove, "
        f"{counts['untag']} to untag, {counts['forget']} stale record(s), {counts['keep']} kept"
    )
    if report.dry_run:
        console.print(f"dry run: {summary}; would free about {human_bytes(report.planned_bytes())}")
        if report.prunes_build_cache:
            console.print(f"build cache unused for > {age(report.max_age_seconds)} would go too")
    else:
        cache = (
            f"; build cache: {human_bytes(report.build_cache_bytes)} reclaimed"
            if report.build_cache_bytes is not None
            else ""
        )
        console.print(f"{summary}; freed about {human_bytes(report.freed_bytes)}{cache}")
    for error in report.errors:
        console.print(f"[red]error:[/red] {error}")
    console.print(f"took {report.seconds:.2f}s")
